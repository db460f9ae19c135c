"""The whole SERNF loop over real DDS: sim robot + policy + learner, in separate processes.

The graph is the one `launch/sim.launch.py` starts (sernf.graph.sim_graph, config/sim.yaml),
run by `sernf.run_graph.GraphProcesses`; only budgets and paths are changed for the test (a
tiny model, 2.5 s episodes, two episodes per learner round). Everything asserted comes from
the topics: episodes announced on /sernf/replay, checkpoints on /sernf/checkpoint, and the
policy's diagnostics showing that it reloaded them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sernf.graph import SOURCE_CONFIG_DIR, sim_graph
from sernf.run_graph import GraphProcesses
from std_srvs.srv import Trigger

from sernf_interfaces.msg import CheckpointAvailable, ReplayEpisode

pytestmark = [pytest.mark.ros, pytest.mark.slow]

T, P, H = 1, 2, 5


def _offline_store_and_policy(tmp: Path) -> tuple[Path, Path]:
    """A few hand demos in a zarr store and a tiny untrained policy with a critic."""
    import torch

    from sernf_data.store import EpisodeStore, StoreSpec
    from sernf_policy.encoders import EncoderConfig
    from sernf_policy.policy import Policy, PolicyConfig
    from sernf_sim.hand_pick_place import env as hand_env
    from sernf_sim.hand_pick_place.demos import hand_demo_dataset

    env = hand_env.make_env("nominal", num_envs=1, render_images=False)
    spec = StoreSpec(obs=env.observation_spec, action_dim=env.action_dim, control_rate_hz=env.control_hz)
    store = EpisodeStore(str(tmp / "demos.zarr"), mode="a", spec=spec)
    for steps, meta in hand_demo_dataset(n=4, seed=0, num_envs=4, T=T, P=P, H=H, max_steps=30):
        store.append_episode(steps, meta)
    torch.manual_seed(0)
    config = PolicyConfig.create(
        {k: {"kind": v.kind, "shape": list(v.shape)} for k, v in spec.obs.items()},
        action_dim=spec.action_dim, obs_history=T, prefix_len=P, horizon=H,
        encoder=EncoderConfig(token_dim=32), flow=dict(num_layers=2, hidden_dim=32, num_heads=2),
        critic=dict(d_model=32, num_heads=2, num_layers=1, ff_dim=32, num_bins=21, v_max=2.0),
        num_samples=4,
    )
    policy = Policy(config)
    arrays = store.load_arrays().arrays
    policy.fit_normalizers(arrays["action"], {k: arrays[k] for k in spec.obs})
    policy.save(tmp / "initial_policy", metadata={"step": 0})
    return tmp / "demos.zarr", tmp / "initial_policy"


def _graph_config(tmp: Path, demos: Path, initial: Path) -> Path:
    """config/sim.yaml with test budgets: same nodes and parameter names, other values."""
    params = yaml.safe_load((SOURCE_CONFIG_DIR / "sim.yaml").read_text())
    sim, policy, learner = (params[n]["ros__parameters"] for n in ("sim_robot", "policy", "learner"))
    sim.update(max_steps=25, auto_reset=True, reset_delay_s=0.2)
    policy.update(num_samples=4,
                  replay_uri=str(tmp / "replay" / "online.zarr"), max_episode_steps=40,
                  checkpoint_roots=[str(tmp)])
    run_config = tmp / "run.yaml"
    run_config.write_text(yaml.safe_dump({
        "seed": 0, "data": {"gamma": 0.99},
        "trainer": {"tensorboard": False, "progress": False},
        "online_rl": {"batch_size": 16, "rho": 0.5}}))
    learner.update(output_dir=str(tmp / "learner"), initial_checkpoint=str(initial),
                   offline_store_uri=str(demos), replay_root=str(tmp / "replay"),
                   watch_stores=[str(tmp / "replay" / "online.zarr")],
                   run_config=str(run_config), episodes_per_update=2, updates_per_round=10,
                   batch_size=16)
    config_dir = tmp / "config"
    config_dir.mkdir()
    (config_dir / "sim.yaml").write_text(yaml.safe_dump(params))
    return config_dir


class Observer:
    """The test's view of the graph: what is announced on the topics, and what the policy says."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node("sim_loop_observer", context=self.context)
        self.replays: list[ReplayEpisode] = []
        self.checkpoints: list[CheckpointAvailable] = []
        self.policy_steps: list[int] = []
        self.arm_commands: list[float] = []  # arrival times (monotonic)
        n = self.node
        n.create_subscription(ReplayEpisode, "/sernf/replay", self.replays.append, 10)
        n.create_subscription(CheckpointAvailable, "/sernf/checkpoint", self.checkpoints.append, 10)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        n.create_subscription(PoseStamped, "/franka/relative_pose_command",
                              lambda _: self.arm_commands.append(time.monotonic()), 50)
        self.reset = n.create_client(Trigger, "/sim_robot/reset")
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(n)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if "checkpoint_step" in values and "queue_depth" in values:  # the policy node's
                self.policy_steps.append(int(values["checkpoint_step"]))

    def trained_steps(self) -> list[int]:
        return sorted({c.step for c in self.checkpoints if c.step > 0})

    def spin_until(self, predicate, timeout: float, graph: GraphProcesses, tmp: Path,
                   allow_exited: tuple[str, ...] = ()) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not predicate():
            self.executor.spin_once(timeout_sec=0.1)
            died = {k: v for k, v in graph.exited().items() if k not in allow_exited}
            assert not died, f"a node died: {died}\n{_logs(tmp)}"
        return predicate()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


