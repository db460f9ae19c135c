"""Learning benchmark on the simulated point task (issue #4): methods x seeds -> JSON + plot.

Each (method, seed) is one resumable ``Trainer`` run of ``config/point_full.yaml`` (or
``--config``) in its own directory ``<out>/runs/<method>/seed<k>/``, started as a subprocess
(``--jobs`` at a time, each with ``--threads`` torch threads). A finished run leaves
``result.json`` and is skipped next time; an unfinished one resumes from its last trainer
checkpoint, so a killed benchmark continues where it stopped. The success of a method is the
evaluation after its last stage (``trainer.eval``: the same fixed-seed episodes for every
method; imitation-only policies act by "most likely of N" (§IV-D a), the others by best-of-N
with the critic, Alg. 2).

Methods:

* ``nf_il``: normalizing-flow imitation only (Stage I on the successful demos).
* ``nf_il_more_demos``: the same, with an offline dataset larger by the interaction budget
  online RL gets (``online_rl.iterations x episodes_per_iteration`` more episodes from the same
  mixed-quality scripted experts, ``sernf_sim.datasets.mixed_point_dataset``); imitation uses
  its successful ones. Is online RL better than spending the episodes on demonstrations?
* ``sernf_offline``: il -> critic_warmup -> offline_rl.
* ``sernf_full``: il -> critic_warmup -> offline_rl -> online_rl (the whole of Alg. 3).
* ``ablation_per_step_critic``: full, with a per-step critic (``policy.critic_horizon: 1``):
  Q(o_t, prefix, a_{t+P}) of the chunk's first action, 1-step TD target; the actor is still
  the chunk flow (the paper's claim: chunked critics align with chunked execution, §I, §III-a).
* ``ablation_gaussian_actor``: full, with a tanh-squashed diagonal-Gaussian chunk actor
  (``policy.actor: gaussian``) instead of the flow; same critic, stages and losses.
* ``fm_il``: the paper's flow-matching imitation baseline (Table I; ``policy.actor:
  flow_matching``): a DiT velocity field on the same observation + prefix context, trained by
  the IL stage on the same demos with the same optimiser, acting by one sample (8 Euler steps
  at ``trainer.eval.sigma``) every H steps like the flow.
* ``act_il``: the paper's ACT imitation baseline (``policy.actor: act``): a CVAE predicting
  ``policy.act_chunk_len`` (20) actions from the observation tokens, trained by the IL stage on
  20-action chunks of the same demos, evaluated with temporal ensembling (queried every step,
  its actions executed P steps later, ``sernf_sim.temporal_ensembling``).

The two baselines have no likelihood, no critic and no RL stages; both use the flow's width and
heads (``policy.flow_hidden`` / ``flow_heads``) and the same encoders.

Every method sees the same base demonstrations (``data.demo_seed``; ``--vary-demo-seed`` draws
a dataset per seed instead). Outputs: ``<out>/learning.json`` (per method: per-seed success,
subtask success, mean, sample std, eval episodes, wall time; the command line and config),
``<out>/learning.png`` (mean +- std bars with the seeds as dots) and a markdown table on stdout.

Run (the whole benchmark: 6 methods x 3 seeds of ~2.5 CPU minutes each at 1 thread):

    .venv/bin/python bench/learning.py --config config/point_full.yaml --seeds 0 1 2 \\
        --methods all --out results/bench_learning --jobs 2 --threads 1
    .venv/bin/python bench/learning.py --out results/bench_learning --report-only   # tables again

``--set KEY=VALUE`` overrides the base config like ``sernf-train --set`` (e.g. budgets).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
for _pkg in ("sernf_policy", "sernf_learner", "sernf_sim"):
    try:
        __import__(_pkg)
    except ImportError:  # running from a source checkout without the colcon overlay
        sys.path.insert(0, str(_ROOT / "src" / _pkg))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from sernf_learner.configs import SCHEDULES, RunConfig, load_config  # noqa: E402

SCHEMA = "sernf-bench-learning/1"


@dataclass(frozen=True)
class Method:
    """One benchmarked method: a schedule plus config overrides."""

    schedule: str
    """Named schedule or stage of sernf-train ("il", "offline", "full")."""
    description: str
    """One line for the JSON and the table."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Dotted config keys -> values applied on top of the base config."""
    extra_demos: bool = False
    """Add online RL's episode budget to the offline dataset (more demonstrations)."""

    @property
    def stages(self) -> list[str]:
        return list(SCHEDULES.get(self.schedule, (self.schedule,)))

    @property
    def final_stage(self) -> str:
        """The stage whose evaluation is the method's result."""
        return self.stages[-1]


