"""``python -m sernf.scissors_sim_data`` (``make scissors-sim-data``): what the simulated scissors
graph (``python -m sernf.run_graph scissors sim:=true``) needs before it starts.

The graph's policy and learner load ``results/scissors_sim/train/policy_offline_rl`` and
``results/scissors_sim/train/offline_replay`` (config/robot/scissors_sim.yaml). This job

1. reads the graph's parameter files (config/robot/scissors.yaml + scissors_sim.yaml, as the
   nodes see them) for what shapes a step: the world's cameras, image size, base frame, rate
   and episode limit, the bridge's command limits and workspace, the policy's observation keys,
   topics and hand joints (:func:`graph_demo_layout`);
2. records scripted-expert demonstrations of the simulated hand task in exactly that layout
   (:mod:`sernf_sim.scissors_demos`) into ``<out>/train/offline_replay``;
3. runs Stages I-III (imitation, critic warm-up, offline RL) with the resumable trainer and a
   CPU run config (config/train_scissors_sim.yaml), evaluating after imitation and offline RL
   on the same graph-layout task; metrics go to ``<out>/train/metrics.jsonl`` (and tb/,
   summary.json) as with ``sernf-train``;
4. checks that the exported policy fits the graph (:func:`graph_fit_problems`): T, P, H, A, the
   observation keys, kinds and image shape the policy node and the world provide, and the
   learner's spec check against the store.

A killed run continues with ``--resume`` (same ``--out``): a complete dataset is reused and the
trainer resumes from its last checkpoint.
"""

from __future__ import annotations

import os

