"""Selection guards against critic exploitation (issue #14), evaluated on a finished benchmark.

Best-of-N takes the argmax of the critics' (pessimistic, min over M) values over N sampled
chunks, and an argmax seeks out the critic's largest over-estimates. Two guards
(``PolicyConfig``) restrict it:

* ``selection_top_k``: only the k candidates the actor finds most likely compete;
* ``selection_max_disagreement``: when the M critics' values of the chosen chunk differ by more
  than this, the most likely candidate is taken instead.

This script loads the exported policies of the RL runs of a ``bench/learning.py`` output
directory (after critic warm-up and after the final RL stage), evaluates each guard setting on
the benchmark's fixed episodes with the same sampling noise for every setting of a run (common
random numbers: differences come from the guard, not from the draw), and compares each to the
run's own IL policy (most likely of N, from the benchmark) and to unguarded best-of-N, episode
by episode (McNemar pooled over seeds, paired bootstrap over seeds). Each evaluation is saved
to ``<run>/eval_guards/<stage>__<setting>.json`` and reused on a rerun.

    .venv/bin/python bench/selection_guards.py --out results/bench_learning/point
    .venv/bin/python bench/selection_guards.py --out DIR --methods sernf_full --top-k 4 --max-disagreement 0.1

Writes ``<out>/selection_guards.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_BENCH = Path(__file__).resolve().parent


def _load_learning():
    """bench/learning.py as a module (it sets up the import paths and the statistics)."""
    spec = importlib.util.spec_from_file_location("bench_learning_for_guards", _BENCH / "learning.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class GuardSetting:
    """One way of selecting among the N candidates."""

    name: str
    selection: str
    top_k: int = 0
    max_disagreement: float = 0.0


def guard_settings(top_ks: list[int], disagreements: list[float]) -> list[GuardSetting]:
    if any(k < 1 for k in top_ks) or any(not d > 0 for d in disagreements):
        raise ValueError(f"--top-k values must be >= 1 and --max-disagreement values > 0, got {top_ks}, {disagreements}")
    settings = [GuardSetting("best_of_n", "best_of_n"), GuardSetting("most_likely", "most_likely")]
    settings += [GuardSetting(f"top_k={k}", "best_of_n", top_k=k) for k in top_ks]
    settings += [GuardSetting(f"max_disagreement={d:g}", "best_of_n", max_disagreement=d) for d in disagreements]
    return settings


def evaluate_setting(learning, directory: Path, spec: dict[str, Any], stage: str, setting: GuardSetting,
                     stage_index: int) -> dict[str, Any]:
    """One (run, stage, setting) on the benchmark's fixed episodes; cached in ``eval_guards/``."""
    path = directory / "eval_guards" / f"{stage}__{setting.name}.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    config = learning.RunConfig.from_dict(spec["config"])
    t0 = time.perf_counter()
    # The same noise for every setting of this (run, stage): common random numbers.
    rollout = learning.evaluate_exported_policy(
        directory / f"policy_{stage}", config, setting.selection, noise_seed=[config.seed, 1414, stage_index],
        top_k=setting.top_k, max_disagreement=setting.max_disagreement)
    result = {"stage": stage, "setting": setting.name, "selection": setting.selection, "top_k": setting.top_k,
              "max_disagreement": setting.max_disagreement, "success_rate": float(rollout["success_rate"]),
              "episode_success": rollout["episode_success"],
              "eval_s": round(time.perf_counter() - t0, 2)}
    path.parent.mkdir(exist_ok=True)
    learning._write_json(path, result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="a bench/learning.py output directory")
    parser.add_argument("--methods", nargs="+", default=["sernf_offline", "sernf_full"])
    parser.add_argument("--stages", nargs="+", default=["critic_warmup", "final"],
                        help="exported policies to evaluate: critic_warmup and/or final (the method's last stage)")
    parser.add_argument("--top-k", type=int, nargs="*", default=[4])
    parser.add_argument("--max-disagreement", type=float, nargs="*", default=[0.05, 0.1])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    learning = _load_learning()
    stats = learning.paired_statistics
    try:
        settings = guard_settings(args.top_k, args.max_disagreement)
    except ValueError as exc:
        print(f"bench/selection_guards.py: {exc}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for name in args.methods:
        runs = sorted((args.out / "runs" / name).glob("seed*/result.json"))
        if not runs:
            print(f"bench/selection_guards.py: no finished runs of {name} in {args.out}", file=sys.stderr)
            return 2
        outcomes: dict[tuple[str, str], dict[int, list[int]]] = {}
        il: dict[int, list[int]] = {}
        for result_path in runs:
            directory = result_path.parent
            result = json.loads(result_path.read_text(encoding="utf-8"))
            spec = json.loads((directory / "run.json").read_text(encoding="utf-8"))
            seed = int(result["seed"])
            il[seed] = list(result["variants"]["il_most_likely"]["episode_success"])
            final = spec["variants"]["rl_best_of_n"][0]
            for stage_index, stage in enumerate(final if s == "final" else s for s in args.stages):
                for setting in settings:
                    r = evaluate_setting(learning, directory, spec, stage, setting, stage_index)
                    outcomes.setdefault((stage, setting.name), {})[seed] = r["episode_success"]
                    print(f"[{time.perf_counter() - t0:7.1f}s] {name} seed={seed} {stage} {setting.name}: "
                          f"{r['success_rate']:.3f}", flush=True)
        for (stage, setting_name), by_seed in outcomes.items():
            rates = [float(np.mean(v)) for v in by_seed.values()]
            row = {"method": name, "stage": stage, "setting": setting_name, "seeds": sorted(by_seed),
                   "success": rates, "mean": float(np.mean(rates)),
                   "vs_il": stats.compare_paired(by_seed, il),
                   "vs_best_of_n": stats.compare_paired(by_seed, outcomes[(stage, "best_of_n")])}
            rows.append(row)
    report = {"created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "command": shlex.join([sys.executable, *sys.argv]), "out": str(args.out),
              "settings": [s.__dict__ for s in settings], "rows": rows}
    learning._write_json(args.out / "selection_guards.json", report)
    print("\n| method | policy | selection | success (mean) | per seed | vs own IL: diff [95 % CI], McNemar +/−, p "
          "| vs best-of-N: diff, McNemar +/−, p |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        a, b = r["vs_il"], r["vs_best_of_n"]
        print(f"| {r['method']} | {r['stage']} | {r['setting']} | {r['mean']:.3f} | "
              f"{', '.join(f'{x:.2f}' for x in r['success'])} | "
              f"{_fmt_diff(a)} | {_fmt_diff(b)} |")
    print(f"\nwrote {args.out / 'selection_guards.json'}")
    return 0


def _fmt_diff(c: dict[str, Any]) -> str:
    d, m = c["difference"], c["mcnemar"]
    ci = f" [{d['low']:+.3f}, {d['high']:+.3f}]" if d.get("low") is not None else ""
    return f"{d['mean']:+.3f}{ci}, {m['a_only']}/{m['b_only']}, p={m['p_value']:.3g}"


if __name__ == "__main__":
    sys.exit(main())