METHODS: dict[str, Method] = {
    "nf_il": Method("il", "NF imitation learning (most likely of N)"),
    "nf_il_more_demos": Method("il", "NF IL on a dataset larger by online RL's episode budget", extra_demos=True),
    "sernf_offline": Method("offline", "SERNF offline: IL -> critic warm-up -> offline RL (best-of-N)"),
    "sernf_full": Method("full", "SERNF: IL -> critic warm-up -> offline RL -> online RL (best-of-N)"),
    "ablation_per_step_critic": Method(
        "full", "SERNF full with a per-step critic (H=1: first chunk action, 1-step TD)",
        overrides={"policy.critic_horizon": 1},
    ),
    "ablation_gaussian_actor": Method(
        "full", "SERNF full with a tanh-Gaussian chunk actor instead of the flow",
        overrides={"policy.actor": "gaussian"},
    ),
    "fm_il": Method(
        "il", "Flow-matching IL baseline (DiT, 8 Euler steps, same prefix; one sample)",
        overrides={"policy.actor": "flow_matching"},
    ),
    "act_il": Method(
        "il", "ACT IL baseline (CVAE, chunk 20, temporal ensembling every step)",
        overrides={"policy.actor": "act"},
    ),
}


class BenchError(RuntimeError):
    """A benchmark setup problem the user must resolve (message says how)."""


# ------------------------------------------------------------------------------ run specs


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def extra_demo_count(config: RunConfig) -> int:
    """Online RL's interaction budget in episodes: what ``nf_il_more_demos`` gets as demos."""
    return config.online_rl.iterations * config.online_rl.episodes_per_iteration


def run_spec(base: RunConfig, name: str, seed: int, threads: int, vary_demo_seed: bool) -> dict[str, Any]:
    """Everything that defines run (``name``, ``seed``): written to ``run.json`` in its directory."""
    method = METHODS[name]
    cfg = base.to_dict()
    cfg["seed"] = int(seed)
    if vary_demo_seed:
        cfg["data"]["demo_seed"] = int(seed)
    cfg["trainer"].update(progress=False, tensorboard=False, torch_num_threads=int(threads))
    if method.final_stage not in cfg["trainer"]["eval"]["stages"]:
        cfg["trainer"]["eval"]["stages"].append(method.final_stage)
    for key, value in method.overrides.items():
        _set_dotted(cfg, key, value)
    config = RunConfig.from_dict(cfg)  # validates the overrides
    if config.trainer.eval.episodes == 0:
        raise BenchError("trainer.eval.episodes is 0: the benchmark needs evaluations")
    if config.env.task != "point" or config.data.generate_point_demos < 1:
        raise BenchError("the learning benchmark runs the point task with generated demos "
                         "(env.task: point, data.generate_point_demos > 0)")
    if "://" in config.data.offline_uri or os.path.isabs(config.data.offline_uri):
        raise BenchError("data.offline_uri must be a relative path: every run builds its own dataset")
    extra = extra_demo_count(base) if method.extra_demos else 0
    demo_seed = config.data.demo_seed
    return {
        "method": name,
        "seed": int(seed),
        "schedule": method.schedule,
        "final_stage": method.final_stage,
        "extra_demos": extra,
        # Its own stream of episodes, never the base dataset's (same generator, other seed).
        "extra_demo_seed": int(np.random.SeedSequence([demo_seed, 4]).generate_state(1)[0]) if extra else None,
        "config": config.to_dict(),
    }


