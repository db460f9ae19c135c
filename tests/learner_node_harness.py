"""Test-side peer of learner_node: writes actor episodes, announces them, records what the
learner publishes (checkpoints, diagnostics). Used by tests/test_learner_node.py.

Data: the point task (sernf_sim) — a 6-d state, 2-d action, T=2, P=2, H=8 — with a tiny
Policy (K=2 coupling layers, width 32, critic d_model 32) and a small offline store of
mixed-quality scripted demos.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from sernf_interfaces.msg import CheckpointAvailable, ReplayEpisode

INITIAL_STEP = 100


def point_spec() -> Any:
    from sernf_data.store import StoreSpec
    from sernf_sim.point_task import PointTask

    env = PointTask(num_envs=1, seed=0)
    obs = {k: {"shape": list(v.shape), "kind": v.kind} for k, v in env.observation_spec.items()}
    return StoreSpec(obs=obs, action_dim=env.action_dim, control_rate_hz=env.control_hz)


def point_episodes(n: int, seed: int, source: str, prefix: str) -> list[tuple[dict, dict]]:
    """``n`` mixed-quality point-task episodes with ids ``<prefix><i>``."""
    from sernf_sim.datasets import mixed_point_dataset
    from sernf_sim.point_task import POINT_TIMING

    episodes = mixed_point_dataset(n=n, seed=seed, T=POINT_TIMING.T, P=POINT_TIMING.P, H=POINT_TIMING.H, num_envs=4)
    out = []
    for i, (steps, meta) in enumerate(episodes):
        meta = dict(meta, id=f"{prefix}{i}", source=source)
        out.append((steps, meta))
    return out


def make_store(uri: str | Path, episodes: list[tuple[dict, dict]], spec: Any = None) -> Any:
    from sernf_data.store import EpisodeStore

    store = EpisodeStore(str(uri), mode="a", spec=spec or point_spec())
    for steps, meta in episodes:
        store.append_episode(steps, meta)
    return store


def tiny_policy(spec: Any, offline_store: Any, critic: bool = True, seed: int = 0) -> Any:
    """A small random Policy with (or without) critic, normalisers fitted on the offline store."""
    import torch

    from sernf_policy.encoders import EncoderConfig
    from sernf_policy.policy import Policy, PolicyConfig
    from sernf_sim.point_task import POINT_TIMING

    torch.manual_seed(seed)
    config = PolicyConfig.create(
        {k: {"kind": v.kind, "shape": list(v.shape)} for k, v in spec.obs.items()},
        action_dim=spec.action_dim, obs_history=POINT_TIMING.T, prefix_len=POINT_TIMING.P, horizon=POINT_TIMING.H,
        encoder=EncoderConfig(token_dim=32),
        flow=dict(num_layers=2, hidden_dim=32, num_heads=2, seed=seed),
        critic=dict(d_model=32, num_heads=2, num_layers=1, ff_dim=32, num_bins=11) if critic else False,
        num_samples=4,
    )
    policy = Policy(config)
    snap = offline_store.load_arrays()
    policy.fit_normalizers(snap.arrays["action"], {k: snap.arrays[k] for k in spec.obs})
    return policy


RUN_CONFIG = {
    "seed": 0,
    "data": {"gamma": 0.99},
    "trainer": {"tensorboard": False, "progress": False},
    "online_rl": {"batch_size": 16, "rho": 0.5},
}


def node_params(output_dir: Path, initial: Path, offline: Path, replay_root: Path, run_config: Path,
                /, **overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "output_dir": str(output_dir),
        "initial_checkpoint": str(initial),
        "offline_store_uri": str(offline),
        "replay_root": str(replay_root),
        "run_config": str(run_config),  # overridable through **overrides
        "episodes_per_update": 2,
        "updates_per_round": 40,
        "batch_size": 16,
        "rho": 0.5,
        "announce_initial_checkpoint": True,
        "diagnostics_period_s": 0.25,
        "torch_num_threads": 1,
    }
    params.update(overrides)
    return params


def write_params(path: Path, params: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"learner": {"ros__parameters": params}}))
    return path


class Received:
    """Messages with their arrival times (thread-safe)."""

    def __init__(self) -> None:
        self.items: list[tuple[float, Any]] = []
        self.lock = threading.Lock()

    def add(self, msg: Any) -> None:
        with self.lock:
            self.items.append((time.monotonic(), msg))

    def all(self) -> list[Any]:
        with self.lock:
            return [m for _, m in self.items]


class Peer:
    """Announces episodes on /sernf/replay; records /sernf/checkpoint and the learner's diagnostics."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node("learner_node_test_peer", context=self.context)
        self.replay_pub = self.node.create_publisher(ReplayEpisode, "/sernf/replay", 10)
        self.checkpoints = Received()
        self.diagnostics = Received()
        self.node.create_subscription(CheckpointAvailable, "/sernf/checkpoint", self.checkpoints.add, 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.add, 50)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok() and not self._stop.is_set():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except rclpy.executors.ExternalShutdownException:
                return

    def announce(self, episode_id: str, uri: str, num_steps: int, source: str = "online") -> None:
        msg = ReplayEpisode()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.episode_id, msg.uri, msg.num_steps, msg.source = episode_id, uri, int(num_steps), source
        msg.episode_return = 0.0
        self.replay_pub.publish(msg)

    def announce_episode(self, store: Any, episode_id: str) -> None:
        self.announce(episode_id, store.uri, int(store.episode_metadata(episode_id)["length"]))

    def wait_subscriber(self, timeout: float = 30.0) -> None:
        """Until the learner's replay subscription is matched (announcements are volatile)."""
        self.wait_for(lambda: self.replay_pub.get_subscription_count() > 0, timeout, "the learner's subscription")

    def diag(self) -> dict[str, str]:
        """Values of the newest learner DiagnosticStatus (empty before the first)."""
        with self.diagnostics.lock:
            for _, msg in reversed(self.diagnostics.items):
                for status in msg.status:
                    if status.hardware_id == "sernf_learner":
                        return {kv.key: kv.value for kv in status.values} | {"_message": status.message}
        return {}

    def diag_int(self, key: str) -> int:
        return int(self.diag().get(key, "-1"))

    def checkpoint_steps(self) -> list[int]:
        return [int(m.step) for m in self.checkpoints.all()]

    def checkpoint_at(self, step: int) -> CheckpointAvailable | None:
        return next((m for m in self.checkpoints.all() if int(m.step) == step), None)

    @staticmethod
    def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
                 log: Callable[[], str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        details = f"\n--- learner log ---\n{log()}" if log else ""
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{details}")

    def close(self) -> None:
        # The spin thread first: destroying the node under a running spin_once raises
        # InvalidHandle in that thread.
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def assert_checkpoint_valid(msg: CheckpointAvailable, step: int, stage: str = "online_rl") -> Any:
    """The announced directory holds a loadable Policy whose weights hash to msg.sha256."""
    from sernf_policy.checkpoint import WEIGHTS_FILE, file_sha256
    from sernf_policy.policy import Policy

    assert int(msg.step) == step and msg.stage == stage, (msg.step, msg.stage)
    assert file_sha256(Path(msg.uri) / WEIGHTS_FILE) == msg.sha256
    policy = Policy.load(msg.uri)
    assert policy.critic is not None
    obs = {k: np.zeros((1, policy.config.obs_history, *v.shape), np.float32)
           for k, v in policy.config.observation_spec.items()}
    chunks, _ = policy.act_batch(obs, np.zeros((1, policy.config.prefix_len, policy.config.action_dim), np.float32),
                                 num_samples=2)
    assert np.isfinite(chunks).all()
    return policy
