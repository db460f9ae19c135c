"""Dataset operations on episode stores: select, copy, merge, filter, and a one-screen summary.

Every operation reads its sources read-only (``mode="r"``: no lock, nothing written) and writes
the destination through ``EpisodeStore.append_episode``, i.e. episode by episode with the
store's commit protocol: an interrupted copy leaves a destination holding complete episodes
only, and rerunning it finishes the job (episodes whose id is already there are skipped after
checking they are the same episode).

Pure numpy/zarr/fsspec (no rclpy, no torch).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .store import EpisodeStore

__all__ = [
    "CopyReport",
    "EpisodeFilter",
    "StoreInfo",
    "copy_episodes",
    "episode_table",
    "format_info",
    "merge_stores",
    "select_episodes",
    "store_info",
]


@dataclass(frozen=True)
class EpisodeFilter:
    """Which episodes to take; every criterion that is set must hold (None: any)."""

    #: Episode sources to keep (``demo``, ``online``, ``distill``).
    sources: tuple[str, ...] | None = None
    #: Keep only successful (True) or only failed (False) episodes.
    success: bool | None = None
    #: Operators to keep (episodes without an operator never match a set filter).
    operators: tuple[str, ...] | None = None
    #: Episode ids to keep.
    ids: tuple[str, ...] | None = None
    #: Subtask name -> required outcome (e.g. ``{"cut": True}``); a missing subtask never matches.
    subtasks: Mapping[str, bool] | None = None
    #: After the criteria above: keep at most this many episodes (in store order).
    limit: int | None = None

    def __post_init__(self) -> None:
        for name in ("sources", "operators", "ids"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"EpisodeFilter.{name} must be a sequence of strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if self.success is not None and not isinstance(self.success, bool):
            raise ValueError(f"EpisodeFilter.success must be a bool or None, got {self.success!r}")
        if self.subtasks is not None and not all(
                isinstance(k, str) and isinstance(v, bool) for k, v in self.subtasks.items()):
            raise ValueError(f"EpisodeFilter.subtasks must map names to bools, got {self.subtasks!r}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 0):
            raise ValueError(f"EpisodeFilter.limit must be a non-negative int, got {self.limit!r}")

    def matches(self, meta: Mapping[str, Any]) -> bool:
        """True if one episode's metadata satisfies every criterion (``limit`` aside)."""
        if self.sources is not None and meta.get("source") not in self.sources:
            return False
        if self.success is not None and bool(meta.get("success")) is not self.success:
            return False
        if self.operators is not None and meta.get("operator") not in self.operators:
            return False
        if self.ids is not None and meta.get("id") not in self.ids:
            return False
        if self.subtasks:
            outcomes = meta.get("subtask_success") or {}
            if any(outcomes.get(name) is not want for name, want in self.subtasks.items()):
                return False
        return True


def select_episodes(store: EpisodeStore, where: EpisodeFilter | None = None) -> list[str]:
    """Ids of the committed episodes of ``store`` that match ``where`` (store order)."""
    where = where or EpisodeFilter()
    if where.ids is not None:
        unknown = sorted(set(where.ids) - set(store.episode_ids()))
        if unknown:
            raise KeyError(f"store {store.uri!r} has no episode(s) {unknown}")
    chosen = [m["id"] for m in _all_metadata(store) if where.matches(m)]
    return chosen if where.limit is None else chosen[: where.limit]


@dataclass
class CopyReport:
    """What a copy/merge did."""

    destination: str
    copied: list[str] = field(default_factory=list)
    """Ids appended to the destination."""
    already_present: list[str] = field(default_factory=list)
    """Ids the destination already held (the same episode: skipped)."""
    steps: int = 0
    """Steps appended."""