def run_dir(out: Path, name: str, seed: int) -> Path:
    return out / "runs" / name / f"seed{seed}"


def _write_json(path: Path, data: Any) -> None:
    """Atomic JSON write (a killed benchmark never leaves half a file)."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def prepare_run(directory: Path, spec: dict[str, Any]) -> bool:
    """Create/check the run directory; returns True if the run is already done."""
    directory.mkdir(parents=True, exist_ok=True)
    spec_path = directory / "run.json"
    if spec_path.exists():
        old = json.loads(spec_path.read_text(encoding="utf-8"))
        if old != json.loads(json.dumps(spec)):
            raise BenchError(f"{directory} holds a run with another config; delete it or use another --out")
    else:
        _write_json(spec_path, spec)
    return (directory / "result.json").exists()


# --------------------------------------------------------------------------------- worker


def _build_offline_store(config: RunConfig, directory: Path, spec: dict[str, Any]) -> None:
    """The run's offline dataset: the base demos (exactly what the trainer would generate) plus
    ``extra_demos`` more episodes, written under a temporary name and renamed, so a kill while
    generating never leaves a partial dataset that a resumed run would train on."""
    from sernf_learner.trainer import generate_point_demos

    uri = directory / config.data.offline_uri
    if (uri / "zarr.json").exists():
        return
    for stale in directory.glob(f"{uri.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if uri.exists():  # no zarr.json: an incomplete store from another writer
        shutil.rmtree(uri)
    tmp = uri.with_name(f"{uri.name}.tmp-{uuid.uuid4().hex[:8]}")
    generate_point_demos(config, str(tmp), config.data.generate_point_demos, config.data.demo_seed)
    if spec["extra_demos"]:
        generate_point_demos(config, str(tmp), spec["extra_demos"], spec["extra_demo_seed"])
    os.replace(tmp, uri)


def worker(directory: Path) -> int:
    """One run (in its own process): dataset, resumable trainer run, ``result.json``."""
    t0 = time.perf_counter()
    spec = json.loads((directory / "run.json").read_text(encoding="utf-8"))
    config = RunConfig.from_dict(spec["config"])
    _build_offline_store(config, directory, spec)

    from sernf_data.store import EpisodeStore
    from sernf_learner.trainer import Trainer

    resumed = (directory / "checkpoints" / "latest.json").exists()
    summary = Trainer(config, directory, spec["schedule"], resume=True).run()
    results = summary["results"]
    final = results[spec["final_stage"]]
    episodes = EpisodeStore(str(directory / config.data.offline_uri), mode="r").load_arrays().episodes
    result = {
        "method": spec["method"],
        "seed": spec["seed"],
        "success": final["success_rate"],
        "subtask_success": final["subtask_success_rates"],
        "n_eval_episodes": final["num_episodes"],
        "selection": final["selection"],
        "mean_return": final["mean_return"],
        "stage_success": {stage: r["success_rate"] for stage, r in results.items()},
        "stage_time_s": summary.get("stage_time_s", {}),
        "wall_s": time.perf_counter() - t0,
        "resumed": resumed,
        "offline_episodes": len(episodes),
        "offline_successful_episodes": sum(bool(m["success"]) for m in episodes),
    }
    _write_json(directory / "result.json", result)
    return 0


# ------------------------------------------------------------------------------ scheduler


class _Runner:
    """Runs pending (method, seed) runs as subprocesses, ``jobs`` at a time, and logs progress."""

    def __init__(self, out: Path, jobs: int, threads: int, total: int) -> None:
        self.out, self.jobs, self.threads, self.total = out, jobs, threads, total
        self.t0 = time.perf_counter()
        self.lock = threading.Lock()
        self.procs: dict[tuple[str, int], subprocess.Popen] = {}
        self.started = 0
        self.failed: list[str] = []
        self.stopping = False

    def log(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {text}", flush=True)

    def _env(self) -> dict[str, str]:
        n = str(self.threads)
        src = os.pathsep.join(str(_ROOT / "src" / p) for p in ("sernf_data", "sernf_learner", "sernf_policy", "sernf_sim"))
        path = os.environ.get("PYTHONPATH")
        return dict(os.environ, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n,
                    PYTHONPATH=src + (os.pathsep + path if path else ""))

    def run_one(self, name: str, seed: int) -> None:
        directory = run_dir(self.out, name, seed)
        with self.lock:
            if self.stopping:
                return
            self.started += 1
            self.log(f"start {name} seed={seed} ({self.started}/{self.total})")
            with open(directory / "log.txt", "ab") as logf:
                proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(directory)],
                                        stdout=logf, stderr=subprocess.STDOUT, env=self._env())
            self.procs[(name, seed)] = proc
        t = time.perf_counter()
        rc = proc.wait()
        with self.lock:
            del self.procs[(name, seed)]
            if rc == 0 and (directory / "result.json").exists():
                r = json.loads((directory / "result.json").read_text(encoding="utf-8"))
                self.log(f"done  {name} seed={seed}: success {r['success']:.3f} over {r['n_eval_episodes']} "
                         f"episodes ({time.perf_counter() - t:.1f}s)")
            elif not self.stopping:
                self.failed.append(f"{name}/seed{seed}")
                tail = (directory / "log.txt").read_text(encoding="utf-8", errors="replace").splitlines()[-8:]
                self.log(f"FAILED {name} seed={seed} (exit {rc}); {directory / 'log.txt'} ends with:\n    "
                         + "\n    ".join(tail))

    def status(self) -> str:
        with self.lock:
            parts = []
            for (name, seed) in self.procs:
                pointer = run_dir(self.out, name, seed) / "checkpoints" / "latest.json"
                where = "starting"
                with contextlib.suppress(OSError, ValueError, KeyError, IndexError):  # not written yet
                    # ckpt-<stage index>-<stage>-<step>: the last checkpoint, not the live step
                    stage, step = json.loads(pointer.read_text(encoding="utf-8"))["checkpoint"].split("-", 2)[2].rsplit("-", 1)
                    where = f"{stage} (checkpoint at {int(step)})"
                parts.append(f"{name}/seed{seed} at {where}")
            return ", ".join(parts)

    def run_all(self, pending: list[tuple[str, int]], heartbeat_s: float = 60.0) -> None:
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.jobs) as pool:
            futures = {pool.submit(self.run_one, name, seed) for name, seed in pending}
            try:
                while futures:
                    done, futures = concurrent.futures.wait(futures, timeout=heartbeat_s)
                    for f in done:
                        f.result()
                    if futures and not done:
                        self.log(f"running: {self.status()}")
            except KeyboardInterrupt:
                with self.lock:
                    self.stopping = True
                    for proc in self.procs.values():  # only the workers this benchmark started
                        proc.terminate()
                self.log("interrupted; the runs resume from their checkpoints next time")
                raise


# ---------------------------------------------------------------------------- aggregation


def _std(values: list[float]) -> float:
    """Sample standard deviation over seeds (ddof = 1); 0 for a single seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def aggregate(out: Path, names: list[str], seeds: list[int]) -> tuple[dict[str, Any], list[str]]:
    """Per-method summaries of the finished runs, and the runs without a result."""
    methods: dict[str, Any] = {}
    missing: list[str] = []
    for name in names:
        method = METHODS[name]
        per_seed = []
        for seed in seeds:
            path = run_dir(out, name, seed) / "result.json"
            if path.exists():
                per_seed.append(json.loads(path.read_text(encoding="utf-8")))
            else:
                missing.append(f"{name}/seed{seed}")
        success = [r["success"] for r in per_seed]
        subtasks = sorted({k for r in per_seed for k in r["subtask_success"]})
        entry: dict[str, Any] = {
            "description": method.description,
            "schedule": method.stages,
            "final_stage": method.final_stage,
            "overrides": dict(method.overrides),
            "seeds": [r["seed"] for r in per_seed],
            "success": success,
            "mean": float(np.mean(success)) if success else None,
            "std": _std(success) if success else None,
            "subtask_success": {k: [r["subtask_success"].get(k) for r in per_seed] for k in subtasks},
            "subtask_mean": {k: float(np.mean([r["subtask_success"].get(k, 0.0) for r in per_seed]))
                             for k in subtasks},
            "n_eval_episodes": [r["n_eval_episodes"] for r in per_seed],
            "selection": sorted({r["selection"] for r in per_seed}),
            "wall_s": [r["wall_s"] for r in per_seed],
            "wall_s_mean": float(np.mean([r["wall_s"] for r in per_seed])) if per_seed else None,
            "offline_episodes": [r["offline_episodes"] for r in per_seed],
            "offline_successful_episodes": [r["offline_successful_episodes"] for r in per_seed],
            "per_seed": per_seed,
        }
        if method.extra_demos and per_seed:
            spec = json.loads((run_dir(out, name, per_seed[0]["seed"]) / "run.json").read_text(encoding="utf-8"))
            entry["extra_demos"] = spec["extra_demos"]
        methods[name] = entry
    return methods, missing


