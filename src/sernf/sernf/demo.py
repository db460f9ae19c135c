"""``python -m sernf.demo``: the main job (``make demo``) — the simulated SERNF pipeline.

On the simulated hand pick-and-place task (``sernf_sim.hand_pick_place``, state-only, the
stand-in for the paper's scissors task) it

1. records the demonstration dataset (``hand_demo_dataset``: scripted expert at the default
   quality, ~120 episodes, ~60 % successful) into a zarr store with the replay layer;
2. runs Stages I–III with the resumable :class:`~sernf_learner.trainer.Trainer` (schedule
   ``offline``): Stage I imitation on the successful demos, Stage II critic warm-up, Stage III
   offline RL on all demos, each evaluated on the same fixed-seed random layouts;
3. runs Stage IV through the ROS graph (``--online graph``, the default; :mod:`sernf.ros.online_graph`):
   the simulated robot, the policy node and the learner node as separate processes talking
   over DDS, exactly what ``ros2 launch sernf sim.launch.py`` starts. Each iteration collects
   K rollouts on the simulated robot with best-of-N selection (recorded and announced by the
   policy node), the learner node trains and announces a checkpoint, the policy node reloads
   it, and the demo evaluates it. ``--online in-process`` runs Stage IV inside the trainer
   instead (vectorized env, no ROS), for machines without the ROS wheels or for quick studies;
4. prints a table like the paper's Table I (policy | data | grasp | place), a significance
   statement (final policy vs. imitation), and writes ``<out>/summary.json`` and
   ``<out>/learning_curve.png``.

Run directory layout::

    <out>/demo_config.yaml     the config this run uses (a resumed run must use the same)
    <out>/summary.json         the demo's results (see ``build_summary``)
    <out>/learning_curve.png   success vs. online rollouts, per stage
    <out>/train/               the trainer's run: offline_replay/ (the demos), policy_<stage>/
                               (deployable checkpoints), checkpoints/, metrics.jsonl, tb/,
                               summary.json (training metrics)
    <out>/online_graph/        Stage IV through ROS: config/sim.yaml (the parameters used),
                               logs/<node>.log, replay/online.zarr (the policy's recordings),
                               learner/ (the learner node's store, journal, checkpoints,
                               metrics), run_config.yaml, iterations.jsonl, result.json

A killed run continues with ``--resume`` (same ``--out``): the dataset is reused and the trainer
resumes from its last checkpoint.

The YAML file is a ``RunConfig`` (see ``sernf_learner.configs``) plus one ``demo:`` section
(:class:`DemoConfig`: dataset generation and CPU threads).
"""

from __future__ import annotations

import os

# Before torch is imported: with more OpenMP threads than free cores (a shared machine, other
# processes busy) unbounded spin-waiting of idle OpenMP threads makes every op up to 10x
# slower. Purely passive waiting instead makes every op of a 2-thread team pay a sleep and
# wake-up: imitation ran at 6.3 updates/s on 2 threads against 13.6 on one. A bounded spin
# (libgomp's own default count; it overrides the policy's zero) before sleeping gives 16.1.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("GOMP_SPINCOUNT", "300000")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402

from sernf_learner.configs import RunConfig  # noqa: E402
from sernf_learner.paired_statistics import one_sided_paired_test  # noqa: E402
from sernf_policy.config_io import build_dataclass, to_jsonable  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG = REPO_ROOT / "config" / "demo_hand.yaml"
SCHEDULE = ("il", "critic_warmup", "offline_rl", "online_rl")
#: Rows of the table: stage -> (policy label, how it acts).
STAGE_LABELS = {
    "il": "NF IL",
    "critic_warmup": "NF IL + warmed-up critic",
    "offline_rl": "SERNF (offline only)",
    "online_rl": "SERNF (full)",
}
#: One-sided significance level for "the final policy beats imitation".
ALPHA = 0.01


# ------------------------------------------------------------------------------- config


