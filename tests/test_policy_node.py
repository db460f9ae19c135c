"""policy_node over real DDS: commands, real-time chunking, safety holds, hot reload, episodes.

Each test starts policy_node in its own process (isolated ROS domain, see conftest.py) with a
tiny random Policy saved by ``Policy.save``; the test process plays the robot (publishes
observations at 10 Hz through tests/policy_node_harness.py) and listens to everything the node
publishes.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import policy_node_harness as h
import pytest

from sernf_data.store import EpisodeStore

pytestmark = pytest.mark.ros

TICK = 1.0 / h.RATE_HZ


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """name -> (directory, sha256 of its weights): base (step 3), new (step 7), other_h (H=4)."""
    root = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for name, seed, step, horizon in (("base", 0, 3, h.H), ("new", 1, 7, h.H), ("other_h", 2, 9, 4)):
        sha = h.tiny_policy(seed, horizon).save(root / name, metadata={"step": step})
        out[name] = (root / name, sha)
    return out


@pytest.fixture
def start_node(processes, tmp_path):
    """start_node(checkpoint_dir, **params) -> (process, harness); both cleaned up after."""
    harnesses = []

    def start(checkpoint: Path, **params):
        # Announced checkpoints must lie in a root: the test's checkpoints and its own tmp_path.
        params.setdefault("checkpoint_roots", [str(Path(checkpoint).parent), str(tmp_path)])
        path = h.write_params(tmp_path / "policy_params.yaml", h.node_params(str(checkpoint), **params))
        proc = processes.python("policy_node", "-m", "sernf_policy.policy_node", "--ros-args",
                                "--params-file", str(path))
        harness = h.Harness()
        harnesses.append(harness)
        harness.node_log = lambda: processes.log(proc)
        return proc, harness

    yield start
    for harness in harnesses:
        harness.close()


def wait_commanding(harness, timeout: float = 45.0) -> None:
    harness.wait_for(lambda: len(harness.arm) > 0 and len(harness.hand) > 0, timeout,
                     "the first commands", harness.node_log)


def diag_int(harness, key: str) -> int:
    return int(harness.diag().get(key, "-1"))


def test_commands_flow_at_the_control_rate_and_rtc_leaves_no_gap(start_node, checkpoints):
    # Inference takes 0.15 s < P / rate = 0.3 s: the queue never runs dry.
    _, harness = start_node(checkpoints["base"][0], auto_start_episode=True,
                            artificial_inference_delay_s=0.15)
    wait_commanding(harness)
    time.sleep(1.0)  # past the first decision (its prefix is P hold actions)
    overruns_before = diag_int(harness, "overruns")
    t0 = time.monotonic()
    time.sleep(3.0)
    t1 = time.monotonic()
    times = harness.arm.times(t0, t1)
    assert 25 <= len(times) <= 35, f"{len(times)} arm commands in 3 s at 10 Hz"
    gaps = np.diff(times)
    # Waiting for inference would leave a gap in every decision (>= one tick + 0.15 s, every H
    # ticks); the bound only catches that and leaves room for a scheduler stall of the node's
    # process on a loaded 2-core CI machine (one gap of 0.30 s seen in a full-suite run). The
    # overrun count below is the exact check that the queue never ran dry.
    assert gaps.max() < 3.5 * TICK, f"gap of {gaps.max():.3f} s in the command stream"
    assert np.sum(gaps > 1.5 * TICK) <= 1, f"repeated gaps in the command stream: {np.round(gaps, 3)}"
    assert len(harness.hand.times(t0, t1)) >= 25
    harness.wait_for(lambda: harness.diagnostics.last()[0] > t1, 5.0, "diagnostics")
    assert diag_int(harness, "overruns") == overruns_before, harness.diag()
    assert harness.diag()["holding"] == "false" and harness.diag()["checkpoint_step"] == "3"
    assert float(harness.diag()["inference_latency_s"]) >= 0.15

    # Chunks: one per decision (every H ticks), names = action dims, one point per action.
    chunks = harness.chunks.since(t0)
    assert 3 <= len(chunks) <= 7
    traj = chunks[-1][1]
    assert list(traj.joint_names) == [
        "arm_dx", "arm_dy", "arm_dz", "arm_qw", "arm_qx", "arm_qy", "arm_qz", *h.HAND_JOINTS]
    assert len(traj.points) == h.H
    assert [p.time_from_start.nanosec for p in traj.points] == [int(k * 1e8) for k in range(h.H)]

    # Commands are clipped: small relative motions, unit quaternions, hand inside its limits.
    for _, msg in harness.arm.since(t0):
        p, q = msg.pose.position, msg.pose.orientation
        assert np.linalg.norm([p.x, p.y, p.z]) <= 0.02 + 1e-6
        assert np.linalg.norm([q.w, q.x, q.y, q.z]) == pytest.approx(1.0, abs=1e-5) and q.w >= 0
    for _, msg in harness.hand.since(t0):
        assert list(msg.name) == list(h.HAND_JOINTS)
        assert all(lo - 1e-6 <= v <= hi + 1e-6 for v, lo, hi in zip(msg.position, h.HAND_LOWER, h.HAND_UPPER, strict=True))


def test_late_inference_holds_and_reports_overruns(start_node, checkpoints):
    # Inference takes 0.5 s > P / rate = 0.3 s: the queue runs dry for a few ticks per decision.
    _, harness = start_node(checkpoints["base"][0], auto_start_episode=True,
                            artificial_inference_delay_s=0.5)
    wait_commanding(harness)
    harness.wait_for(lambda: diag_int(harness, "overruns") >= 3 and diag_int(harness, "late_chunks") >= 1,
                     15.0, "overruns in the diagnostics", harness.node_log)
    t0 = time.monotonic()
    time.sleep(2.0)
    times = harness.arm.times(t0)
    # The stream keeps the control rate: late ticks publish the hold action instead (waiting
    # for the 0.5 s inference would leave gaps of 5 ticks; the bound allows timer jitter).
    assert len(times) >= 16 and np.diff(times).max() < 3 * TICK
    holds = [m for _, m in harness.arm.since(t0)
             if (m.pose.position.x, m.pose.position.y, m.pose.position.z) == (0.0, 0.0, 0.0)
             and m.pose.orientation.w == 1.0]
    assert holds, "no hold command (zero delta, identity rotation) while inference was late"
    assert diag_int(harness, "hold_commands") >= 3
    assert "late chunk" in harness.node_log() and "inference late" in harness.node_log()


def test_stale_or_invalid_observations_stop_commands_and_recover(start_node, checkpoints):
    _, harness = start_node(checkpoints["base"][0], auto_start_episode=True)
    wait_commanding(harness)
    time.sleep(0.5)

    def stops_then_recovers(mode: str, reason: str, budget: float) -> None:
        first_bad = time.monotonic()
        harness.mode = mode
        time.sleep(1.0)
        last = harness.arm.last()[0]
        assert last - first_bad <= budget, (
            f"{mode}: last command {last - first_bad:.3f} s after the inputs went bad (> {budget} s)")
        assert len(harness.arm.times(first_bad + budget + 0.05)) == 0
        harness.wait_for(lambda: harness.diagnostics.last()[0] > last + 0.1, 5.0, "diagnostics")
        diag = harness.diag()
        assert diag["holding"] == "true" and diag["safety_hold"] == "true", diag
        assert reason in diag["hold_reason"], diag
        assert diag["messages_awaiting_sender_discovery"] == "0", diag  # nothing stuck behind discovery
        harness.mode = "good"
        t_good = time.monotonic()
        harness.wait_for(lambda: len(harness.arm.times(t_good)) >= 5, 5.0,
                         f"commands after {mode} ended", harness.node_log)

    # Observations stop: the newest one gets older than stale_after_s (0.2 s) -> silence within
    # 0.2 s + one tick (+ DDS latency and scheduling slack of this shared machine).
    stops_then_recovers("off", "stale", budget=0.2 + TICK + 0.1)
    # A NaN in the pose / a joint state of the wrong size: rejected at once -> silence at the
    # next tick.
    stops_then_recovers("nan_pose", "non-finite", budget=TICK + 0.1)
    stops_then_recovers("short_joints", "3 positions, expected 2", budget=TICK + 0.1)
    # Each safety stop ended the running episode (truncated) and announced it.
    aborts = [m for _, m in harness.episodes.since(0) if m.event == m.ABORT]
    assert len(aborts) >= 3 and all("safety hold" in m.reason for m in aborts)
    assert "stop commanding" in harness.node_log()


def test_hot_reload_swaps_valid_checkpoints_and_rejects_bad_ones(start_node, checkpoints, tmp_path):
    _, harness = start_node(checkpoints["base"][0], auto_start_episode=True)
    wait_commanding(harness)
    harness.wait_for(lambda: harness.diag().get("checkpoint_step") == "3", 10.0, "step 3")

    new_dir, new_sha = checkpoints["new"]
    harness.announce_checkpoint(str(new_dir), 7, new_sha)
    harness.wait_for(lambda: harness.diag().get("checkpoint_step") == "7", 20.0,
                     "diagnostics to show step 7", harness.node_log)

    def rejected(n: int, uri: str, sha: str, step: int, error: str) -> None:
        harness.announce_checkpoint(uri, step, sha)
        harness.wait_for(lambda: diag_int(harness, "checkpoints_rejected") >= n, 20.0,
                         f"rejection #{n}", harness.node_log)
        diag = harness.diag()
        assert error in diag["last_checkpoint_error"], diag
        assert diag["checkpoint_step"] == "7"  # the old policy keeps running...
        t0 = time.monotonic()
        harness.wait_for(lambda: len(harness.arm.times(t0)) >= 5, 5.0, "commands after a rejection")

    # The weights file cut in half, announced with the sha the learner computed before the cut.
    truncated = tmp_path / "truncated"
    shutil.copytree(new_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    rejected(1, str(truncated), new_sha, 8, "sha256")
    # Same cut file announced with its own sha: Policy.load finds it truncated.
    from sernf_policy.checkpoint import file_sha256

    rejected(2, str(truncated), file_sha256(weights), 8, "truncated")
    # An intact checkpoint announced with the wrong sha.
    rejected(3, str(checkpoints["base"][0]), "0" * 64, 9, "sha256")
    # A valid checkpoint of another chunk length.
    other_dir, other_sha = checkpoints["other_h"]
    rejected(4, str(other_dir), other_sha, 9, "(T, P, H, A)")
    assert "rejected, keeping the current policy (step 7)" in harness.node_log()


def test_episode_is_recorded_committed_and_announced(start_node, checkpoints, tmp_path):
    uri = str(tmp_path / "replay.zarr")
    # Recording is under test, not the staleness guard (tested above with 0.2 s): a test process
    # starved for a moment on a loaded CI machine must not end the episode before ~/stop_episode.
    _, harness = start_node(checkpoints["base"][0], replay_uri=uri, subtasks=["grasp", "cut"], stale_after_s=1.0)
    harness.wait_for(lambda: "no episode" in harness.diag().get("hold_reason", ""), 45.0,
                     "the node to be ready and idle", harness.node_log)
    assert len(harness.arm) == 0, "commands published outside an episode"

    started = harness.call(harness.start_client)
    assert started.success, started.message
    wait_commanding(harness, timeout=5.0)
    time.sleep(1.5)
    harness.publish_reward(1.0, "grasp")
    time.sleep(0.5)
    stopped = harness.call(harness.stop_client)
    assert stopped.success, f"{stopped.message}\n--- node log ---\n{harness.node_log()}"
    t_stop = time.monotonic()
    harness.wait_for(lambda: len(harness.replay) > 0, 15.0, "a ReplayEpisode", harness.node_log)
    assert len(harness.arm.times(t_stop + 0.3)) == 0, "commands after the episode stopped"

    msg = harness.replay.last()[1]
    assert msg.uri == uri and msg.source == "online"
    assert list(msg.subtask_names) == ["cut", "grasp"] and list(msg.subtask_success) == [False, True]
    assert msg.episode_return == pytest.approx(1.0)
    events = [(m.event, m.episode_id) for _, m in harness.episodes.since(0)]
    assert (0, msg.episode_id) in events and (2, msg.episode_id) in events  # START, ABORT

    store = EpisodeStore(uri, mode="r")
    steps, meta = store.read_episode(msg.episode_id)
    assert steps["action"].shape == (msg.num_steps, h.ACTION_DIM)
    assert float(steps["reward"].sum()) == pytest.approx(1.0)
    assert meta["terminated"] is False and meta["source"] == "online"
    assert meta["extra"]["checkpoint_steps"] == [3] and "stop_episode" in meta["extra"]["end_reason"]
    assert steps["ee_pose"].shape == (msg.num_steps, 7) and steps["hand"].shape == (msg.num_steps, 2)
    np.testing.assert_allclose(steps["hand"][:, :], np.tile([0.2, 0.3], (msg.num_steps, 1)), atol=1e-6)
    # What the replay stores is exactly what was published (the clipped command), in order.
    published = np.array([
        [m.pose.position.x, m.pose.position.y, m.pose.position.z,
         m.pose.orientation.w, m.pose.orientation.x, m.pose.orientation.y, m.pose.orientation.z]
        for _, m in harness.arm.since(0)])
    hand = np.array([list(m.position) for _, m in harness.hand.since(0)])
    assert len(published) == msg.num_steps
    np.testing.assert_allclose(steps["action"][:, :7], published, atol=1e-6)
    np.testing.assert_allclose(steps["action"][:, 7:], hand, atol=1e-6)
    assert np.all(np.diff(steps["timestamp"]) > 0)


def test_a_new_episode_holds_the_measured_hand_not_the_last_episodes_target(start_node, checkpoints, tmp_path):
    # Between episodes the robot is reset (the hand goes home). The first P actions of a new
    # episode (its hold prefix) must keep the hand where it is measured, not jump back to the
    # target the previous episode ended with (e.g. a closed fist before the approach).
    uri = str(tmp_path / "replay.zarr")
    _, harness = start_node(checkpoints["base"][0], replay_uri=uri)
    harness.wait_for(lambda: "no episode" in harness.diag().get("hold_reason", ""), 45.0,
                     "the node to be ready and idle", harness.node_log)
    measured = np.array([0.2, 0.3])  # the harness publishes index 0.2, thumb 0.3 (by name)
    for _ in range(2):
        assert harness.call(harness.start_client).success
        wait_commanding(harness, timeout=5.0)
        time.sleep(1.5)
        assert harness.call(harness.stop_client).success
        n = len(harness.replay)
        harness.wait_for(lambda n=n: len(harness.replay) > n, 15.0, "a ReplayEpisode", harness.node_log)
    store = EpisodeStore(uri, mode="r")
    (first, _), (second, _) = (store.read_episode(m.episode_id) for _, m in harness.replay.since(0)[:2])
    last_target = first["action"][-1, 7:]
    assert np.abs(last_target - measured).max() > 1e-3, "test needs the first episode to end elsewhere"
    np.testing.assert_allclose(second["action"][:h.P, 7:], np.tile(measured, (h.P, 1)), atol=1e-6)


def test_a_start_event_waits_briefly_for_good_inputs(start_node, checkpoints, tmp_path):
    # A simulator's START arrives before the observations after its reset: the fingers still
    # read where the last episode pushed them (beyond their limits). The node waits for good
    # inputs (start_wait_s) instead of refusing the episode; one that stays bad is refused.
    uri = str(tmp_path / "replay.zarr")
    _, harness = start_node(checkpoints["base"][0], replay_uri=uri, start_wait_s=1.5)
    harness.wait_for(lambda: "no episode" in harness.diag().get("hold_reason", ""), 45.0,
                     "the node to be ready and idle", harness.node_log)
    START, END = 0, 1
    harness.mode = "joints_beyond_limits"
    time.sleep(0.5)
    harness.publish_episode(START, "sim-0-00007", "layout_7")
    time.sleep(0.5)
    assert len(harness.arm) == 0, "commanded on inputs beyond the joint limits"
    harness.mode = "good"
    wait_commanding(harness, timeout=5.0)
    time.sleep(1.0)
    harness.publish_episode(END, "sim-0-00007", "success")
    harness.wait_for(lambda: len(harness.replay) > 0, 15.0, "a ReplayEpisode", harness.node_log)
    msg = harness.replay.last()[1]
    assert msg.episode_id == "sim-0-00007" and msg.num_steps >= 5, (msg.episode_id, msg.num_steps)

    # Inputs that stay bad past start_wait_s: refused, with the reason, and nothing commanded.
    harness.mode = "joints_beyond_limits"
    time.sleep(0.5)
    commands = len(harness.arm)
    harness.publish_episode(START, "sim-0-00008", "layout_8")
    harness.wait_for(lambda: "cannot start episode 'sim-0-00008'" in harness.node_log(), 10.0,
                     "the refusal", harness.node_log)
    assert "after waiting 1.5 s" in harness.node_log()
    harness.mode = "good"
    time.sleep(1.0)
    assert len(harness.arm) == commands, "an episode started after its START was refused"
    assert "no episode" in harness.diag().get("hold_reason", ""), harness.diag()
