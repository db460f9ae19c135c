"""Learning benchmark (issue #4, protocol of issue #14): methods x seeds -> JSON, plot, tables.

Tasks: the simulated point task (``config/point_full.yaml``, generated mixed-quality demos) and
the state-only hand pick-and-place task (``config/bench_hand.yaml``: scripted demonstrations
recorded per its ``bench.hand_demos`` section). ``make bench-learning`` runs both.

Each (method, seed) is one resumable ``Trainer`` run of the config in its own directory
``<out>/runs/<method>/seed<k>/``, started as a subprocess (``--jobs`` at a time, each with
``--threads`` torch threads). A finished run leaves ``result.json`` and is skipped next time; an
unfinished one resumes from its last trainer checkpoint (and its finished evaluations), so a
killed benchmark continues where it stopped.

Protocol:

* Five seeds by default (``--seeds 0 1 2 3 4``); one dataset for every method and seed
  (``data.demo_seed``) unless ``--vary-demo-seed``.
* Every evaluation uses the same fixed-seed episodes (``trainer.eval``: seed, envs, episode
  count), for every method, seed and stage, and records each episode's success, so methods
  are compared episode by episode.
* A method's success is the evaluation after its last stage: imitation-only policies act by
  "most likely of N" (§IV-D a), the others by best-of-N with the critic (Alg. 2), the
  likelihood-free baselines by one sample.
* The RL methods (critic warm-up among their stages) get four evaluations on the same
  episodes, from their exported policies: IL most-likely (``policy_il``), IL + warmed-up critic
  (``policy_critic_warmup``, best-of-N), the actor alone after RL (the final policy, most
  likely of N) and best-of-N after RL (the final policy: the method's success). One that the
  trainer already ran with the same policy and selection (after ``il``, after the last stage)
  is taken from it; the others run after training, each saved to ``eval_variants/<name>.json``.
* Imitation-only flows (``nf_il``, ``nf_il_more_demos``) are also evaluated acting by one sample
  (``il_one_sample``), the likelihood-free baselines' acting rule, and the flow-matching
  baseline is paired with that evaluation too. A run finished before an evaluation was
  planned gets it on the next call, without training again.
* Statistics (``sernf_learner.paired_statistics``): per method the mean over seeds with a 95 % Student
  t interval over seeds; paired comparisons (each method vs ``nf_il``, full vs offline, each RL
  method's best-of-N after RL vs its own IL policy) with McNemar's exact test on the
  (seed, episode) pairs pooled over seeds and a paired bootstrap over seeds of the mean
  success difference with its 95 % interval.

Methods:

* ``nf_il``: normalizing-flow imitation only (Stage I on the successful demos).
* ``nf_il_more_demos``: the same, with an offline dataset larger by the interaction budget
  online RL gets (``online_rl.iterations x episodes_per_iteration`` more episodes from the same
  mixed-quality scripted experts); imitation uses its successful ones. Is online RL better than
  spending the episodes on demonstrations?
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

Outputs in ``--out`` (default ``results/bench_learning/<point|hand>``): ``learning.json`` (per
method: per-seed success, interval, variants, per-episode outcomes, wall time; the paired
comparisons; the command line and config), ``learning.png`` (means with 95 % intervals, the
seeds as dots) and markdown tables on stdout.

Run:

    make bench-learning          # both tasks, 8 methods x 5 seeds each (hours of CPU)
    .venv/bin/python bench/learning.py --config config/point_full.yaml --methods all --jobs 2
    .venv/bin/python bench/learning.py --config config/point_full.yaml --report-only  # tables again
    .venv/bin/python bench/learning.py --config config/bench_hand.yaml --quick         # CI form

``--quick``: two seeds, tiny budgets, 20 evaluation episodes (a smoke test of the whole
pipeline, no result). ``--set KEY=VALUE`` overrides the base config like ``sernf-train --set``
(``bench.hand_demos.*`` keys set the hand dataset).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
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

from sernf_learner import paired_statistics  # noqa: E402
from sernf_learner.configs import SCHEDULES, RunConfig  # noqa: E402

SCHEMA = "sernf-bench-learning/2"


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


@dataclass(frozen=True)
class Variant:
    """One evaluation of an RL method's exported policy on the benchmark's fixed episodes."""

    stage: str | None
    """Exported policy ``policy_<stage>``; None: the method's last stage."""
    selection: str
    """How it picks among the N candidates ("most_likely" or "best_of_n", Alg. 2)."""
    label: str
    """Column title in the report."""


# Issue #14's four evaluations of an RL method: what the critic adds at each point of training.
VARIANTS: dict[str, Variant] = {
    "il_most_likely": Variant("il", "most_likely", "IL most-likely"),
    "il_critic_best_of_n": Variant("critic_warmup", "best_of_n", "IL + warmed-up critic (best-of-N)"),
    "rl_actor_most_likely": Variant(None, "most_likely", "actor alone after RL (most likely)"),
    "rl_best_of_n": Variant(None, "best_of_n", "best-of-N after RL"),
}