def markdown_table(methods: dict[str, Any]) -> str:
    rows = ["| method | stages | success (mean ± std) | per seed | subtasks | eval episodes | offline episodes (successful) | wall time / run |",
            "|---|---|---|---|---|---|---|---|"]
    for name, m in methods.items():
        if not m["success"]:
            rows.append(f"| {name} | {' → '.join(m['schedule'])} | (no finished run) | | | | | |")
            continue
        seeds = ", ".join(f"{s:.3f}" for s in m["success"])
        subtasks = ", ".join(f"{k} {v:.3f}" for k, v in m["subtask_mean"].items())
        episodes = "/".join(str(n) for n in sorted(set(m["n_eval_episodes"])))
        offline = "/".join(f"{e} ({s})" for e, s in sorted(set(zip(m["offline_episodes"],
                                                                    m["offline_successful_episodes"], strict=True))))
        rows.append(f"| {name} | {' → '.join(m['schedule'])} | {m['mean']:.3f} ± {m['std']:.3f} | {seeds} | "
                    f"{subtasks} | {episodes} | {offline} | {m['wall_s_mean']:.0f} s |")
    return "\n".join(rows)


def plot(methods: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(methods)
    fig, ax = plt.subplots(figsize=(1.5 * len(names) + 2.5, 4.8))
    x = np.arange(len(names))
    means = [methods[n]["mean"] if methods[n]["mean"] is not None else 0.0 for n in names]
    stds = [methods[n]["std"] or 0.0 for n in names]
    ax.bar(x, means, yerr=stds, capsize=6, color="#8fb3d9", edgecolor="#2f5d8a", zorder=1,
           error_kw={"elinewidth": 1.5, "ecolor": "#1b3550"})
    rng = np.random.default_rng(0)  # fixed jitter: the same plot every time
    for i, name in enumerate(names):
        ys = methods[name]["success"]
        if ys:
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(ys)), ys, color="black", s=18, zorder=3,
                       label="seeds" if i == 0 else None)
            ax.annotate(f"{methods[name]['mean']:.2f}", (i, min(methods[name]['mean'] + stds[i], 1.0)),
                        textcoords="offset points", xytext=(0, 6), ha="center", fontsize=9)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylim(0.0, 1.08)
    ax.set_ylabel("success rate (evaluation after the last stage)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    if any(methods[n]["success"] for n in names):
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ main


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Learning benchmark on the point task: methods x seeds of resumable trainer runs.",
        epilog="methods: " + "; ".join(f"{k}: {m.description}" for k, m in METHODS.items()),
    )
    parser.add_argument("--config", default=str(_ROOT / "config" / "point_full.yaml"), help="base run config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--methods", nargs="+", default=["all"], help=f"'all' or some of {list(METHODS)}")
    parser.add_argument("--out", default=str(_ROOT / "results" / "bench_learning"), help="output directory")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (subprocesses)")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads per run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], type=_parse_override,
                        metavar="KEY=VALUE", help="override a base config value (repeatable), e.g. il.steps=100")
    parser.add_argument("--vary-demo-seed", action="store_true",
                        help="generate each seed's demonstrations with data.demo_seed = seed (default: one dataset)")
    parser.add_argument("--report-only", action="store_true", help="aggregate the finished runs; start none")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker is not None:
        return worker(args.worker)
    names = list(METHODS) if args.methods == ["all"] else args.methods
    bad = [n for n in names if n not in METHODS]
    if bad or not names:
        print(f"bench/learning.py: unknown method(s) {bad}; methods are {list(METHODS)}", file=sys.stderr)
        return 2
    if args.jobs < 1 or args.threads < 1 or len(set(args.seeds)) != len(args.seeds):
        print("bench/learning.py: --jobs and --threads must be >= 1 and --seeds distinct", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # SIGTERM (e.g. `kill PID`) stops like Ctrl-C: the running workers are terminated too.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    base = load_config(args.config, dict(args.overrides))
    pending = []
    try:
        for name in names:
            for seed in args.seeds:
                spec = run_spec(base, name, seed, args.threads, args.vary_demo_seed)
                if not prepare_run(run_dir(out, name, seed), spec):
                    pending.append((name, seed))
    except BenchError as exc:
        print(f"bench/learning.py: {exc}", file=sys.stderr)
        return 2
    total = len(names) * len(args.seeds)
    runner = _Runner(out, args.jobs, args.threads, len(pending))
    runner.log(f"{total} runs ({len(names)} methods x {len(args.seeds)} seeds), {total - len(pending)} already "
               f"done, {len(pending)} to run, {args.jobs} at a time with {args.threads} thread(s) each; out {out}")
    if pending and not args.report_only:
        try:
            runner.run_all(pending)
        except KeyboardInterrupt:
            return 130

    methods, missing = aggregate(out, names, args.seeds)
    n_eval = base.trainer.eval.episodes
    report = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "config_path": str(args.config),
        "overrides": {k: v for k, v in args.overrides},
        "config": base.to_dict(),
        "seeds": list(args.seeds),
        "methods_run": names,
        "jobs": args.jobs,
        "threads": args.threads,
        "vary_demo_seed": bool(args.vary_demo_seed),
        "extra_demos": extra_demo_count(base),
        "metric": f"success rate over {n_eval} fixed-seed evaluation episodes after each method's last stage; "
                  "std = sample standard deviation over seeds (ddof 1)",
        "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
        "missing": missing,
        "results": methods,
    }
    _write_json(out / "learning.json", report)
    done = sum(len(m["success"]) for m in methods.values())
    plot(methods, out / "learning.png",
         f"Point task ({n_eval} eval episodes per run): mean ± std over seeds {', '.join(map(str, args.seeds))}")
    runner.log(f"wrote {out / 'learning.json'} and {out / 'learning.png'} ({done}/{total} runs)")
    print()
    print(markdown_table(methods))
    if missing:
        print(f"\nmissing runs: {', '.join(missing)}")
    return 1 if (runner.failed or (missing and not args.report_only)) else 0


if __name__ == "__main__":
    raise SystemExit(main())