def copy_episodes(
    source: str | os.PathLike[str] | EpisodeStore,
    destination: str | os.PathLike[str],
    where: EpisodeFilter | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> CopyReport:
    """Append the episodes of ``source`` matching ``where`` to ``destination`` (created with
    the source's spec if missing; an existing one must have the same spec).

    Never writes to the source. Episodes keep their ids and metadata (``committed_unix``
    becomes the copy's commit time). An id already in the destination is skipped if it is the
    same episode (same length, source and return) and refused otherwise.
    """
    src = source if isinstance(source, EpisodeStore) else EpisodeStore(source, mode="r")
    ids = select_episodes(src, where)
    dst_uri = os.fspath(destination)
    if _same_location(src.uri, dst_uri):
        raise ValueError(f"source and destination are the same store ({src.uri!r})")
    dst = EpisodeStore(dst_uri, mode="a", spec=src.spec, storage_options=storage_options)
    report = CopyReport(destination=dst.uri)
    _copy_into(src, dst, ids, report)
    return report


def merge_stores(
    sources: Sequence[str | os.PathLike[str] | EpisodeStore],
    destination: str | os.PathLike[str],
    where: EpisodeFilter | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> CopyReport:
    """Append the matching episodes of every store in ``sources`` (in order) to
    ``destination``. All sources must share one spec (checked before anything is written)."""
    if not sources:
        raise ValueError("merge needs at least one source store")
    stores = [s if isinstance(s, EpisodeStore) else EpisodeStore(s, mode="r") for s in sources]
    for store in stores[1:]:
        if store.spec != stores[0].spec:
            raise ValueError(
                f"cannot merge {store.uri!r} into {stores[0].uri!r}'s layout: specs differ "
                f"({store.spec.to_json()} vs {stores[0].spec.to_json()})"
            )
    dst_uri = os.fspath(destination)
    for store in stores:
        if _same_location(store.uri, dst_uri):
            raise ValueError(f"the destination is one of the sources ({store.uri!r})")
    # Ids from different sources must not collide with different content: check all first,
    # so a refused merge writes nothing.
    plans = [(store, select_episodes(store, where)) for store in stores]
    seen: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for store, ids in plans:
        for episode_id in ids:
            meta = store.episode_metadata(episode_id)
            if episode_id in seen and not _same_episode(seen[episode_id][1], meta):
                raise ValueError(
                    f"episode id {episode_id!r} is in {seen[episode_id][0]!r} and {store.uri!r} "
                    "with different content; filter one of them out"
                )
            seen.setdefault(episode_id, (store.uri, meta))
    dst = EpisodeStore(dst_uri, mode="a", spec=stores[0].spec, storage_options=storage_options)
    report = CopyReport(destination=dst.uri)
    for store, ids in plans:
        _copy_into(store, dst, ids, report)
    return report


def _copy_into(src: EpisodeStore, dst: EpisodeStore, ids: Iterable[str], report: CopyReport) -> None:
    present = {m["id"]: m for m in _all_metadata(dst)}
    for episode_id in ids:
        meta = src.episode_metadata(episode_id)
        if episode_id in present:
            if not _same_episode(present[episode_id], meta):
                raise ValueError(
                    f"destination {dst.uri!r} already has a different episode {episode_id!r}"
                )
            report.already_present.append(episode_id)
            continue
        steps, meta = src.read_episode(episode_id)
        dst.append_episode(steps, meta)
        present[episode_id] = meta
        report.copied.append(episode_id)
        report.steps += int(meta["length"])


def _same_episode(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    keys = ("length", "source", "return", "extra")
    return all(a.get(k) == b.get(k) for k in keys)


def _all_metadata(store: EpisodeStore) -> list[dict[str, Any]]:
    return [store.episode_metadata(i) for i in store.episode_ids()]


def _same_location(a: str, b: str) -> bool:
    if "://" in a.removeprefix("file://") or "://" in b.removeprefix("file://"):
        return a.rstrip("/") == b.rstrip("/")
    pa = Path(os.path.expanduser(a.removeprefix("file://"))).resolve()
    pb = Path(os.path.expanduser(b.removeprefix("file://"))).resolve()
    return pa == pb


# ------------------------------------------------------------------------------------ info


@dataclass(frozen=True)
class StoreInfo:
    """Summary of one store (what ``sernf-data info`` prints)."""

    uri: str
    episodes: int
    steps: int
    control_rate_hz: float
    #: source -> number of episodes.
    sources: Mapping[str, int]
    #: Episodes with ``success`` true.
    successes: int
    #: subtask -> (episodes that report it, of which successful).
    subtasks: Mapping[str, tuple[int, int]]
    #: operator ('-' for none) -> number of episodes.
    operators: Mapping[str, int]
    #: array name -> (per-step shape, dtype) for observations, action, reward, timestamp.
    arrays: Mapping[str, tuple[tuple[int, ...], str]]
    #: Episode length min / mean / max in steps (0 when empty).
    length_min: int
    length_mean: float
    length_max: int
    #: Bytes the store occupies (local directories and fsspec stores); None if unknown.
    size_bytes: int | None


def store_info(store: str | os.PathLike[str] | EpisodeStore) -> StoreInfo:
    """Summarise a store (read-only)."""
    st = store if isinstance(store, EpisodeStore) else EpisodeStore(store, mode="r")
    metas = _all_metadata(st)
    sources: dict[str, int] = {}
    operators: dict[str, int] = {}
    subtasks: dict[str, list[int]] = {}
    for m in metas:
        sources[m["source"]] = sources.get(m["source"], 0) + 1
        op = m.get("operator") or "-"
        operators[op] = operators.get(op, 0) + 1
        for name, ok in (m.get("subtask_success") or {}).items():
            counts = subtasks.setdefault(name, [0, 0])
            counts[0] += 1
            counts[1] += int(bool(ok))
    lengths = st.episode_lengths
    return StoreInfo(
        uri=st.uri,
        episodes=st.num_episodes,
        steps=st.num_steps,
        control_rate_hz=st.spec.control_rate_hz,
        sources=dict(sorted(sources.items())),
        successes=sum(bool(m.get("success")) for m in metas),
        subtasks={k: (v[0], v[1]) for k, v in sorted(subtasks.items())},
        operators=dict(sorted(operators.items())),
        arrays={k: (tuple(shape), str(dtype)) for k, (shape, dtype) in st.spec.step_arrays().items()},
        length_min=int(lengths.min()) if lengths.size else 0,
        length_mean=float(lengths.mean()) if lengths.size else 0.0,
        length_max=int(lengths.max()) if lengths.size else 0,
        size_bytes=_size_on_disk(st.uri),
    )


def _size_on_disk(uri: str) -> int | None:
    if "://" not in uri.removeprefix("file://"):
        root = Path(os.path.expanduser(uri.removeprefix("file://")))
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(uri)
        return int(fs.du(path))
    except (OSError, NotImplementedError, ValueError):
        return None


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _rate(ok: int, total: int) -> str:
    return f"{ok}/{total} ({100.0 * ok / total:.0f}%)" if total else "0/0"


def format_info(info: StoreInfo) -> str:
    """The one-screen text of ``sernf-data info``."""
    hours = info.steps / info.control_rate_hz / 3600.0
    lines = [
        f"store      {info.uri}",
        f"episodes   {info.episodes}   steps {info.steps} at {info.control_rate_hz:g} Hz "
        f"({hours:.2f} h)   length min/mean/max {info.length_min}/{info.length_mean:.1f}/{info.length_max}",
        f"size       {_human_bytes(info.size_bytes)}",
        "sources    " + (", ".join(f"{k} {v}" for k, v in info.sources.items()) or "-"),
        f"success    {_rate(info.successes, info.episodes)}",
    ]
    for name, (total, ok) in info.subtasks.items():
        lines.append(f"  subtask  {name:<12} {_rate(ok, total)}")
    lines.append("operators  " + (", ".join(f"{k} {v}" for k, v in info.operators.items()) or "-"))
    lines.append("arrays     (per step)")
    for name, (shape, dtype) in info.arrays.items():
        lines.append(f"  {name:<20} {str(list(shape)):<16} {dtype}")
    return "\n".join(lines)


def episode_table(store: EpisodeStore) -> list[tuple[str, str, int, bool, str]]:
    """(id, source, length, success, operator) per episode: for ``sernf-data list``."""
    return [(m["id"], m["source"], int(m["length"]), bool(m["success"]), m.get("operator") or "-")
            for m in _all_metadata(store)]

