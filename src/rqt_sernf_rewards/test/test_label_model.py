"""The label model without Qt: editing, undo/redo, versioned save and reload, conflicts,
history kept, scrubbing arithmetic, diagnostics parsing."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from rqt_sernf_rewards.label_model import LabelDocument, next_event_step, previous_event_step
from rqt_sernf_rewards.live_model import STATUS_STALE_AFTER_S, link_state, parse_policy_status
from sernf_data.labels import LabelConflictError, LabelStore, RewardEvent
from sernf_data.spec import ObsKeySpec
from sernf_data.store import EpisodeStore, StoreSpec


def test_models_do_not_import_qt_or_ros():
    for name in ("rqt_sernf_rewards.label_model", "rqt_sernf_rewards.live_model", "rqt_sernf_rewards.episode_source"):
        assert name in sys.modules or __import__(name)
    import subprocess

    code = ("import sys, rqt_sernf_rewards.label_model, rqt_sernf_rewards.live_model, "
            "rqt_sernf_rewards.episode_source; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'PyQt5', 'python_qt_binding', 'rclpy')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def store(tmp_path):
    spec = StoreSpec(obs={"hand_joints": ObsKeySpec((2,), "lowdim")}, action_dim=2, control_rate_hz=10.0)
    s = EpisodeStore(tmp_path / "s.zarr", mode="a", spec=spec)
    length = 20
    s.append_episode({
        "hand_joints": np.zeros((length, 2), np.float32), "action": np.zeros((length, 2), np.float32),
        "reward": np.r_[np.zeros(length - 1), 1.0].astype(np.float32), "timestamp": np.arange(length) / 10.0,
    }, {"id": "ep", "source": "online", "success": True, "terminated": True,
        "subtask_success": {"retrieve": True, "cut": True}})
    return s


def new_doc(store, labels=None):
    labels = labels or LabelStore(store.uri)
    steps, meta = store.read_episode("ep")
    return LabelDocument("ep", 20, ("retrieve", "cut"), base=labels.newest("ep"),
                         recorded_rewards=steps["reward"], recorded_subtask_success=meta["subtask_success"])


def test_unlabeled_episode_starts_from_recorded_rewards(store):
    doc = new_doc(store)
    assert doc.events == (RewardEvent(19, 1.0),)
    assert doc.subtask_success == {"cut": True, "retrieve": True}
    assert doc.dirty and doc.base_version == 0 and not doc.can_undo


def test_add_move_remove_and_undo_redo(store):
    doc = new_doc(store)
    i = doc.add_event(5, 1.0, "retrieve")
    assert doc.events[i] == RewardEvent(5, 1.0, "retrieve")
    j = doc.move_event(i, 7)
    assert doc.events[j].step == 7
    doc.set_event(j, value=0.5)
    doc.remove_event(doc.event_at(19))
    doc.set_subtask_success("cut", False)
    assert [(e.step, e.value) for e in doc.events] == [(7, 0.5)]
    assert doc.rewards()[7] == 0.5 and doc.rewards().sum() == 0.5
    # undo everything, one step at a time, then redo it all
    states = []
    while doc.can_undo:
        states.append((doc.events, doc.subtask_success))
        doc.undo()
    assert doc.events == (RewardEvent(19, 1.0),) and doc.subtask_success["cut"] is True
    assert len(states) == 5
    for events, success in reversed(states):
        doc.redo()
        assert (doc.events, doc.subtask_success) == (events, success)
    assert not doc.can_redo
    doc.undo()
    doc.add_event(3, 1.0)  # a new edit clears the redo stack
    assert not doc.can_redo


def test_moves_are_clamped_to_the_episode(store):
    doc = new_doc(store)
    i = doc.add_event(100, 1.0)
    assert doc.events[i].step == 19
    j = doc.move_event(0, -5)
    assert doc.events[j].step == 0


def test_versioned_save_reload_and_history(store):
    labels = LabelStore(store.uri)
    doc = new_doc(store, labels)
    doc.add_event(4, 1.0, "retrieve")
    v1 = doc.save(labels, author="ann")
    assert v1.version == 1 and v1.parent_version == 0 and not doc.dirty
    assert v1.tool.startswith("rqt_sernf_rewards ")
    doc.remove_event(doc.event_at(19))
    v2 = doc.save(labels, author="ann")
    assert (v2.version, v2.parent_version) == (2, 1)
    reopened = new_doc(store, LabelStore(store.uri))
    assert reopened.base_version == 2 and not reopened.dirty
    assert reopened.events == (RewardEvent(4, 1.0, "retrieve"),)
    history = LabelStore(store.uri).history("ep")
    assert [len(h.events) for h in history] == [2, 1]  # the old set is still there


def test_stale_document_gets_a_conflict_and_keeps_its_edits(store):
    labels = LabelStore(store.uri)
    first = new_doc(store, labels)
    first.save(labels, author="ann")
    window_a, window_b = new_doc(store, LabelStore(store.uri)), new_doc(store, LabelStore(store.uri))
    window_a.add_event(2, 1.0, "retrieve")
    window_a.save(window_a_labels := LabelStore(store.uri), author="ann")
    window_b.add_event(9, 1.0, "cut")
    with pytest.raises(LabelConflictError, match="version 2 by ann"):
        window_b.save(LabelStore(store.uri), author="bob")
    assert window_b.dirty and RewardEvent(9, 1.0, "cut") in window_b.events
    # the person chooses to keep theirs: saved on top, A's version stays in the history
    window_b.rebase(LabelStore(store.uri).newest("ep"))
    v3 = window_b.save(LabelStore(store.uri), author="bob")
    assert (v3.version, v3.parent_version) == (3, 2)
    assert [h.author for h in window_a_labels.history("ep")] == ["ann", "ann", "bob"]


def test_scrubbing_to_events():
    events = (RewardEvent(3, 1.0), RewardEvent(10, 1.0))
    assert next_event_step(events, 0) == 3 and next_event_step(events, 3) == 10
    assert next_event_step(events, 10) is None
    assert previous_event_step(events, 10) == 3 and previous_event_step(events, 3) is None


def test_policy_diagnostics_are_parsed():
    values = {"episode_id": "online-1", "episode_steps": "42", "inference_latency_s": "0.0123",
              "log_prob": "-12.5", "q": "0.75", "checkpoint_step": "100", "checkpoint_stage": "online_rl"}
    status = parse_policy_status("/policy_node: control", "sernf_policy", 0, "commanding", values)
    assert status.episode_id == "online-1" and status.episode_steps == 42
    assert status.inference_latency_s == pytest.approx(0.0123) and status.q == 0.75
    rows = dict(status.lines())
    assert rows["inference latency"] == "12.3 ms" and rows["checkpoint"] == "online_rl step 100"
    assert parse_policy_status("x", "orca_hand", 0, "", values) is None
    broken = parse_policy_status("p: control", "sernf_policy", 0, "", {"q": "nan?", "episode_steps": "x"})
    assert math.isnan(broken.q) and broken.episode_steps == 0


def test_the_connection_line_says_when_the_panel_shows_the_past():
    text, current = link_state("/rqt_sernf_rewards", 0.4)
    assert current and text == "connected as /rqt_sernf_rewards"
    text, current = link_state("/rqt_sernf_rewards", None)
    assert not current and "waiting for the policy node's /diagnostics" in text
    text, current = link_state("/rqt_sernf_rewards", STATUS_STALE_AFTER_S + 2.0)
    assert not current and f"no policy diagnostics for {STATUS_STALE_AFTER_S + 2.0:.0f} s" in text
    assert link_state("/rqt_sernf_rewards", STATUS_STALE_AFTER_S - 0.1)[1]
    # A dead ROS thread wins over a status that happens to be recent.
    text, current = link_state("/rqt_sernf_rewards", 0.1, "RuntimeError: boom")
    assert not current and "RuntimeError: boom" in text