# An imitation-only flow scores by the most likely of its N samples (§IV-D a), which the
# likelihood-free baselines (flow matching, ACT) cannot do: they act by one sample. This
# evaluation puts the flow on the baselines' acting rule, so Table I's comparison of the
# imitation policies is also made sample for sample.
IMITATION_VARIANTS: dict[str, Variant] = {
    "il_one_sample": Variant("il", "single", "IL one sample"),
}


def variant_plan(method: Method, actor: str) -> dict[str, tuple[str, str]]:
    """``{variant: (stage, selection)}``: :data:`VARIANTS` for an RL method (critic warm-up and
    a final RL stage), :data:`IMITATION_VARIANTS` for an imitation-only method; both only for
    an actor with a likelihood to rank candidates by. Empty for the others."""
    from sernf_policy.policy import LIKELIHOOD_FREE_ACTORS

    stages = method.stages
    if actor in LIKELIHOOD_FREE_ACTORS:
        return {}
    if method.final_stage == "il":
        return {name: (v.stage, v.selection) for name, v in IMITATION_VARIANTS.items()}
    if "critic_warmup" not in stages or method.final_stage not in ("offline_rl", "online_rl"):
        return {}
    return {name: (v.stage or method.final_stage, v.selection) for name, v in VARIANTS.items()}