@dataclass
class DemoDatasetConfig:
    """The demonstration dataset (``sernf_sim.hand_pick_place.demos.hand_demo_dataset``)."""

    num_demos: int = 120
    """Episodes recorded (the paper's scissors dataset: 121)."""
    seed: int = 0
    """Layout and expert seed."""
    expert_quality: float | None = None
    """Scripted-expert quality in [0, 1] (1 = clean); None = the task's default demo quality
    (``DEFAULT_DEMO_QUALITY``, ~60 % successful episodes)."""
    box_prob: float | None = None
    """Probability that the expert picks the box (else the cylinder) in an episode; None = the
    expert's default (0.5: two strategies). Not a quality knob: it sets how multimodal the
    demonstrations are."""
    variant: str = "nominal"
    """"nominal" simulation or the "shifted" real-robot stand-in."""
    num_envs: int = 20
    """Envs simulated in parallel while recording."""

    def __post_init__(self) -> None:
        for name, low in (("num_demos", 1), ("seed", 0), ("num_envs", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"demo.dataset.{name} must be an int >= {low}, got {v!r}")
        if self.expert_quality is not None and not 0.0 <= float(self.expert_quality) <= 1.0:
            raise ValueError(f"demo.dataset.expert_quality must be in [0, 1] or null, got {self.expert_quality!r}")
        if self.box_prob is not None and not 0.0 <= float(self.box_prob) <= 1.0:
            raise ValueError(f"demo.dataset.box_prob must be in [0, 1] or null, got {self.box_prob!r}")
        if self.variant not in ("nominal", "shifted"):
            raise ValueError(f"demo.dataset.variant must be nominal or shifted, got {self.variant!r}")


@dataclass
class DemoConfig:
    """The ``demo:`` section of the YAML file (everything else is a ``RunConfig``)."""

    dataset: DemoDatasetConfig = field(default_factory=DemoDatasetConfig)
    """How the offline dataset is generated (when the store does not exist yet)."""
    threads: int = 2
    """torch intra-op threads (the target machines have 2 cores); also the learner node's."""
    sim_speed: float = 1.0
    """Speed of the simulated robot in Stage IV through ROS (x real time). The graph runs on the
    simulator's /clock, so the recorded episodes keep the task's 10 Hz at any speed."""
    policy_node_parameters: dict[str, Any] = field(default_factory=dict)
    """Stage IV policy node parameters set over config/sim.yaml's, e.g. ``{stale_after_s: 1.0}``
    on a slower machine (names the node does not declare are refused)."""

    def __post_init__(self) -> None:
        from sernf.online_graph import check_policy_parameters

        check_policy_parameters(self.policy_node_parameters)
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"demo.threads must be an int >= 1, got {self.threads!r}")
        if not (isinstance(self.sim_speed, int | float) and math.isfinite(self.sim_speed) and 0 < self.sim_speed <= 20):
            raise ValueError(f"demo.sim_speed must be in (0, 20], got {self.sim_speed!r}")


def load_demo_config(path: str | os.PathLike[str]) -> tuple[DemoConfig, RunConfig, dict[str, Any]]:
    """``(demo section, run config, the raw YAML mapping)`` of a demo config file."""
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a demo config must be a YAML mapping")
    data = dict(raw)
    demo_section = data.pop("demo", None) or {}
    try:
        demo = build_dataclass(DemoConfig, demo_section,
                               {"dataset": lambda d: build_dataclass(DemoDatasetConfig, d)})
        run = RunConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if run.env.task != "hand_pick_place":
        raise ValueError(f"{path}: the demo runs the hand_pick_place task, got env.task={run.env.task!r}")
    if run.trainer.eval.episodes < 1:
        raise ValueError(f"{path}: the demo needs trainer.eval.episodes >= 1")
    missing = [s for s in SCHEDULE if s not in run.trainer.eval.stages]
    if missing:
        raise ValueError(f"{path}: trainer.eval.stages must include {missing}")
    return demo, run, raw


# -------------------------------------------------------------------------------- stats


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate (well-behaved at 0 and 1)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def two_proportion_test(p_base: float, n_base: int, p_new: float, n_new: int) -> dict[str, Any]:
    """One-sided two-proportion z-test of ``p_new > p_base`` (pooled variance) and the 95 %
    Wald interval of the difference. Treats the two evaluations as independent samples (they
    share layouts, which correlates them positively, so this is conservative)."""
    x_base, x_new = p_base * n_base, p_new * n_new
    pooled = (x_base + x_new) / (n_base + n_new)
    se0 = math.sqrt(max(pooled * (1 - pooled) * (1 / n_base + 1 / n_new), 1e-12))
    z = (p_new - p_base) / se0
    p_value = 0.5 * math.erfc(z / math.sqrt(2.0))
    se = math.sqrt(p_base * (1 - p_base) / n_base + p_new * (1 - p_new) / n_new)
    diff = p_new - p_base
    return {
        "difference": diff,
        "ci95": [diff - 1.96 * se, diff + 1.96 * se],
        "z": z,
        "p_value_one_sided": p_value,
        "episodes": [n_base, n_new],
    }