@pytest.fixture
def loop(ros_env, tmp_path):
    demos, initial = _offline_store_and_policy(tmp_path)
    config_dir = _graph_config(tmp_path, demos, initial)
    (tmp_path / "logs").mkdir()
    observer = Observer()
    graph = GraphProcesses(sim_graph(), config_dir, env=ros_env, log_dir=tmp_path / "logs")
    try:
        graph.start()
        # The policy gets its first model from the learner's announcement of the initial one.
        assert observer.spin_until(lambda: 0 in observer.policy_steps, 120, graph, tmp_path), _logs(tmp_path)
        assert observer.reset.wait_for_service(timeout_sec=30)
        observer.reset.call_async(Trigger.Request())  # first episode; auto_reset chains the rest
        yield observer, graph
    finally:
        graph.stop()
        observer.close()


def test_sim_policy_and_learner_complete_two_online_iterations(loop, tmp_path):
    observer, graph = loop
    # Two online iterations: 2 episodes each -> learner trains -> new checkpoint -> reload.
    assert observer.spin_until(lambda: len(observer.trained_steps()) >= 2, 120, graph, tmp_path), _logs(tmp_path)
    trained = observer.trained_steps()
    assert observer.spin_until(lambda: trained[1] in observer.policy_steps, 60, graph, tmp_path), _logs(tmp_path)
    graph.stop()

    replays, checkpoints = observer.replays, observer.checkpoints
    assert len(replays) >= 4, f"episodes announced: {[r.episode_id for r in replays]}"
    for replay in replays:
        assert replay.uri == str(tmp_path / "replay" / "online.zarr")
        assert replay.num_steps > 0 and replay.source == "online"
        assert list(replay.subtask_names) == ["grasp", "place"]
    # Episodes announced are really in the actor's store, complete, with the announced length.
    from sernf_data.store import EpisodeStore

    store = EpisodeStore(str(tmp_path / "replay" / "online.zarr"), mode="r")
    for replay in replays:
        steps, _ = store.read_episode(replay.episode_id)
        assert len(steps["action"]) == replay.num_steps
    # The latest announced checkpoint loads and matches its sha (the policy node verified it too).
    from sernf_policy.checkpoint import WEIGHTS_FILE, file_sha256
    from sernf_policy.policy import Policy

    latest = max(checkpoints, key=lambda c: c.step)
    assert file_sha256(Path(latest.uri) / WEIGHTS_FILE) == latest.sha256
    Policy.load(latest.uri)
    assert trained[1] > trained[0] > 0


def test_learner_killed_mid_training_policy_keeps_commanding_and_learner_resumes(loop, tmp_path):
    observer, graph = loop
    assert observer.spin_until(lambda: len(observer.trained_steps()) >= 1, 120, graph, tmp_path), _logs(tmp_path)
    before = observer.trained_steps()[-1]
    # Once the policy runs the learner's first trained checkpoint, kill the learner.
    assert observer.spin_until(lambda: before in observer.policy_steps, 60, graph, tmp_path), _logs(tmp_path)
    graph.kill("learner")  # SIGKILL, wherever it is (ingesting, training or idle)
    killed_at = time.monotonic()
    observer.spin_until(lambda: time.monotonic() - killed_at > 4.0, 10, graph, tmp_path, allow_exited=("learner",))
    # The policy went on commanding the robot on its last good checkpoint.
    after_kill = [t for t in observer.arm_commands if t > killed_at]
    # At 10 Hz that is up to 40; the policy is silent between episodes (2.5 s episodes here,
    # auto-reset gaps), so ask for a quarter of it: a dead learner must not stop the robot.
    assert len(after_kill) >= 10, f"{len(after_kill)} arm commands in 4 s after the learner died"
    assert observer.policy_steps[-1] >= before  # (a checkpoint announced just before the kill may land)
    # Restarted with the same output directory, the learner resumes and trains on.
    graph.start_node("learner")
    assert observer.spin_until(lambda: observer.trained_steps()[-1] > before, 120, graph, tmp_path), _logs(tmp_path)
    assert "resum" in (tmp_path / "logs" / "learner.log").read_text().lower()


def _logs(tmp: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((tmp / "logs").glob("*.log")))