# Before torch is imported (see sernf.demo): idle OpenMP threads must not spin on a shared CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from sernf.graph import SOURCE_CONFIG_DIR, node_parameters, scissors_graph  # noqa: E402
from sernf_sim.scissors_demos import (  # noqa: E402
    GraphDemoLayout,
    GraphLayoutEnv,
    RecordingConfig,
    record_graph_demos,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG = REPO_ROOT / "config" / "train_scissors_sim.yaml"
#: The scissors chunk timing (appendix G) and action size (7 arm + 17 ORCA joints).
SCISSORS_TIMING = (1, 3, 10)
SCISSORS_ACTION_DIM = 24


# ------------------------------------------------------------------------- the graph's layout


def graph_parameters(config_dir: Path = SOURCE_CONFIG_DIR, params_file: str = "") -> dict[str, dict[str, Any]]:
    """Every node's parameters in the simulated scissors graph (rollout, local learner), as the
    nodes start with them (the shipped files, then ``params_file``)."""
    specs = scissors_graph(mode="rollout", learner="local", sim=True, params_file=params_file or None)
    return {spec.name: node_parameters(spec, config_dir) for spec in specs}


def _with_defaults(cls: type, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` over the field defaults of config dataclass ``cls`` (the values a node
    declares for parameters the files leave out)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in params:
            values[f.name] = params[f.name]
        elif f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return values


def graph_demo_layout(params: Mapping[str, Mapping[str, Any]]) -> GraphDemoLayout:
    """The recorded step's layout from the graph's parameters (see the module docstring);
    ValueError naming the parameter when the graph cannot be recorded this way."""
    from franka_bridge.config import FrankaBridgeConfig
    from sernf_sim.sim_world import SimWorldConfig

    world = _with_defaults(SimWorldConfig, params["sim_world"])
    bridge = _with_defaults(FrankaBridgeConfig, params["franka_bridge"])
    policy = params["policy"]
    try:
        keys, types, topics = (list(policy[k]) for k in ("observation_keys", "observation_types", "observation_topics"))
        joint_names = tuple(policy["hand_joint_names"])
    except KeyError as exc:
        raise ValueError(f"policy.{exc.args[0]} is not set in the graph's parameter files") from exc
    if not len(keys) == len(types) == len(topics):
        raise ValueError("policy.observation_keys, observation_types and observation_topics differ in length")
    prefix = str(world["camera_topic_prefix"]).rstrip("/")
    camera_of_topic = {f"{prefix}/{name}/image_raw": source
                       for name, source in zip(world["cameras"], world["camera_sources"], strict=True)}
    image_keys, sources, joint_keys, pose_keys = [], [], [], []
    for key, kind, topic in zip(keys, types, topics, strict=True):
        if kind == "image":
            if topic not in camera_of_topic:
                raise ValueError(f"policy observation {key!r} reads {topic}, which sim_world does not publish "
                                 f"(it publishes {sorted(camera_of_topic)})")
            image_keys.append(key)
            sources.append(camera_of_topic[topic])
        elif kind == "joint_state":
            joint_keys.append(key)
        elif kind == "pose":
            pose_keys.append(key)
        else:
            raise ValueError(f"policy observation {key!r} of type {kind!r}: the simulated demonstrations "
                             "record images, one joint_state and one pose")
    if len(joint_keys) != 1 or len(pose_keys) != 1:
        raise ValueError(f"the policy must read one joint_state and one pose observation, got {joint_keys} "
                         f"and {pose_keys}")
    rate = float(policy.get("control_rate_hz", 10.0))
    if rate != float(world["control_rate_hz"]):
        raise ValueError(f"policy.control_rate_hz {rate:g} differs from sim_world.control_rate_hz "
                         f"{float(world['control_rate_hz']):g}")
    return GraphDemoLayout(
        image_keys=tuple(image_keys), camera_sources=tuple(sources), image_size=int(world["image_size"]),
        joint_key=joint_keys[0], pose_key=pose_keys[0], hand_joint_names=joint_names,
        base_in_world=tuple(float(v) for v in world["base_in_world"]), control_rate_hz=rate,
        max_steps=int(world["max_steps"]), variant=str(world["variant"]),
        max_translation_m=float(bridge["max_translation_m"]), max_rotation_rad=float(bridge["max_rotation_rad"]),
        workspace_low=tuple(float(v) for v in bridge["workspace_low"]),
        workspace_high=tuple(float(v) for v in bridge["workspace_high"]),
    )


def graph_fit_problems(policy_dir: str | os.PathLike[str], store_uri: str | os.PathLike[str],
                       params: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Why the policy at ``policy_dir`` and the store at ``store_uri`` would not run in the graph
    of ``params`` (empty: they fit): the scissors T, P, H and A, the observation keys and kinds
    the policy node reads (its observation_keys/types, 17 hand joints, 7-d poses), the image
    shape the world renders, and the learner's own check of the policy against the store."""
    from sernf_data.store import EpisodeStore
    from sernf_learner.learner_node import policy_spec
    from sernf_learner.replay_ingest import spec_mismatch
    from sernf_policy.policy import Policy

    policy = Policy.load(policy_dir)  # verified as the policy node and the learner load it
    config = policy.config
    problems = []
    timing = (config.obs_history, config.prefix_len, config.horizon)
    if timing != SCISSORS_TIMING:
        problems.append(f"(T, P, H) = {timing}, the scissors policy's are {SCISSORS_TIMING}")
    if config.action_dim != SCISSORS_ACTION_DIM:
        problems.append(f"action dim {config.action_dim}, the scissors graph executes {SCISSORS_ACTION_DIM}")
    node, world = params["policy"], params["sim_world"]
    kinds = {"image": "rgb", "joint_state": "lowdim", "pose": "lowdim"}
    declared = dict(zip(node["observation_keys"], node["observation_types"], strict=True))
    size = int(world["image_size"])
    for key, spec in config.observation_spec.items():
        kind = declared.get(key)
        if kind is None:
            problems.append(f"observation {key!r} is not one of the policy node's observation_keys")
            continue
        if kinds.get(kind) != spec.kind:
            problems.append(f"observation {key!r} is {spec.kind}, the node reads it as {kind}")
        expected = {"image": (size, size, 3), "joint_state": (len(node["hand_joint_names"]),), "pose": (7,)}[kind]
        if tuple(spec.shape) != expected:
            problems.append(f"observation {key!r} has shape {list(spec.shape)}, the graph provides {list(expected)}")
    unread = sorted(set(declared) - set(config.observation_spec))
    if unread:
        problems.append(f"the policy node reads {unread}, which the policy does not take")
    store = EpisodeStore(str(store_uri), mode="r")
    mismatch = spec_mismatch(policy_spec(policy, store.spec.control_rate_hz), store.spec)
    if mismatch:
        problems.append(f"learner: policy vs offline store: {mismatch}")
    rate = float(node.get("control_rate_hz", 10.0))
    if store.spec.control_rate_hz != rate:
        problems.append(f"the store is recorded at {store.spec.control_rate_hz:g} Hz, the policy runs at {rate:g} Hz")
    return problems


# ----------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sernf.scissors_sim_data",
        description="Record scripted demonstrations of the simulated hand task in the scissors graph's layout "
                    "and train the CPU-sized offline checkpoint that `python -m sernf.run_graph scissors "
                    "sim:=true` loads (Stages I-III).")
    parser.add_argument("--out", default="results/scissors_sim",
                        help="output folder; the graph expects results/scissors_sim (default: %(default)s)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="RunConfig YAML of the offline stages (default: %(default)s)")
    parser.add_argument("--config-dir", type=Path, default=SOURCE_CONFIG_DIR,
                        help="folder of the graph's parameter files (default: the workspace config/)")
    parser.add_argument("--params-file", default="",
                        help="the params_file you will start the graph with (its values shape the recording)")
    parser.add_argument("--num-demos", type=int, default=100, help="demonstrations to record (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="layout and expert seed (default: %(default)s)")
    parser.add_argument("--expert-quality", type=float, default=None,
                        help="scripted-expert quality in [0, 1]; default: the task's demonstration quality "
                             "(successes and failures, like the paper's teleoperated data)")
    parser.add_argument("--num-envs", type=int, default=10, help="envs recorded in parallel (default: %(default)s)")
    parser.add_argument("--eval-episodes", type=int, default=10,
                        help="evaluation episodes after imitation and after offline RL, on the graph-layout "
                             "task; 0: none (default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a run-config value, e.g. --set il.steps=50 (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return parser


def _parse_sets(items: Sequence[str]) -> dict[str, Any]:
    import yaml

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sernf_learner.configs import load_config

    try:
        run = load_config(args.config, _parse_sets(args.set))
        params = graph_parameters(args.config_dir, args.params_file)
        layout = graph_demo_layout(params)
        recording = RecordingConfig(num_demos=args.num_demos, seed=args.seed, expert_quality=args.expert_quality,
                                    num_envs=args.num_envs, obs_history=run.policy.obs_history,
                                    prefix_len=run.policy.prefix_len, horizon=run.policy.horizon)
        if args.eval_episodes < 0:
            raise ValueError(f"--eval-episodes must be >= 0, got {args.eval_episodes}")
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    timing = (run.policy.obs_history, run.policy.prefix_len, run.policy.horizon)
    if timing != SCISSORS_TIMING:
        print(f"error: {args.config}: (T, P, H) = {timing}; the scissors graph's policy is {SCISSORS_TIMING}",
              file=sys.stderr)
        return 2
    if "://" in run.data.offline_uri or Path(run.data.offline_uri).is_absolute():
        print("error: data.offline_uri must be a path relative to <out>/train (the graph reads it there)",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    train = out / "train"
    if not args.resume and train.exists() and any(train.iterdir()):
        print(f"error: {train} already holds a run; continue it with --resume or choose another --out",
              file=sys.stderr)
        return 2
    train.mkdir(parents=True, exist_ok=True)
    if args.no_progress:
        run.trainer.progress = False
    run.trainer.eval.episodes = int(args.eval_episodes)

    import torch

    torch.set_num_threads(args.threads or run.trainer.torch_num_threads or 2)
    t0 = time.perf_counter()
    print(f"[scissors-sim-data] {out}: views {dict(zip(layout.image_keys, layout.camera_sources, strict=True))} at "
          f"{layout.image_size}x{layout.image_size}, {layout.joint_key} (17), {layout.pose_key} (base frame), "
          f"A = 24 at {layout.control_rate_hz:g} Hz; {torch.get_num_threads()} torch threads", flush=True)
    store_uri = train / run.data.offline_uri
    recorded: dict[str, Any] = {}
    if (store_uri / "zarr.json").exists():
        print(f"[scissors-sim-data] reusing the demonstrations in {store_uri}", flush=True)
    else:
        print(f"[scissors-sim-data] recording {recording.num_demos} scripted demonstrations "
              f"({recording.num_envs} in parallel) -> {store_uri}", flush=True)
        recorded = record_graph_demos(layout, recording, store_uri, log=lambda line: print(line, flush=True))
    t_record = time.perf_counter() - t0

    from sernf_learner.trainer import Trainer

    def graph_task(num_envs: int, seed: int) -> GraphLayoutEnv:
        return GraphLayoutEnv(layout.make_task(num_envs, seed), layout)

    print(f"[scissors-sim-data] offline stages il -> critic_warmup -> offline_rl ({run.il.steps} + "
          f"{run.critic_warmup.steps} + {run.offline_rl.steps} updates) -> {train}", flush=True)
    trainer = Trainer(run, train, "offline", resume=args.resume and (train / "checkpoints").exists(),
                      env_factory=graph_task)
    summary = trainer.run()
    policy_dir = train / "policy_offline_rl"
    problems = graph_fit_problems(policy_dir, store_uri, params)
    wall = time.perf_counter() - t0
    report = {"out": str(out), "policy": str(policy_dir), "offline_store": str(store_uri),
              "recording": recorded, "recording_wall_time_s": t_record, "wall_time_s": wall,
              "stage_time_s": summary.get("stage_time_s"), "evaluation": summary.get("results", {}),
              "graph_fit_problems": problems}
    (out / "scissors_sim_data.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    for stage, result in summary.get("results", {}).items():
        grasp = result.get("subtask_success_rates", {}).get("grasp", float("nan"))
        print(f"[scissors-sim-data] after {stage}: success {result['success_rate']:.2f}, grasp {grasp:.2f} "
              f"({result['num_episodes']} episodes, {result.get('selection')})", flush=True)
    if problems:
        print("error: the checkpoint does not fit the scissors graph:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"[scissors-sim-data] done in {wall / 60:.1f} min (recording {t_record / 60:.1f} min): {policy_dir} "
          f"and {store_uri} fit the graph; start it with\n  python -m sernf.run_graph scissors sim:=true "
          "learner:=local", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