# -------------------------------------------------------------------------------- steps


def generate_dataset(demo: DemoConfig, run: RunConfig, uri: Path) -> None:
    """Record the demonstrations into a zarr store at ``uri`` (written aside, then renamed)."""
    from sernf_data.store import EpisodeStore, StoreSpec
    from sernf_sim.hand_pick_place.demos import hand_demo_dataset
    from sernf_sim.hand_pick_place.expert import DEFAULT_DEMO_QUALITY, HandExpertConfig

    d, p = demo.dataset, run.policy
    quality = DEFAULT_DEMO_QUALITY if d.expert_quality is None else float(d.expert_quality)
    knobs = {} if d.box_prob is None else {"box_prob": float(d.box_prob)}
    strategy = "" if d.box_prob is None else f", box picked with p = {d.box_prob:g}"
    print(f"[demo] recording {d.num_demos} demonstrations (scripted expert at quality {quality:g}"
          f"{' (default)' if d.expert_quality is None else ''}{strategy}, {d.variant} simulation, seed {d.seed}) ...",
          flush=True)
    t0 = time.perf_counter()
    expert = None if not knobs and d.expert_quality is None else HandExpertConfig.from_quality(quality, **knobs)
    overrides = {k: v for k, v in run.env.task_overrides.items() if k != "variant"}
    episodes = hand_demo_dataset(n=d.num_demos, seed=d.seed, expert_config=expert, variant=d.variant,
                                 num_envs=d.num_envs, T=p.obs_history, P=p.prefix_len, H=p.horizon, **overrides)
    tmp = uri.with_name(uri.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    from sernf_learner.trainer import make_env

    env = make_env(run, 1, 0)
    spec = StoreSpec(obs=env.observation_spec, action_dim=env.action_dim, control_rate_hz=env.control_hz)
    store = EpisodeStore(str(tmp), mode="a", spec=spec)
    for steps, meta in episodes:
        store.append_episode(steps, meta)
    del store
    os.replace(tmp, uri)  # the run sees a complete dataset or none
    n_ok = sum(bool(m["success"]) for _, m in episodes)
    n_grasp = sum(bool(m["subtask_success"].get("grasp")) for _, m in episodes)
    print(f"[demo] {len(episodes)} demonstrations in {time.perf_counter() - t0:.0f} s: {n_ok} successful "
          f"(placed), {n_grasp} with a grasp -> {uri}", flush=True)


def store_counts(uri: Path) -> dict[str, int]:
    """Episodes, successful episodes and steps of an episode store (zeros if missing)."""
    from sernf_data.store import EpisodeStore

    if not (uri / "zarr.json").exists():
        return {"episodes": 0, "successes": 0, "steps": 0}
    store = EpisodeStore(str(uri), mode="r")
    ids = store.episode_ids()
    ok = sum(bool(store.episode_metadata(i).get("success")) for i in ids)
    return {"episodes": len(ids), "successes": ok, "steps": int(store.num_steps)}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def learning_curve(records: Sequence[Mapping[str, Any]], results: Mapping[str, Any],
                   episodes_per_iteration: int) -> list[dict[str, Any]]:
    """Points of success vs. online rollouts: the stage evaluations (stages I–III at 0
    rollouts, Stage IV at its total), Stage IV's per-iteration evaluations and the success of
    the rollouts it collected."""
    points: list[dict[str, Any]] = []
    iteration = 0
    for r in records:
        if r.get("stage") == "online_rl" and r.get("iteration") == 0 and r.get("eval/success") is not None:
            # Stage IV's starting policy on the per-iteration evaluation's own layouts.
            points.append({"online_rollouts": 0, "success": r["eval/success"], "kind": "eval", "stage": "online_rl"})
            continue
        if r.get("stage") != "online_rl" or "online/episodes" not in r:
            continue
        iteration += 1
        rollouts = iteration * episodes_per_iteration
        if r.get("online/success") is not None:
            points.append({"online_rollouts": rollouts, "success": r["online/success"], "kind": "collected",
                           "episodes": episodes_per_iteration, "stage": "online_rl"})
        if r.get("eval/success") is not None:
            points.append({"online_rollouts": rollouts, "success": r["eval/success"], "kind": "eval",
                           "stage": "online_rl"})
    total = iteration * episodes_per_iteration
    for stage in SCHEDULE:
        if stage in results:
            points.append({"online_rollouts": total if stage == "online_rl" else 0, "kind": "stage_eval",
                           "stage": stage, "success": results[stage]["success_rate"],
                           "episodes": results[stage]["num_episodes"]})
    return points


def plot_learning_curve(points: Sequence[Mapping[str, Any]], eval_episodes: int, online_eval_episodes: int,
                        path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    colors = {"il": "tab:gray", "critic_warmup": "tab:orange", "offline_rl": "tab:blue", "online_rl": "tab:green"}
    stage_pts = [p for p in points if p["kind"] == "stage_eval"]
    span = max([p["online_rollouts"] for p in points] + [10])
    # Stages I-III all sit at 0 online rollouts: spread them a little so they stay visible.
    offsets = {"il": -0.02 * span, "critic_warmup": 0.0, "offline_rl": 0.02 * span}
    for p in stage_pts:
        lo, hi = wilson_interval(p["success"] * p["episodes"], p["episodes"])
        x = p["online_rollouts"] + offsets.get(p["stage"], 0.0)
        ax.errorbar([x], [p["success"]], yerr=[[p["success"] - lo], [hi - p["success"]]], fmt="o", ms=8,
                    capsize=4, color=colors[p["stage"]],
                    label=f"after {p['stage']} ({STAGE_LABELS[p['stage']]})")
    il = next((p for p in stage_pts if p["stage"] == "il"), None)
    evals = sorted((p for p in points if p["kind"] == "eval"), key=lambda p: p["online_rollouts"])
    if evals:
        # The line starts from the offline policy on the same layouts when that was measured: the
        # per-iteration evaluations use the first layouts of the stage evaluations' fixed seed,
        # which need not be as hard as all of them.
        start = [] if evals[0]["online_rollouts"] == 0 else [p for p in stage_pts if p["stage"] == "offline_rl"]
        xs = [0.0] * len(start) + [p["online_rollouts"] for p in evals]
        ys = [p["success"] for p in start] + [p["success"] for p in evals]
        same_layouts = f": the first {online_eval_episodes} layouts, from the offline policy at 0" if not start else ""
        ax.plot(xs, ys, "-", color="tab:green", lw=2,
                label=f"Stage IV evaluation ({online_eval_episodes} episodes each{same_layouts})")
    collected = sorted((p for p in points if p["kind"] == "collected"), key=lambda p: p["online_rollouts"])
    if collected:
        ax.plot([p["online_rollouts"] for p in collected], [p["success"] for p in collected], ":", marker=".",
                color="tab:olive", label="Stage IV collected rollouts (best-of-N, per iteration)")
    if il is not None:
        ax.axhline(il["success"], color="tab:gray", ls="--", lw=1)
    ax.set_xlabel("online rollouts (Stage IV episodes collected)")
    ax.set_ylabel("task success rate (place)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def build_summary(run: RunConfig, results: Mapping[str, Any], offline: Mapping[str, int],
                  online: Mapping[str, int], curve: list[dict[str, Any]], wall_time_s: float,
                  out: Path, config_path: Path) -> dict[str, Any]:
    ev, o = run.trainer.eval, run.online_rl
    n_eval = int(ev.episodes)
    data = {
        "il": f"{offline['successes']}+",
        "critic_warmup": f"{offline['episodes']} ({offline['successes']}+)",
        "offline_rl": f"{offline['episodes']} ({offline['successes']}+)",
        "online_rl": f"{offline['episodes'] + online['episodes']} ({offline['successes'] + online['successes']}+)",
    }
    stages: dict[str, Any] = {}
    for stage in SCHEDULE:
        if stage not in results:
            continue
        r = results[stage]
        n = int(r["num_episodes"])
        lo, hi = wilson_interval(r["success_rate"] * n, n)
        stages[stage] = {
            "policy": STAGE_LABELS[stage],
            "selection": r.get("selection"),
            "success": r["success_rate"],
            "success_ci95": [lo, hi],
            "subtask_success": dict(r["subtask_success_rates"]),
            "episodes": n,
            "mean_return": r.get("mean_return"),
            "mean_length": r.get("mean_length"),
            "data": data[stage],
            # Episodes the robot's policy node would have stopped (a finger reading past its
            # range + JOINT_RANGE_MARGIN_RAD); the in-process evaluation lets them run on.
            "joints_past_range": r.get("joints_past_range_rate"),
            "success_if_held": r.get("success_rate_if_held"),
            "episode_success": r.get("episode_success"),  # [episodes] 0/1 in layout order
        }
    significance: dict[str, Any] = {}
    if "il" in stages:
        base = stages["il"]
        for stage in ("offline_rl", "online_rl"):
            if stage in stages:
                s = stages[stage]
                test = two_proportion_test(base["success"], base["episodes"], s["success"], s["episodes"])
                # The verdict uses the paired test when both rows kept their episodes (every run
                # since 2026-12-03); the unpaired z-test stays for comparison with older runs.
                verdict_p = test["p_value_one_sided"]
                if base.get("episode_success") is not None and s.get("episode_success") is not None:
                    test["paired"] = one_sided_paired_test(base["episode_success"], s["episode_success"])
                    verdict_p = test["paired"]["p_value_one_sided"]
                test["significant_at_alpha"] = ALPHA
                test["significant"] = bool(verdict_p < ALPHA)
                significance[f"{stage}_vs_il"] = test
    return {
        "task": "hand_pick_place",
        "config": str(config_path),
        "run_dir": str(out),
        "evaluation_episodes": n_eval,
        "evaluation": {
            "episodes_per_stage": n_eval,
            "layouts": f"random layouts drawn from the fixed seed {ev.seed}, identical for every stage",
            "num_samples": ev.num_samples,
            "sigma": ev.sigma,
            "selection": {"il": ev.selection_without_critic, "critic_stages": "best_of_n (Alg. 2)"},
            "online_iteration_episodes": o.eval_episodes if o.eval_every else 0,
        },
        "data": {"offline": dict(offline), "online": dict(online)},
        "stages": stages,
        "significance": significance,
        "learning_curve": curve,
        "wall_time_s": wall_time_s,
        "trainer_summary": str(out / "train" / "summary.json"),
    }


def format_table(summary: Mapping[str, Any], run: RunConfig) -> str:
    ev = run.trainer.eval
    n = summary["evaluation_episodes"]
    rows = [("Policy", "Data (trajectories)", "Grasp (subtask 1)", "Place (subtask 2 = task)")]
    how = {
        "il": f"most likely of {ev.num_samples}" if ev.selection_without_critic == "most_likely" else "one sample",
        "critic_warmup": f"best of {ev.num_samples}",
        "offline_rl": f"best of {ev.num_samples}",
        "online_rl": f"best of {ev.num_samples}, {run.online_rl.iterations} online iterations",
    }
    for stage, s in summary["stages"].items():
        lo, hi = s["success_ci95"]
        rows.append((f"{s['policy']} ({how[stage]})", s["data"], f"{s['subtask_success'].get('grasp', float('nan')):.2f}",
                     f"{s['success']:.2f}  [{lo:.2f}, {hi:.2f}]"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    line = "-+-".join("-" * w for w in widths)
    text = [f"HAND PICK-AND-PLACE SUCCESS RATES ({n} evaluation episodes per row: {ev.episodes} random "
            f"layouts, seed {ev.seed}, the same for every row; + = successful trajectories; [95 % Wilson CI])",
            " | ".join(h.ljust(w) for h, w in zip(rows[0], widths, strict=True)), line]
    text += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows[1:]]
    held = {stage: s for stage, s in summary["stages"].items() if s.get("joints_past_range") is not None}
    if held:
        from sernf_sim.hand_pick_place.env import JOINT_RANGE_MARGIN_RAD

        text.append(f"Episodes with a finger reading more than {JOINT_RANGE_MARGIN_RAD:g} rad past its range, which the robot's policy node "
                    "would have stopped (place success if they count as failures): " + "; ".join(
                        f"{stage} {s['joints_past_range']:.2f} ({s['success_if_held']:.2f})" for stage, s in held.items()))
    return "\n".join(text)


def format_significance(summary: Mapping[str, Any]) -> str:
    lines = []
    for key, label in (("online_rl_vs_il", "SERNF (full) vs NF IL"), ("offline_rl_vs_il", "SERNF (offline) vs NF IL")):
        t = summary["significance"].get(key)
        if t is None:
            continue
        lo, hi = t["ci95"]
        n1, n2 = t["episodes"]
        verdict = "significant" if t["significant"] else "NOT significant"
        paired = t.get("paired")
        if paired is None:
            lines.append(f"{label}: difference {t['difference']:+.3f} (95 % CI [{lo:+.3f}, {hi:+.3f}]), two-proportion "
                         f"z = {t['z']:.2f}, one-sided p = {t['p_value_one_sided']:.2g} over {n1} + {n2} episodes "
                         f"-> {verdict} at alpha = {t['significant_at_alpha']}")
            continue
        plo, phi = paired["ci95"]
        lines.append(f"{label}: difference {paired['difference']:+.3f} (paired 95 % CI [{plo:+.3f}, {phi:+.3f}]) on the "
                     f"same {paired['episodes']} episodes; won {paired['new_only']}, lost {paired['base_only']}: exact "
                     f"McNemar one-sided p = {paired['p_value_one_sided']:.2g} -> {verdict} at alpha = "
                     f"{t['significant_at_alpha']} (unpaired z-test p = {t['p_value_one_sided']:.2g})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sernf.demo",
        description="The SERNF main job on the simulated hand pick-and-place task: demonstrations -> "
                    "IL -> critic warm-up -> offline RL -> online RL, evaluated after every stage; "
                    "prints a Table-I-like table and writes summary.json and learning_curve.png.",
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="demo YAML: a RunConfig plus a demo: section (default: %(default)s)")
    parser.add_argument("--out", default=None,
                        help="run directory (default: results/<config name>-<date-time>; with --resume "
                             "and no --out, the newest results/<config name>-* run)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --out from its last checkpoint")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's demo.threads)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    parser.add_argument("--offline-only", action="store_true",
                        help="stop after Stage III: record the demonstrations and train the offline policy "
                             "(what `python -m sernf.run_graph sim` expects under results/sim)")
    parser.add_argument("--online", choices=("graph", "in-process"), default="graph",
                        help="Stage IV through the ROS graph (sim robot, policy and learner nodes over DDS; "
                             "default) or inside the trainer (vectorized env, no ROS)")
    return parser


def _resolve_out(args: argparse.Namespace, config_path: Path) -> Path:
    stem = config_path.stem
    if args.out is not None:
        return Path(args.out)
    if args.resume:
        runs = sorted(Path("results").glob(f"{stem}-*"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise SystemExit(f"--resume: no results/{stem}-* run to resume; give --out")
        return runs[-1]
    return Path("results") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def evaluate_checkpoint(run: RunConfig, policy_dir: str | os.PathLike[str], episodes: int) -> dict[str, Any]:
    """The trainer's stage evaluation (same layouts, N, σ, Alg. 2 selection) of a saved policy."""
    from sernf_learner.online_rl import evaluate_policy
    from sernf_learner.trainer import make_env
    from sernf_policy.policy import Policy

    ev = run.trainer.eval
    policy = Policy.load(policy_dir)
    policy.config.selection = "best_of_n"
    env = make_env(run, min(ev.num_envs, episodes), ev.seed)
    result = evaluate_policy(policy, env, episodes, num_samples=ev.num_samples, sigma=ev.sigma, seed=ev.seed,
                             threads=ev.torch_threads)
    # Per-episode outcomes in episode order, as the trainer's stage evaluations keep them, so the
    # final policy is compared with imitation episode by episode (one_sided_paired_test).
    return {**result.summary(), "selection": "best_of_n", "episode_success": result.episode_success}


def start_record(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """Learning-curve record of Stage IV's starting policy (iteration 0) from its evaluation."""
    return {"stage": "online_rl", "iteration": 0, "eval/success": evaluation["success_rate"],
            "eval/return": evaluation["mean_return"], "eval/episodes": evaluation["num_episodes"]}


def run_online_graph(run: RunConfig, demo: DemoConfig, raw: Mapping[str, Any], out: Path,
                     offline_uri: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Stage IV through the ROS graph; returns (its stage result, learning-curve records).

    Progress is kept in ``<out>/online_graph/iterations.jsonl`` (one line per finished
    iteration); a resumed run continues with the next iteration (the learner node resumes
    from its own checkpoint in the same folder).
    """
    from sernf.online_graph import GraphStageConfig
    from sernf.ros.online_graph import OnlineGraph
    from sernf_learner.trainer import make_env

    o, ev = run.online_rl, run.trainer.eval
    root = out / "online_graph"
    root.mkdir(parents=True, exist_ok=True)
    log_path, result_path = root / "iterations.jsonl", root / "result.json"
    records = read_metrics(log_path)
    start_path = root / "start_evaluation.json"
    if result_path.exists():
        start = [start_record(json.loads(start_path.read_text(encoding="utf-8")))] if start_path.exists() else []
        return json.loads(result_path.read_text(encoding="utf-8")), start + records
    # The learner node reads a plain RunConfig (the demo: section is the demo's own).
    run_config = root / "run_config.yaml"
    run_config.write_text(yaml.safe_dump({k: v for k, v in raw.items() if k != "demo"}, sort_keys=False),
                          encoding="utf-8")
    config = GraphStageConfig(
        run_dir=root, run_config=run_config, initial_checkpoint=out / "train" / "policy_offline_rl",
        offline_store=offline_uri, episodes_per_iteration=o.episodes_per_iteration,
        updates_per_iteration=o.updates_per_iteration, batch_size=o.batch_size, rho=o.rho,
        num_samples=o.num_samples, sigma_sample=o.sigma, max_steps=int(make_env(run, 1, 0).time_limit),
        learner_threads=demo.threads, seed=run.seed + len(records) * 1000, speed=float(demo.sim_speed),
        policy_parameters=dict(demo.policy_node_parameters),
    )
    start: list[dict[str, Any]] = []
    if o.eval_every:
        # The offline policy on the per-iteration evaluation's layouts (the first eval_episodes
        # of the stage evaluations' fixed seed): the learning curve's starting point. Comparing
        # the iterations with the 300-episode stage figure instead mixes in how hard the other
        # layouts are (run /tmp/runs/demo_orca3: IL 0.50 on the first 50, 0.35 on all 300).
        if start_path.exists():
            start_eval = json.loads(start_path.read_text(encoding="utf-8"))
        else:
            print(f"[demo] evaluating Stage IV's starting policy on the {o.eval_episodes} per-iteration "
                  "evaluation episodes ...", flush=True)
            start_eval = evaluate_checkpoint(run, config.initial_checkpoint, o.eval_episodes)
            tmp = root / ".start_evaluation.json.tmp"
            tmp.write_text(json.dumps(start_eval, indent=2), encoding="utf-8")
            os.replace(tmp, start_path)
        start = [start_record(start_eval)]
    remaining = o.iterations - len(records)
    print(f"[demo] Stage IV online_rl through the ROS graph: {remaining} iteration(s) of "
          f"{o.episodes_per_iteration} rollouts (best of {o.num_samples}, sigma {o.sigma:g}) + "
          f"{o.updates_per_iteration} learner updates; simulated robot at {demo.sim_speed:g}x real time", flush=True)
    t_stage = time.perf_counter()
    with OnlineGraph(config, log=lambda line: print(line, flush=True)) as graph:
        for it in graph.iterations(remaining, first=len(records) + 1):
            record: dict[str, Any] = {
                "stage": "online_rl", "iteration": it.iteration,
                "online/episodes": float((len(records) + 1) * o.episodes_per_iteration),
                "online/success": it.success,
                "online/grasp": sum(e["subtask_success"].get("grasp", False) for e in it.episodes) / len(it.episodes),
                "online/episode_length": sum(e["steps"] for e in it.episodes) / len(it.episodes),
                "checkpoint": it.checkpoint_uri, "checkpoint_step": it.checkpoint_step,
                "time/iteration_s": it.wall_time_s, "episodes": it.episodes,
            }
            if o.eval_every and (it.iteration % o.eval_every == 0 or it.iteration == o.iterations):
                result = evaluate_checkpoint(run, it.checkpoint_uri, o.eval_episodes)
                record["eval/success"] = result["success_rate"]
                record["eval/return"] = result["mean_return"]
            print(f"[demo] online iteration {it.iteration}/{o.iterations}: collected success {it.success:.2f}"
                  + (f", evaluation {record['eval/success']:.2f} ({o.eval_episodes} episodes)"
                     if "eval/success" in record else "")
                  + f", checkpoint step {it.checkpoint_step}, {it.wall_time_s:.0f} s", flush=True)
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            records.append(record)
    if not records:
        raise RuntimeError("Stage IV produced no iteration (online_rl.iterations must be >= 1)")
    print(f"[demo] evaluating the final online policy on {ev.episodes} episodes ...", flush=True)
    result = evaluate_checkpoint(run, records[-1]["checkpoint"], ev.episodes)
    result["wall_time_s"] = time.perf_counter() - t_stage
    tmp = root / ".result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
    os.replace(tmp, result_path)
    return result, start + records


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config_path = Path(args.config)
    try:
        demo, run, raw = load_demo_config(config_path)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.no_progress:
        run.trainer.progress = False
    out = _resolve_out(args, config_path)
    train_dir = out / "train"
    saved = out / "demo_config.yaml"
    if args.resume:
        if not saved.exists():
            print(f"error: --resume: {out} holds no demo run ({saved.name} missing)", file=sys.stderr)
            return 2
        if yaml.safe_load(saved.read_text(encoding="utf-8")) != raw:
            print(f"error: --resume: {config_path} differs from the config the run in {out} was started with "
                  f"({saved}); resume with --config {saved}", file=sys.stderr)
            return 2
    elif out.exists() and any(out.iterdir()):
        print(f"error: {out} already holds a run; continue it with --resume or choose another --out", file=sys.stderr)
        return 2
    train_dir.mkdir(parents=True, exist_ok=True)
    if not saved.exists():
        saved.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")

    import torch

    torch.set_num_threads(args.threads or demo.threads)
    from sernf_learner.trainer import Trainer, _resolve

    t0 = time.perf_counter()
    print(f"[demo] run directory {out} (config {config_path}, {torch.get_num_threads()} torch threads)", flush=True)
    offline_uri = Path(_resolve(train_dir, run.data.offline_uri))
    if "://" in str(run.data.offline_uri):
        print("error: the demo writes its dataset to a local path; data.offline_uri must not be a URL", file=sys.stderr)
        return 2
    if (offline_uri / "zarr.json").exists():
        print(f"[demo] reusing the demonstrations in {offline_uri}", flush=True)
    else:
        generate_dataset(demo, run, offline_uri)

    ev = run.trainer.eval
    print(f"[demo] stages {' -> '.join(SCHEDULE)}; each evaluated on {ev.episodes} episodes "
          f"({'Stage IV also after every iteration, ' + str(run.online_rl.eval_episodes) + ' episodes' if run.online_rl.eval_every else 'once per stage'})",
          flush=True)
    try:
        schedule = "full" if args.online == "in-process" and not args.offline_only else "offline"
        trainer = Trainer(run, train_dir, schedule, resume=args.resume and (train_dir / "checkpoints").exists())
        train_summary = trainer.run()
        if args.offline_only:
            print(f"[demo] offline stages done in {(time.perf_counter() - t0) / 60:.1f} min: demonstrations in "
                  f"{offline_uri}, offline RL policy in {train_dir / 'policy_offline_rl'}", flush=True)
            return 0
        results = dict(train_summary["results"])
        records = read_metrics(train_dir / "metrics.jsonl")
        if args.online == "graph":
            del trainer
            results["online_rl"], records = run_online_graph(run, demo, raw, out, offline_uri)
    except KeyboardInterrupt:
        print(f"\n[demo] interrupted; continue with: python -m sernf.demo --config {saved} "
              f"--out {out} --resume --online {args.online}", file=sys.stderr)
        return 130

    offline = store_counts(offline_uri)
    online = (store_counts(out / "online_graph" / "learner" / "online_replay.zarr") if args.online == "graph"
              else store_counts(Path(_resolve(train_dir, run.data.online_uri))))
    curve = learning_curve(records, results, run.online_rl.episodes_per_iteration)
    summary = build_summary(run, results, offline, online, curve, time.perf_counter() - t0, out, config_path)
    summary["config_used"] = to_jsonable(run)
    summary["online_stage"] = ("ROS graph (sim_robot, policy, learner nodes over DDS)" if args.online == "graph"
                               else "in-process (trainer, vectorized env)")
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    os.replace(tmp, out / "summary.json")
    title = (f"SERNF on hand pick-and-place: {ev.episodes} eval episodes per stage, "
             f"{run.online_rl.episodes_per_iteration} rollouts per online iteration")
    plot_learning_curve(curve, ev.episodes, run.online_rl.eval_episodes, out / "learning_curve.png", title)

    print()
    print(format_table(summary, run))
    print()
    print(format_significance(summary))
    print(f"\n[demo] done in {summary['wall_time_s'] / 60:.1f} min (this invocation); wrote {out / 'summary.json'} "
          f"and {out / 'learning_curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
