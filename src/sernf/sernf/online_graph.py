"""Stage IV through the ROS graph, the pure part: its settings, its parameter file, its environment.

`python -m sernf.demo` runs the online stage through the very graph that `ros2 launch sernf
sim.launch.py` starts (`sernf.graph.sim_graph`, `config/sim.yaml`), with the run's paths and
budgets written into a copy of the parameter file (:func:`write_graph_parameters`). The
processes and the observer node that drives them live in :mod:`sernf.ros.online_graph`
(docs/design.md §2: ROS stays in the thin shell).
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sernf.graph import SOURCE_CONFIG_DIR

#: Subtasks of the hand task, in order (the policy records them, the announcement carries them).
SUBTASKS = ("grasp", "place")


@dataclass(frozen=True)
class GraphIteration:
    """One online iteration as seen on the topics."""

    iteration: int
    """1-based iteration index (continues across a resumed run)."""
    episodes: list[dict[str, Any]]
    """The K episodes collected: id, steps, return, subtask flags, success (= last subtask)."""
    checkpoint_uri: str
    """Policy directory of the checkpoint the learner announced after training on them."""
    checkpoint_step: int
    """Its update count (the policy node reported running it)."""
    wall_time_s: float
    """Collection + training time of the iteration."""

    @property
    def success(self) -> float:
        return sum(e["success"] for e in self.episodes) / max(len(self.episodes), 1)


@dataclass(frozen=True)
class GraphStageConfig:
    """What the online graph needs from the demo run (everything else: config/sim.yaml)."""

    run_dir: Path
    """Folder of the graph's files: config/, logs/, replay/ (the policy's store), learner/."""
    run_config: Path
    """RunConfig YAML for the learner (γ, online_rl losses and learning rates, model)."""
    initial_checkpoint: Path
    """Offline RL's policy directory (with critic): the learner starts from it and announces it."""
    offline_store: Path
    """The demonstrations, mixed into every learner batch."""
    episodes_per_iteration: int
    """K rollouts per iteration."""
    updates_per_iteration: int
    """U learner updates per iteration."""
    batch_size: int
    """Learner batch size."""
    rho: float
    """Fraction of offline samples per batch."""
    num_samples: int
    """N: best-of-N candidates per decision while collecting."""
    sigma_sample: float
    """σ_sample while collecting (exploration)."""
    max_steps: int
    """Episode time limit (control steps), the task's."""
    speed: float = 1.0
    """Simulated robot speed (x real time). The simulator publishes /clock and the policy runs on
    it (config/sim.yaml), so episodes keep the task's control rate at any speed; the policy's
    inference must keep up with the faster ticks (real-time chunking reports overruns)."""
    learner_threads: int = 1
    """Torch threads of the learner (the graph is idle while it trains)."""
    seed: int = 0
    """Seed of the simulator's random layouts (continues across episodes)."""
    episode_timeout_s: float = 120.0
    """Longest wait (wall clock) for one episode to end."""
    training_timeout_s: float = 1800.0
    """Longest wait for the learner's checkpoint after an iteration's last episode."""
    policy_parameters: dict[str, Any] = field(default_factory=dict)
    """Policy node parameters set over config/sim.yaml's and the run's own (e.g. a longer
    ``stale_after_s`` on a slow machine); the run's paths (checkpoint, replay store, checkpoint
    roots) cannot be overridden."""

    def __post_init__(self) -> None:
        for name in ("episodes_per_iteration", "updates_per_iteration", "batch_size", "num_samples",
                     "max_steps", "learner_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GraphStageConfig.{name} must be an int >= 1, got {value!r}")
        if not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"GraphStageConfig.rho must be in [0, 1], got {self.rho}")
        if not (math.isfinite(self.speed) and self.speed > 0.0):
            raise ValueError(f"GraphStageConfig.speed must be > 0, got {self.speed}")
        if not self.sigma_sample > 0.0:
            raise ValueError(f"GraphStageConfig.sigma_sample must be > 0, got {self.sigma_sample}")
        for name in ("run_config", "initial_checkpoint", "offline_store"):
            if not Path(getattr(self, name)).exists():
                raise FileNotFoundError(f"GraphStageConfig.{name}: {getattr(self, name)} does not exist")
        check_policy_parameters(self.policy_parameters)


