"""Live labeling over real DDS: the live page's hotkeys and buttons publish operator rewards
and episode ends from /rqt_sernf_rewards; the policy node (allowing /rqt_sernf_rewards) records them in
the episode, and the page shows the node's diagnostics."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

pytest.importorskip("pytestqt")
sys.path.insert(0, str(Path(__file__).parent))

import policy_node_harness as h  # noqa: E402
import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402

from rqt_sernf_rewards.live_model import STATUS_STALE_AFTER_S  # noqa: E402
from rqt_sernf_rewards.live_node import LiveLink  # noqa: E402
from rqt_sernf_rewards.qt import QtCore  # noqa: E402
from rqt_sernf_rewards.widget import RewardLabelingWidget  # noqa: E402
from sernf_data.store import EpisodeStore  # noqa: E402
from sernf_interfaces.msg import EpisodeEvent, RewardEvent  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]
Key = QtCore.Qt.Key


class Listener:
    """Records what arrives on /sernf/reward and /sernf/episode (own context and thread)."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("labeling_listener", context=self.context)
        self.rewards: list[RewardEvent] = []
        self.episodes: list[EpisodeEvent] = []
        self.node.create_subscription(RewardEvent, "/sernf/reward", self.rewards.append, 50)
        self.node.create_subscription(EpisodeEvent, "/sernf/episode", self.episodes.append, 50)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        import threading

        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self.thread.join(timeout=5)


def wait(qtbot, predicate, timeout_s: float, what: str, log=lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        qtbot.wait(50)
    raise AssertionError(f"timed out waiting for {what}\n{log()}")


def test_live_buttons_reach_the_recorder(qtbot, processes, tmp_path):
    checkpoint = tmp_path / "ckpt"
    h.tiny_policy(0).save(checkpoint, metadata={"step": 3})
    uri = str(tmp_path / "replay.zarr")
    params = h.node_params(str(checkpoint), replay_uri=uri, subtasks=["grasp", "cut"],
                           reward_sources=["/rqt_sernf_rewards"], episode_authorities=["/rqt_sernf_rewards"],
                           checkpoint_roots=[str(tmp_path)],
                           # The page, not the staleness guard, is under test here (test_policy_node
                           # tests that): tolerate a test process starved by a loaded CI machine.
                           stale_after_s=1.0)
    path = h.write_params(tmp_path / "policy_params.yaml", params)
    proc = processes.python("policy_node", "-m", "sernf_policy.policy_node", "--ros-args", "--params-file", str(path))
    harness = h.Harness()  # publishes observations, calls the node's services
    listener = Listener()
    widget = RewardLabelingWidget(live_link_factory=LiveLink)
    qtbot.addWidget(widget)
    try:
        widget.set_subtasks(("grasp", "cut"))
        with qtbot.waitActive(widget):
            widget.show()
            widget.activateWindow()
        widget.tabs.setCurrentIndex(1)
        assert widget.connect_live()
        assert widget.live_link.fully_qualified_name == "/rqt_sernf_rewards"
        harness.wait_for(lambda: "no episode" in harness.diag().get("hold_reason", ""), 60.0,
                         "the policy node to be ready", lambda: processes.log(proc))
        started = harness.call(harness.start_client)
        assert started.success, started.message
        # the page shows the policy's diagnostics: the running episode and its steps
        def views() -> str:  # on a timeout: what the node logged and what each peer saw of it
            live = widget.live_link.latest_status()
            return (f"{processes.log(proc)}\n--- the harness's newest diagnostics ---\n{harness.diag()}"
                    f"\n--- the live link's newest status ---\n{live}")

        wait(qtbot, lambda: widget.status_labels["episode"].text().startswith("online"), 45.0,
             "the episode in the live panel", views)
        episode_id = widget.status_labels["episode"].text()
        wait(qtbot, lambda: widget.live_link.reward_subscribers() >= 2, 20.0, "reward subscribers")
        wait(qtbot, lambda: int(widget.status_labels["step"].text()) >= 5, 20.0, "a few steps", views)
        qtbot.keyClick(widget.live_page, Key.Key_F1)  # +1 grasp by hotkey
        wait(qtbot, lambda: len(listener.rewards) >= 1, 10.0, "the hotkey's RewardEvent")
        qtbot.wait(300)
        widget.reason_combo.setCurrentText("success")
        qtbot.mouseClick(widget.end_button, QtCore.Qt.MouseButton.LeftButton)
        wait(qtbot, lambda: any(m.event == EpisodeEvent.END for m in listener.episodes), 10.0, "the END event")

        reward = listener.rewards[0]
        assert reward.source == RewardEvent.SOURCE_OPERATOR and reward.subtask == "grasp" and reward.value == 1.0
        stamp = reward.header.stamp.sec + reward.header.stamp.nanosec * 1e-9
        assert abs(stamp - time.time()) < 30.0  # stamped now, not zero
        end = next(m for m in listener.episodes if m.event == EpisodeEvent.END)
        assert end.reason == "success" and end.episode_id == episode_id
        assert widget.sent_log[0].startswith("reward +1 grasp") and widget.sent_log[1].startswith("END")

        harness.wait_for(lambda: len(harness.replay) > 0, 30.0, "the recorded episode", lambda: processes.log(proc))
        msg = harness.replay.last()[1]
        assert msg.episode_id == episode_id
        steps, meta = EpisodeStore(uri, mode="r").read_episode(episode_id)
        assert float(steps["reward"].sum()) == pytest.approx(1.0)  # the operator's reward is in the episode
        assert meta["subtask_success"]["grasp"] is True and meta["terminated"] is True
        assert harness.diag().get("rewards_rejected") == "0"

        # While the node reports, the connection line is plain; once it stops, the page says
        # that what it shows is old instead of showing a finished episode as running.
        qtbot.wait(int(1000 * STATUS_STALE_AFTER_S) + 500)  # longer than a status stays current
        assert widget.live_state.text() == "connected as /rqt_sernf_rewards", views()
        proc.terminate()
        proc.wait(timeout=20)
        wait(qtbot, lambda: "no policy diagnostics for" in widget.live_state.text(), 15.0,
             "the page to flag the stopped policy node", views)
        assert "color: #c62828" in widget.live_state.styleSheet()
    finally:
        widget.shutdown()
        listener.close()
        harness.close()
