"""``sernf-data``: look at and reshape episode stores.

    sernf-data info STORE
    sernf-data list STORE
    sernf-data copy SRC DST [filters]          (a copy; with filters: a subset)
    sernf-data filter SRC DST [filters]        (the same as copy, for readability in scripts)
    sernf-data merge SRC [SRC ...] --out DST [filters]

Filters: ``--source demo --source online``, ``--success`` / ``--failure``, ``--operator
alice``, ``--id ID`` (repeatable), ``--ids-file FILE`` (one id per line), ``--subtask cut=1``,
``--limit N``. Sources are never modified; the destination grows episode by episode (see
``sernf_data.dataset``). Exit status: 0 done, 2 bad arguments or a refused operation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .dataset import (
    CopyReport,
    EpisodeFilter,
    copy_episodes,
    episode_table,
    format_info,
    merge_stores,
    store_info,
)
from .store import EpisodeStore, ReplayCorruptError, ReplaySchemaError

__all__ = ["main"]


def _add_filters(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filters (all that are given must hold)")
    group.add_argument("--source", action="append", dest="keep_sources", metavar="SOURCE",
                       help="episode source to keep (demo, online, distill); repeatable")
    outcome = group.add_mutually_exclusive_group()
    outcome.add_argument("--success", dest="success", action="store_const", const=True,
                         help="only successful episodes")
    outcome.add_argument("--failure", dest="success", action="store_const", const=False,
                         help="only failed episodes")
    group.add_argument("--operator", action="append", dest="operators", metavar="NAME",
                       help="operator to keep; repeatable")
    group.add_argument("--id", action="append", dest="ids", metavar="ID", help="episode id; repeatable")
    group.add_argument("--ids-file", type=Path, help="file with one episode id per line")
    group.add_argument("--subtask", action="append", metavar="NAME=0|1",
                       help="required subtask outcome, e.g. cut=1; repeatable")
    group.add_argument("--limit", type=int, help="at most this many episodes (store order)")


def _filter_from(args: argparse.Namespace) -> EpisodeFilter:
    ids = list(args.ids or [])
    if args.ids_file is not None:
        ids += [line.strip() for line in args.ids_file.read_text().splitlines() if line.strip()]
    subtasks = {}
    for item in args.subtask or ():
        name, sep, value = item.partition("=")
        if not sep or value not in ("0", "1", "true", "false"):
            raise ValueError(f"--subtask wants NAME=0|1, got {item!r}")
        subtasks[name] = value in ("1", "true")
    return EpisodeFilter(
        sources=tuple(args.keep_sources) if args.keep_sources else None,
        success=args.success,
        operators=tuple(args.operators) if args.operators else None,
        ids=tuple(ids) if (args.ids or args.ids_file is not None) else None,
        subtasks=subtasks or None,
        limit=args.limit,
    )


def _print_report(report: CopyReport) -> None:
    print(f"{report.destination}: {len(report.copied)} episodes ({report.steps} steps) appended, "
          f"{len(report.already_present)} already there")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sernf-data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="one-screen summary of a store")
    p.add_argument("store")
    p = sub.add_parser("list", help="one line per episode")
    p.add_argument("store")
    for name, text in (("copy", "copy (a subset of) a store into another"),
                       ("filter", "write the matching episodes of a store into another")):
        p = sub.add_parser(name, help=text)
        p.add_argument("source")
        p.add_argument("destination")
        _add_filters(p)
    p = sub.add_parser("merge", help="append several stores into one")
    p.add_argument("sources", nargs="+")
    p.add_argument("--out", required=True, help="destination store")
    _add_filters(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "info":
            print(format_info(store_info(args.store)))
        elif args.command == "list":
            for episode_id, source, length, success, operator in episode_table(EpisodeStore(args.store)):
                print(f"{episode_id:<40} {source:<8} {length:>6} {'ok' if success else 'fail':<4} {operator}")
        elif args.command in ("copy", "filter"):
            _print_report(copy_episodes(args.source, args.destination, _filter_from(args)))
        else:
            _print_report(merge_stores(args.sources, args.out, _filter_from(args)))
    except (FileNotFoundError, KeyError, ValueError, ReplaySchemaError, ReplayCorruptError) as exc:
        # ReplaySchemaError is a ValueError; listed for the reader.
        print(f"sernf-data {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