_RUN_OWNED_POLICY_PARAMETERS = ("checkpoint", "replay_uri", "checkpoint_roots", "use_sim_time")


def check_policy_parameters(overrides: dict[str, Any]) -> None:
    """Refuse overrides the policy node does not declare or that the online stage owns (the
    node itself validates the values when it starts)."""
    if not isinstance(overrides, dict):
        raise ValueError(f"policy node parameters must be a mapping, got {overrides!r}")
    if not overrides:
        return  # without overrides the policy node's module (rclpy) is not needed here
    from dataclasses import fields

    from sernf_policy.policy_node import PolicyNodeConfig

    declared = {f.name for f in fields(PolicyNodeConfig)}
    unknown = sorted(set(overrides) - declared)
    if unknown:
        raise ValueError(f"policy node parameters {unknown} are not declared by the policy node")
    owned = sorted(set(overrides) & set(_RUN_OWNED_POLICY_PARAMETERS))
    if owned:
        raise ValueError(f"policy node parameters {owned} are set by the online stage itself")


def write_graph_parameters(config: GraphStageConfig) -> Path:
    """config/sim.yaml with this run's paths and budgets (same nodes, same parameter names);
    returns the folder it is written to."""
    params = yaml.safe_load((SOURCE_CONFIG_DIR / "sim.yaml").read_text(encoding="utf-8"))
    sim, policy, learner = (params[n]["ros__parameters"] for n in ("sim_robot", "policy", "learner"))
    run = config.run_dir.resolve()
    # The simulator is the time source (publish_clock) and the policy runs on simulated time
    # (use_sim_time), as config/sim.yaml has it: required for speed > 1.
    sim.update(max_steps=config.max_steps, auto_reset=False, seed=config.seed, speed=float(config.speed),
               reset_config=-1, publish_clock=True)
    policy["use_sim_time"] = True
    # Three nodes, the learner's training and this process share 2 cores: a scheduler stall of a
    # few hundred ms must not end an episode as a sensor failure (the robot default is 0.2 s).
    policy["stale_after_s"] = max(float(policy.get("stale_after_s", 0.2)), 0.5)
    policy.update(checkpoint="", replay_uri=str(run / "replay" / "online.zarr"), num_samples=config.num_samples,
                  sigma_sample=float(config.sigma_sample), selection="best_of_n",
                  max_episode_steps=config.max_steps + 20,
                  # Announced checkpoints are loaded only from these (the learner's own and the start).
                  checkpoint_roots=[str(run / "learner"), str(Path(config.initial_checkpoint).resolve().parent)])
    policy.update(config.policy_parameters)
    learner.update(
        output_dir=str(run / "learner"), initial_checkpoint=str(Path(config.initial_checkpoint).resolve()),
        offline_store_uri=str(Path(config.offline_store).resolve()), replay_root=str(run / "replay"),
        run_config=str(Path(config.run_config).resolve()), episodes_per_update=config.episodes_per_iteration,
        updates_per_round=config.updates_per_iteration, batch_size=config.batch_size, rho=float(config.rho),
        torch_num_threads=config.learner_threads, announce_initial_checkpoint=True,
        watch_stores=[str(run / "replay" / "online.zarr")])
    config_dir = run / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    tmp = config_dir / ".sim.yaml.tmp"
    tmp.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    os.replace(tmp, config_dir / "sim.yaml")
    return config_dir


def isolated_ros_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the graph: its own DDS domain (unless the caller chose one) and discovery
    on this machine only, so a demo never talks to (or hears) a robot or another run."""
    env = dict(os.environ if base is None else base)
    env.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    return env