# ------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class HandDemos:
    """The hand task's offline dataset (``bench.hand_demos`` in the config): scripted
    demonstrations (``sernf_sim.hand_pick_place.demos.hand_demo_dataset``) recorded with the
    run's chunk timing and task overrides, seed ``data.demo_seed``."""

    num: int = 120
    """Demonstrations recorded (successes and failures)."""
    expert_quality: float | None = None
    """Scripted-expert quality in [0, 1]; None: the task's default demo quality (~60 % successes)."""
    box_prob: float | None = None
    """Probability that the expert picks the box, else the cylinder (None: the expert's 0.5,
    both strategies in the data)."""
    num_envs: int = 20
    """Envs simulated in parallel while recording."""

    def __post_init__(self) -> None:
        for name, low in (("num", 1), ("num_envs", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"bench.hand_demos.{name} must be an int >= {low}, got {v!r}")
        for name in ("expert_quality", "box_prob"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0):
                raise ValueError(f"bench.hand_demos.{name} must be in [0, 1] or null, got {v!r}")


# Budgets of --quick (a smoke test of the whole protocol in minutes, no result): per task.
_QUICK_COMMON: dict[str, Any] = {
    "il.steps": 30, "critic_warmup.steps": 20, "offline_rl.steps": 10, "online_rl.iterations": 1,
    "online_rl.updates_per_iteration": 10, "online_rl.eval_every": 0, "trainer.eval.episodes": 20,
    "trainer.eval.num_envs": 20, "trainer.checkpoint_every": 1000,
}
QUICK: dict[str, dict[str, Any]] = {
    "point": {**_QUICK_COMMON, "online_rl.episodes_per_iteration": 10, "env.num_envs": 10,
              "data.generate_point_demos": 30},
    "hand_pick_place": {**_QUICK_COMMON, "online_rl.episodes_per_iteration": 4, "env.num_envs": 4,
                        "bench.hand_demos.num": 10, "bench.hand_demos.num_envs": 10},
}
QUICK_SEEDS = [0, 1]
DEFAULT_SEEDS = [0, 1, 2, 3, 4]
TASK_DIRS = {"point": "point", "hand_pick_place": "hand"}


def load_bench_config(path: str | os.PathLike[str], overrides: list[tuple[str, Any]],
                      quick: bool = False) -> tuple[RunConfig, HandDemos | None]:
    """The base run config and the benchmark's own ``bench:`` section of a config file.

    ``overrides`` (``--set``) apply after the ``--quick`` budgets; ``bench.*`` keys go to the
    ``bench:`` section, the others to the run config (validated by ``RunConfig``)."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise BenchError(f"{path}: a config must be a YAML mapping")
    section = data.pop("bench", None) or {}
    if not isinstance(section, dict) or not all(isinstance(v, dict) for v in section.values()):
        raise BenchError(f"{path}: the bench: section must map hand_demos to its fields, got {section!r}")
    section = {k: dict(v) for k, v in section.items()}
    task = (data.get("env") or {}).get("task", "point")
    changes = list(QUICK.get(task, {}).items()) if quick else []
    for key, value in changes + list(overrides):
        if key.startswith("bench."):
            _set_dotted(section, key.removeprefix("bench."), value)
        else:
            _set_dotted(data, key, value)
    if set(section) - {"hand_demos"}:
        raise BenchError(f"{path}: the bench: section takes only hand_demos, got {sorted(section)}")
    try:
        config = RunConfig.from_dict(data)
        hand = HandDemos(**section["hand_demos"]) if "hand_demos" in section else None
    except (TypeError, ValueError) as exc:
        raise BenchError(f"{path}: {exc}") from exc
    return config, hand


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


def run_spec(base: RunConfig, name: str, seed: int, threads: int, vary_demo_seed: bool,
             hand_demos: HandDemos | None = None) -> dict[str, Any]:
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
    if config.env.task == "point":
        if config.data.generate_point_demos < 1 or hand_demos is not None:
            raise BenchError("the point task's benchmark generates its demos: data.generate_point_demos > 0 "
                             "and no bench.hand_demos")
    elif config.env.task == "hand_pick_place":
        if hand_demos is None or config.data.generate_point_demos:
            raise BenchError("the hand task's benchmark records its demos: a bench.hand_demos section "
                             "(config/bench_hand.yaml) and data.generate_point_demos 0")
    else:
        raise BenchError(f"the learning benchmark runs the tasks {sorted(TASK_DIRS)}, not {config.env.task!r}")
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
        "hand_demos": dataclasses.asdict(hand_demos) if hand_demos is not None else None,
        "variants": variant_plan(method, config.policy.actor),
        "config": config.to_dict(),
    }


def run_dir(out: Path, name: str, seed: int) -> Path:
    return out / "runs" / name / f"seed{seed}"


def _write_json(path: Path, data: Any) -> None:
    """Atomic JSON write (a killed benchmark never leaves half a file)."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def same_run_spec(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a stored run spec describes the run ``new`` asks for. A config written before a
    RunConfig field existed lacks that field; it is read back through ``RunConfig.from_dict``,
    which gives the field its default (the behaviour the run had), so finished runs stay usable
    when a field is added. Every field the stored config names must still be equal. The
    evaluation plan (``variants``) may have grown: its evaluations run after training, so a
    finished run gets the new ones without training again."""
    if old == new:
        return True
    old_plan, new_plan = old.get("variants") or {}, new.get("variants") or {}
    if any(new_plan.get(name) != plan for name, plan in old_plan.items()):
        return False
    if set(old) != set(new) or any(old[k] != new[k] for k in old if k not in ("config", "variants")):
        return False
    if old["config"] == new["config"]:
        return True
    try:
        completed = RunConfig.from_dict(old["config"]).to_dict()
    except (TypeError, ValueError):
        return False
    return json.loads(json.dumps(completed)) == new["config"]


def prepare_run(directory: Path, spec: dict[str, Any]) -> bool:
    """Create/check the run directory; returns True if the run is already done."""
    directory.mkdir(parents=True, exist_ok=True)
    spec_path = directory / "run.json"
    if spec_path.exists():
        old = json.loads(spec_path.read_text(encoding="utf-8"))
        new = json.loads(json.dumps(spec))
        if not same_run_spec(old, new):
            raise BenchError(f"{directory} holds a run with another config; delete it or use another --out")
        if old.get("variants") != new.get("variants"):
            _write_json(spec_path, spec)  # the evaluation plan grew (the worker reads it from here)
    else:
        _write_json(spec_path, spec)
    result_path = directory / "result.json"
    if not result_path.exists():
        return False
    # Done unless an evaluation planned since is missing: the worker then resumes the finished
    # trainer run (nothing left to train) and runs only the missing evaluations.
    evaluated = json.loads(result_path.read_text(encoding="utf-8")).get("variants") or {}
    return set(spec.get("variants") or {}) <= set(evaluated)


# --------------------------------------------------------------------------------- worker


def _record_hand_demos(config: RunConfig, uri: Path, n: int, seed: int, demos: HandDemos) -> None:
    """Append ``n`` scripted hand demonstrations (seed ``seed``) to the episode store at ``uri``,
    recorded with the run's chunk timing and task overrides (as ``make demo`` records them)."""
    from sernf_data.store import EpisodeStore, StoreSpec
    from sernf_learner.trainer import make_env
    from sernf_sim.hand_pick_place.demos import hand_demo_dataset
    from sernf_sim.hand_pick_place.expert import DEFAULT_DEMO_QUALITY, HandExpertConfig

    knobs = {} if demos.box_prob is None else {"box_prob": float(demos.box_prob)}
    quality = DEFAULT_DEMO_QUALITY if demos.expert_quality is None else float(demos.expert_quality)
    expert = None if not knobs and demos.expert_quality is None else HandExpertConfig.from_quality(quality, **knobs)
    overrides = dict(config.env.task_overrides)
    variant = overrides.pop("variant", "nominal")
    p = config.policy
    episodes = hand_demo_dataset(n=n, seed=seed, expert_config=expert, variant=variant, num_envs=demos.num_envs,
                                 T=p.obs_history, P=p.prefix_len, H=p.horizon, **overrides)
    env = make_env(config, 1, 0)
    spec = StoreSpec(obs=env.observation_spec, action_dim=env.action_dim, control_rate_hz=env.control_hz)
    store = EpisodeStore(str(uri), mode="a", spec=spec)
    for steps, meta in episodes:
        store.append_episode(steps, meta)


def _build_offline_store(config: RunConfig, directory: Path, spec: dict[str, Any]) -> None:
    """The run's offline dataset: the base demos (exactly what the trainer would generate on the
    point task; ``bench.hand_demos`` on the hand task) plus ``extra_demos`` more episodes from the
    same experts, written under a temporary name and renamed, so a kill while generating never
    leaves a partial dataset that a resumed run would train on."""
    from sernf_learner.trainer import generate_point_demos

    uri = directory / config.data.offline_uri
    if (uri / "zarr.json").exists():
        return
    for stale in directory.glob(f"{uri.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if uri.exists():  # no zarr.json: an incomplete store from another writer
        shutil.rmtree(uri)
    tmp = uri.with_name(f"{uri.name}.tmp-{uuid.uuid4().hex[:8]}")
    if spec.get("hand_demos") is not None:
        demos = HandDemos(**spec["hand_demos"])
        _record_hand_demos(config, tmp, demos.num, config.data.demo_seed, demos)
        if spec["extra_demos"]:
            _record_hand_demos(config, tmp, spec["extra_demos"], spec["extra_demo_seed"], demos)
    else:
        generate_point_demos(config, str(tmp), config.data.generate_point_demos, config.data.demo_seed)
        if spec["extra_demos"]:
            generate_point_demos(config, str(tmp), spec["extra_demos"], spec["extra_demo_seed"])
    os.replace(tmp, uri)


def _eval_setting(config: RunConfig) -> dict[str, Any]:
    """What fixes the evaluation episodes: equal settings, equal episodes (paired tests need it)."""
    ev = config.trainer.eval
    return {"seed": ev.seed, "num_envs": ev.num_envs, "episodes": ev.episodes, "task": config.env.task,
            "task_overrides": dict(config.env.task_overrides)}


def evaluate_exported_policy(policy_dir: Path, config: RunConfig, selection: str, noise_seed: list[int],
                             top_k: int | None = None, max_disagreement: float | None = None) -> dict[str, Any]:
    """An exported policy on the benchmark's fixed episodes (``config.trainer.eval``), acting by
    ``selection`` (best-of-N's guards ``top_k`` / ``max_disagreement`` replaced when given,
    else the policy's own), its sampling noise seeded from ``noise_seed``: the rollout summary
    plus per-episode ``episode_success``."""
    import torch

    from sernf_learner.online_rl import evaluate_policy
    from sernf_learner.trainer import make_env, seed_everything
    from sernf_policy.policy import Policy

    ev = config.trainer.eval
    policy = Policy.load(policy_dir)
    policy.config.selection = selection
    if top_k is not None:
        policy.config.selection_top_k = top_k
    if max_disagreement is not None:
        policy.config.selection_max_disagreement = max_disagreement
    seed_everything(int(np.random.SeedSequence(noise_seed).generate_state(1)[0]))
    with torch.no_grad():
        rollout = evaluate_policy(policy, make_env(config, ev.num_envs, ev.seed), ev.episodes,
                                  num_samples=ev.num_samples, sigma=ev.sigma, seed=ev.seed,
                                  threads=ev.torch_threads)
    return {**rollout.summary(), "episode_success": rollout.episode_success}


def evaluate_variants(directory: Path, spec: dict[str, Any], config: RunConfig,
                      stage_results: dict[str, Any]) -> dict[str, Any]:
    """The RL method's evaluation variants (``spec["variants"]``), each on the fixed episodes.

    A variant the trainer already evaluated (same stage, same selection, per-episode outcomes
    recorded) is taken from its result; the others load ``policy_<stage>`` and run
    ``evaluate_policy`` with the trainer's evaluation settings. Each is saved to
    ``eval_variants/<name>.json`` as soon as it is done, so a killed worker does not redo it.
    """
    if not spec.get("variants"):
        return {}
    folder = directory / "eval_variants"
    folder.mkdir(exist_ok=True)
    out: dict[str, Any] = {}
    for index, (name, (stage, selection)) in enumerate(spec["variants"].items()):
        path = folder / f"{name}.json"
        if path.exists():
            done = json.loads(path.read_text(encoding="utf-8"))
            if (done["stage"], done["selection"]) == (stage, selection):
                out[name] = done
                continue
        trained = stage_results.get(stage) or {}
        if trained.get("selection") == selection and trained.get("episode_success") is not None:
            result = {key: trained[key] for key in ("success_rate", "subtask_success_rates", "mean_return",
                                                    "num_episodes", "episode_success")}
            source = f"trainer evaluation after {stage}"
        else:
            # Its own sampling noise, the same on every rerun of this (run, variant).
            result = evaluate_exported_policy(directory / f"policy_{stage}", config, selection,
                                              noise_seed=[config.seed, 14, index])
            result.pop("mean_length", None)
            source = f"policy_{stage} evaluated after training"
        out[name] = {"stage": stage, "selection": selection, "source": source, **result}
        _write_json(path, out[name])
    return out


def worker(directory: Path) -> int:
    """One run (in its own process): dataset, resumable trainer run, evaluation variants,
    ``result.json``."""
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
    t_variants = time.perf_counter()
    variants = evaluate_variants(directory, spec, config, results)
    episodes = EpisodeStore(str(directory / config.data.offline_uri), mode="r").load_arrays().episodes
    result = {
        "method": spec["method"],
        "seed": spec["seed"],
        "success": final["success_rate"],
        "subtask_success": final["subtask_success_rates"],
        "n_eval_episodes": final["num_episodes"],
        "selection": final["selection"],
        "mean_return": final["mean_return"],
        # 0/1 per fixed evaluation episode, in episode order (None: run evaluated before #14).
        "episode_success": final.get("episode_success"),
        "eval_setting": _eval_setting(config),
        "stage_success": {stage: r["success_rate"] for stage, r in results.items()},
        "stage_episode_success": {stage: r.get("episode_success") for stage, r in results.items()},
        "variants": variants,
        "stage_time_s": summary.get("stage_time_s", {}),
        "variants_time_s": time.perf_counter() - t_variants,
        "wall_s": time.perf_counter() - t0,
        "resumed": resumed,
        "offline_episodes": len(episodes),
        "offline_successful_episodes": sum(bool(m["success"]) for m in episodes),
    }
    earlier = directory / "result.json"
    if earlier.exists():  # a finished run given the evaluations planned since: keep its training times
        before = json.loads(earlier.read_text(encoding="utf-8"))
        result["stage_time_s"] = before.get("stage_time_s", {})
        result["wall_s"] = before["wall_s"] + result["wall_s"]
        result["variants_time_s"] += before.get("variants_time_s", 0.0)
    _write_json(earlier, result)
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


def _interval(values: list[float]) -> dict[str, Any] | None:
    return paired_statistics.mean_interval(values).to_dict() if values else None


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
        variants: dict[str, Any] = {}
        for vname, variant in {**VARIANTS, **IMITATION_VARIANTS}.items():
            runs = [r for r in per_seed if vname in (r.get("variants") or {})]
            if runs:
                values = [r["variants"][vname]["success_rate"] for r in runs]
                variants[vname] = {"label": variant.label, "seeds": [r["seed"] for r in runs], "success": values,
                                   "mean": float(np.mean(values)), "std": _std(values), "interval": _interval(values),
                                   "stage": runs[0]["variants"][vname]["stage"], "selection": variant.selection}
        entry: dict[str, Any] = {
            "description": method.description,
            "schedule": method.stages,
            "final_stage": method.final_stage,
            "overrides": dict(method.overrides),
            "seeds": [r["seed"] for r in per_seed],
            "success": success,
            "mean": float(np.mean(success)) if success else None,
            "std": _std(success) if success else None,
            "interval": _interval(success),
            "variants": variants,
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


def episode_outcomes(entry: dict[str, Any], variant: str | None = None) -> tuple[dict[int, list[int]], Any]:
    """``({seed: per-episode 0/1}, eval setting)`` of a method's result or of one of its variants;
    seeds without recorded outcomes are left out. ValueError if the seeds were evaluated on
    different episodes."""
    outcomes: dict[int, list[int]] = {}
    settings = []
    for r in entry["per_seed"]:
        episodes = r.get("episode_success") if variant is None else (r.get("variants") or {}).get(variant, {}).get(
            "episode_success")
        if episodes is not None:
            outcomes[int(r["seed"])] = list(episodes)
            settings.append(r.get("eval_setting"))
    if any(x != settings[0] for x in settings):
        raise ValueError("runs evaluated on different episodes (trainer.eval or env settings differ)")
    return outcomes, settings[0] if settings else None


def comparison_plan(methods: dict[str, Any]) -> list[tuple[tuple[str, str | None], tuple[str, str | None]]]:
    """The paired comparisons reported: every method vs ``nf_il`` (their results), the
    flow-matching baseline vs ``nf_il`` acting by one sample as it does, SERNF full vs offline,
    vs each ablation (the paper's ordering claim) and vs ``nf_il_more_demos`` (online RL against
    the same episodes spent on demonstrations), and each RL method's best-of-N after RL
    vs its own IL policy (same runs); for SERNF full also the actor alone after RL and IL +
    warmed-up critic vs its IL policy."""
    pairs: list[tuple[tuple[str, str | None], tuple[str, str | None]]] = []
    if "nf_il" in methods:
        pairs += [((name, None), ("nf_il", None)) for name in methods if name != "nf_il"]
        if "fm_il" in methods and "il_one_sample" in methods["nf_il"]["variants"]:
            pairs.append((("fm_il", None), ("nf_il", "il_one_sample")))
    if "sernf_full" in methods:
        pairs += [(("sernf_full", None), (name, None)) for name in methods
                  if name in ("sernf_offline", "nf_il_more_demos") or name.startswith("ablation_")]
    for name, m in methods.items():
        if "rl_best_of_n" in m["variants"] and "il_most_likely" in m["variants"]:
            pairs.append(((name, "rl_best_of_n"), (name, "il_most_likely")))
            if name == "sernf_full":
                pairs += [((name, v), (name, "il_most_likely")) for v in ("rl_actor_most_likely", "il_critic_best_of_n")
                          if v in m["variants"]]
    return pairs


def _side_name(side: tuple[str, str | None]) -> str:
    return side[0] if side[1] is None else f"{side[0]}:{side[1]}"


def paired_comparisons(methods: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`comparison_plan`'s pairs with their statistics (``paired_statistics.compare_paired``);
    a pair that cannot be computed carries the reason in ``"error"``."""
    rows = []
    for a, b in comparison_plan(methods):
        row: dict[str, Any] = {"a": _side_name(a), "b": _side_name(b)}
        try:
            out_a, setting_a = episode_outcomes(methods[a[0]], a[1])
            out_b, setting_b = episode_outcomes(methods[b[0]], b[1])
            if setting_a != setting_b:
                raise ValueError("the two methods were evaluated on different episodes")
            row.update(paired_statistics.compare_paired(out_a, out_b))
        except ValueError as exc:
            row["error"] = str(exc)
        rows.append(row)
    return rows


def _fmt_interval(interval: dict[str, Any] | None) -> str:
    if interval is None:
        return ""
    if interval["low"] is None:
        return f"{interval['mean']:.3f}"
    return f"{interval['mean']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def markdown_table(methods: dict[str, Any]) -> str:
    rows = ["| method | stages | success (mean ± std) | per seed | 95 % CI (t over seeds) | subtasks | eval episodes "
            "| offline episodes (successful) | wall time / run |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, m in methods.items():
        if not m["success"]:
            rows.append(f"| {name} | {' → '.join(m['schedule'])} | (no finished run) | | | | | | |")
            continue
        seeds = ", ".join(f"{s:.3f}" for s in m["success"])
        interval = m["interval"]
        ci = f"[{interval['low']:.3f}, {interval['high']:.3f}]" if interval["low"] is not None else "(one seed)"
        subtasks = ", ".join(f"{k} {v:.3f}" for k, v in m["subtask_mean"].items())
        episodes = "/".join(str(n) for n in sorted(set(m["n_eval_episodes"])))
        offline = "/".join(f"{e} ({s})" for e, s in sorted(set(zip(m["offline_episodes"],
                                                                    m["offline_successful_episodes"], strict=True))))
        rows.append(f"| {name} | {' → '.join(m['schedule'])} | {m['mean']:.3f} ± {m['std']:.3f} | {seeds} | {ci} | "
                    f"{subtasks} | {episodes} | {offline} | {m['wall_s_mean']:.0f} s |")
    return "\n".join(rows)


def variants_table(methods: dict[str, Any]) -> str:
    """The RL methods' four evaluations: mean over seeds [95 % t interval]; empty without any."""
    with_variants = {n: m for n, m in methods.items() if _is_rl(m)}
    if not with_variants:
        return ""
    rows = ["| method | " + " | ".join(v.label for v in VARIANTS.values()) + " |",
            "|---|" + "---|" * len(VARIANTS)]
    for name, m in with_variants.items():
        cells = [_fmt_interval(m["variants"][v]["interval"]) if v in m["variants"] else "" for v in VARIANTS]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _is_rl(entry: dict[str, Any]) -> bool:
    return any(v in entry["variants"] for v in VARIANTS)


def imitation_variants_table(methods: dict[str, Any]) -> str:
    """Imitation-only flows by their score (most likely of N) and by one sample; empty without any."""
    rows = [f"| {name} | {_fmt_interval(m['interval'])} | {_fmt_interval(m['variants']['il_one_sample']['interval'])} |"
            for name, m in methods.items() if "il_one_sample" in m["variants"] and m["success"]]
    if not rows:
        return ""
    return "\n".join(["| method | most likely of N (its score) | one sample |", "|---|---|---|", *rows])


def comparisons_table(comparisons: list[dict[str, Any]]) -> str:
    rows = ["| A vs B | seeds | A − B (mean over seeds) | 95 % CI (paired bootstrap over seeds) | A − B per seed (± SE) "
            "| episodes A only / B only | McNemar exact p |",
            "|---|---|---|---|---|---|---|"]
    for c in comparisons:
        if "error" in c:
            rows.append(f"| {c['a']} vs {c['b']} | | ({c['error']}) | | | | |")
            continue
        d, mc = c["difference"], c["mcnemar"]
        ci = f"[{d['low']:+.3f}, {d['high']:+.3f}]" if d["low"] is not None else "(one seed)"
        per_seed = ", ".join(f"{s['difference']:+.3f} ± {s['se']:.3f}" for s in c["per_seed"])
        rows.append(f"| {c['a']} vs {c['b']} | {len(c['seeds'])} | {d['mean']:+.3f} | {ci} | {per_seed} | "
                    f"{mc['a_only']} / {mc['b_only']} | {mc['p_value']:.2g} |")
    return "\n".join(rows)


def _ci_errors(entries: list[dict[str, Any] | None]) -> np.ndarray:
    """Matplotlib's asymmetric ``yerr`` ``[2, n]`` from intervals (0 where undefined)."""
    err = np.zeros((2, len(entries)))
    for i, interval in enumerate(entries):
        if interval is not None and interval["low"] is not None:
            err[:, i] = [interval["mean"] - interval["low"], interval["high"] - interval["mean"]]
    return err


def _fit_title(title: str, panel_inches: float) -> str:
    """The title wrapped to its panel's width (about 11 characters per inch at this size): with
    one or two methods the panels are narrow and the two titles would run into each other."""
    return textwrap.fill(title, max(24, int(panel_inches * 11)))


def plot(methods: dict[str, Any], path: Path, title: str) -> None:
    """Left: each method's success, mean over seeds with its 95 % t interval, seeds as dots.
    Right (when there are RL methods): their four evaluation variants, likewise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(methods)
    rl = [n for n in names if _is_rl(methods[n])]
    widths = [1.3 * len(names) + 1.5] + ([1.6 * len(rl) + 2.0] if rl else [])
    fig, axes = plt.subplots(1, len(widths), figsize=(sum(widths) + 1.0, 5.0), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    ax = axes[0][0]
    x = np.arange(len(names))
    means = [methods[n]["mean"] if methods[n]["mean"] is not None else 0.0 for n in names]
    err = _ci_errors([methods[n]["interval"] for n in names])
    ax.bar(x, means, yerr=err, capsize=6, color="#8fb3d9", edgecolor="#2f5d8a", zorder=1,
           error_kw={"elinewidth": 1.5, "ecolor": "#1b3550"})
    rng = np.random.default_rng(0)  # fixed jitter: the same plot every time
    for i, name in enumerate(names):
        ys = methods[name]["success"]
        if ys:
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(ys)), ys, color="black", s=18, zorder=3,
                       label="seeds" if i == 0 else None)
            ax.annotate(f"{methods[name]['mean']:.2f}", (i, min(means[i] + err[1, i], 1.0)),
                        textcoords="offset points", xytext=(0, 6), ha="center", fontsize=9)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylim(0.0, 1.08)
    ax.set_ylabel("success rate (mean over seeds, 95 % t interval)")
    ax.set_title(_fit_title(title, widths[0]), fontsize=10)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    if any(methods[n]["success"] for n in names):
        ax.legend(loc="upper left", fontsize=8)
    if rl:
        ax = axes[0][1]
        colors = ["#c9d9a3", "#f2c48d", "#b7a6d9", "#8fb3d9"]
        width = 0.8 / len(VARIANTS)
        for k, (vname, variant) in enumerate(VARIANTS.items()):
            entries = [methods[n]["variants"].get(vname) for n in rl]
            xs = np.arange(len(rl)) + (k - (len(VARIANTS) - 1) / 2) * width
            ax.bar(xs, [e["mean"] if e else 0.0 for e in entries], width,
                   yerr=_ci_errors([e["interval"] if e else None for e in entries]), capsize=3,
                   color=colors[k % len(colors)], edgecolor="#444444", label=variant.label, zorder=1)
        ax.set_xticks(np.arange(len(rl)), rl, rotation=20, ha="right")
        ax.set_ylim(0.0, 1.08)
        ax.set_title(_fit_title("RL methods: four evaluations on the same episodes", widths[1]), fontsize=10)
        ax.grid(axis="y", alpha=0.3, zorder=0)
        ax.legend(loc="upper left", fontsize=7)
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
        description="Learning benchmark (point or hand task): methods x seeds of resumable trainer runs, "
                    "paired on fixed evaluation episodes.",
        epilog="methods: " + "; ".join(f"{k}: {m.description}" for k, m in METHODS.items()),
    )
    parser.add_argument("--config", default=str(_ROOT / "config" / "point_full.yaml"),
                        help="base run config (config/point_full.yaml or config/bench_hand.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help=f"seeds (default {' '.join(map(str, DEFAULT_SEEDS))}; "
                             f"{' '.join(map(str, QUICK_SEEDS))} with --quick)")
    parser.add_argument("--methods", nargs="+", default=["all"], help=f"'all' or some of {list(METHODS)}")
    parser.add_argument("--out", default=None,
                        help="output directory (default results/bench_learning/<point|hand>, "
                             "results/bench_learning_quick/<point|hand> with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test of the protocol: 2 seeds, tiny budgets, 20 evaluation episodes")
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
    seeds = args.seeds if args.seeds is not None else (QUICK_SEEDS if args.quick else DEFAULT_SEEDS)
    if args.jobs < 1 or args.threads < 1 or len(set(seeds)) != len(seeds):
        print("bench/learning.py: --jobs and --threads must be >= 1 and --seeds distinct", file=sys.stderr)
        return 2
    pending = []
    try:
        base, hand_demos = load_bench_config(args.config, args.overrides, quick=args.quick)
        task_dir = TASK_DIRS.get(base.env.task, base.env.task)
        out = Path(args.out) if args.out else _ROOT / "results" / (
            "bench_learning_quick" if args.quick else "bench_learning") / task_dir
        out.mkdir(parents=True, exist_ok=True)
        for name in names:
            for seed in seeds:
                spec = run_spec(base, name, seed, args.threads, args.vary_demo_seed, hand_demos)
                if not prepare_run(run_dir(out, name, seed), spec):
                    pending.append((name, seed))
    except BenchError as exc:
        print(f"bench/learning.py: {exc}", file=sys.stderr)
        return 2
    # SIGTERM (e.g. `kill PID`) stops like Ctrl-C: the running workers are terminated too.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    total = len(names) * len(seeds)
    runner = _Runner(out, args.jobs, args.threads, len(pending))
    runner.log(f"{total} runs ({len(names)} methods x {len(seeds)} seeds) of the {base.env.task} task, "
               f"{total - len(pending)} already done, {len(pending)} to run, {args.jobs} at a time with "
               f"{args.threads} thread(s) each; out {out}")
    if pending and not args.report_only:
        try:
            runner.run_all(pending)
        except KeyboardInterrupt:
            return 130

    methods, missing = aggregate(out, names, seeds)
    comparisons = paired_comparisons(methods)
    n_eval = base.trainer.eval.episodes
    report = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "config_path": str(args.config),
        "overrides": {k: v for k, v in args.overrides},
        "quick": bool(args.quick),
        "config": base.to_dict(),
        "hand_demos": dataclasses.asdict(hand_demos) if hand_demos is not None else None,
        "seeds": list(seeds),
        "methods_run": names,
        "jobs": args.jobs,
        "threads": args.threads,
        "vary_demo_seed": bool(args.vary_demo_seed),
        "extra_demos": extra_demo_count(base),
        "metric": f"success rate over {n_eval} fixed-seed evaluation episodes (the same for every method, seed "
                  "and stage) after each method's last stage; std = sample standard deviation over seeds "
                  "(ddof 1); interval = 95 % Student t interval over seeds",
        "comparisons_method": "paired over the fixed episodes: difference = mean over common seeds of the per-seed "
                              "success difference A - B, 95 % percentile bootstrap over seeds; McNemar = exact "
                              "two-sided binomial test on the discordant (seed, episode) pairs pooled over seeds; "
                              "per-seed SE = std(a - b, ddof 1) / sqrt(episodes)",
        "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
        "missing": missing,
        "results": methods,
        "comparisons": comparisons,
    }
    _write_json(out / "learning.json", report)
    done = sum(len(m["success"]) for m in methods.values())
    plot(methods, out / "learning.png",
         f"{task_dir} task{' (--quick)' if args.quick else ''}, {n_eval} eval episodes per run: "
         f"mean [95 % CI] over seeds {', '.join(map(str, seeds))}")
    runner.log(f"wrote {out / 'learning.json'} and {out / 'learning.png'} ({done}/{total} runs)")
    print()
    print(markdown_table(methods))
    table = variants_table(methods)
    if table:
        print("\nEvaluation variants of the RL methods (mean over seeds [95 % t interval]):\n")
        print(table)
    table = imitation_variants_table(methods)
    if table:
        print("\nImitation-only flows acting by one sample, as the flow-matching baseline does "
              "(mean over seeds [95 % t interval]):\n")
        print(table)
    if comparisons:
        print("\nPaired comparisons (same seeds, same evaluation episodes):\n")
        print(comparisons_table(comparisons))
    if missing:
        print(f"\nmissing runs: {', '.join(missing)}")
    return 1 if (runner.failed or (missing and not args.report_only)) else 0


if __name__ == "__main__":
    raise SystemExit(main())
