"""The reward labeling widget under pytest-qt (offscreen): open a store with camera and scalar
keys, scrub with the keyboard, label, save, reopen in a new window; the sampler's rewards
follow the saved labels; two windows on one episode get a conflict, not a lost label set."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("pytestqt")

from rqt_sernf_rewards.qt import QtCore  # noqa: E402
from rqt_sernf_rewards.widget import RewardLabelingWidget  # noqa: E402
from sernf_data.labels import LabelSettings, LabelStore, RewardEvent  # noqa: E402
from sernf_data.spec import ObsKeySpec  # noqa: E402
from sernf_data.store import EpisodeStore, StoreSpec  # noqa: E402
from sernf_learner.transitions import ChunkTiming, TransitionSampler  # noqa: E402

Key = QtCore.Qt.Key
Mod = QtCore.Qt.KeyboardModifier
LENGTH = 30
RATE = 10.0


@pytest.fixture
def store_path(tmp_path):
    spec = StoreSpec(obs={
        "front_rgb": ObsKeySpec((24, 32, 3), "rgb"), "wrist_rgb": ObsKeySpec((24, 32, 3), "rgb"),
        "hand_joints": ObsKeySpec((3,), "lowdim"), "ee_pose": ObsKeySpec((7,), "lowdim"),
    }, action_dim=2, control_rate_hz=RATE)
    store = EpisodeStore(tmp_path / "episodes.zarr", mode="a", spec=spec)
    for k, source in enumerate(("demo", "online")):
        t = np.arange(LENGTH)
        frames = np.zeros((LENGTH, 24, 32, 3), np.uint8)
        frames[:, :, :, 0] = (t * 8)[:, None, None]  # the step is readable from the red channel
        store.append_episode({
            "front_rgb": frames, "wrist_rgb": frames[:, ::-1].copy(),
            "hand_joints": np.stack([np.sin(t / 5), np.cos(t / 5), t / 30], 1).astype(np.float32),
            "ee_pose": np.c_[np.zeros((LENGTH, 2)), 0.1 + t / 100, np.ones(LENGTH), np.zeros((LENGTH, 3))].astype(np.float32),
            "action": np.zeros((LENGTH, 2), np.float32),
            "reward": np.r_[np.zeros(LENGTH - 1), 1.0].astype(np.float32),
            "timestamp": 1.7e9 + t / RATE,
        }, {"id": f"ep{k}", "source": source, "success": False, "terminated": True, "operator": "ann",
            "subtask_success": {"retrieve": False, "cut": False}})
    LabelStore(store.uri).write_settings(LabelSettings(reward_source="labels", subtasks=("retrieve", "cut")))
    return str(store.uri)


def open_widget(qtbot, path) -> RewardLabelingWidget:
    widget = RewardLabelingWidget()
    qtbot.addWidget(widget)
    widget.resize(1200, 800)
    # Shortcuts fire only in the active window (offscreen activates on request).
    with qtbot.waitActive(widget):
        widget.show()
        widget.activateWindow()
    assert widget.open_location(path), widget.last_message
    widget.timeline.setFocus()
    return widget


def press(qtbot, widget, key, modifier=Mod.NoModifier):
    qtbot.keyClick(widget.timeline, key, modifier)


def test_label_save_reopen_and_sampler_rewards(qtbot, store_path):
    w = open_widget(qtbot, store_path)
    assert [r.episode_id for r in w.rows] == ["ep0", "ep1"]
    assert set(w.frame_views) == {"front_rgb", "wrist_rgb"}
    assert [s.title for s in w.data.scalars] == ["ee_pose: EE height (m)", "hand_joints"]
    assert w.doc.events == (RewardEvent(LENGTH - 1, 1.0),)  # starts from the recorded reward

    # keyboard scrubbing: frame, second, end/home, events
    press(qtbot, w, Key.Key_Right)
    press(qtbot, w, Key.Key_Right)
    assert w.cursor == 2
    press(qtbot, w, Key.Key_Right, Mod.ShiftModifier)
    assert w.cursor == 12
    press(qtbot, w, Key.Key_Left)
    assert w.cursor == 11
    assert w.frame_views["front_rgb"]._image.pixelColor(0, 0).red() == 11 * 8  # frame follows the cursor
    press(qtbot, w, Key.Key_1)  # +1 for subtask 1 (retrieve) at the cursor
    assert RewardEvent(11, 1.0, "retrieve") in w.doc.events
    press(qtbot, w, Key.Key_End)
    assert w.cursor == LENGTH - 1
    press(qtbot, w, Key.Key_Delete)  # remove the recorded reward under the cursor
    press(qtbot, w, Key.Key_Left, Mod.ShiftModifier)
    press(qtbot, w, Key.Key_2)  # +1 for cut at step 19
    press(qtbot, w, Key.Key_Left, Mod.AltModifier)  # move the selected event one frame back
    assert [(e.step, e.subtask) for e in w.doc.events] == [(11, "retrieve"), (18, "cut")]
    press(qtbot, w, Key.Key_Home)
    press(qtbot, w, Key.Key_PageDown)
    assert w.cursor == 11
    press(qtbot, w, Key.Key_PageDown)
    assert w.cursor == 18
    press(qtbot, w, Key.Key_PageUp)
    assert w.cursor == 11
    press(qtbot, w, Key.Key_1, Mod.ShiftModifier)  # retrieve succeeded
    w.toggle_subtask(1)  # cut succeeded (the checkbox path)
    assert w.doc.subtask_success == {"retrieve": True, "cut": True}
    # undo / redo through the shortcuts
    press(qtbot, w, Key.Key_Z, Mod.ControlModifier)
    assert w.doc.subtask_success["cut"] is False
    press(qtbot, w, Key.Key_Z, Mod.ControlModifier | Mod.ShiftModifier)
    assert w.doc.subtask_success["cut"] is True
    w.author_edit.setText("tester")
    press(qtbot, w, Key.Key_S, Mod.ControlModifier)
    assert not w.doc.dirty, w.last_message
    assert w.rows[0].labels_version == 1 and w.rows[0].labels_author == "tester"

    # a new window shows the saved labels
    w2 = open_widget(qtbot, store_path)
    assert w2.doc.base_version == 1 and not w2.doc.dirty
    assert [(e.step, e.value, e.subtask) for e in w2.doc.events] == [(11, 1.0, "retrieve"), (18, 1.0, "cut")]
    w2.unlabeled_only.setChecked(True)
    assert [r.episode_id for r in w2.visible_rows()] == ["ep1"]

    # the sampler's rewards follow the labels (store-level reward_source = labels)
    timing = ChunkTiming(T=1, P=1, H=4, gamma=1.0)
    sampler = TransitionSampler(EpisodeStore(store_path, mode="r"), timing, batch_size=4, seed=0)
    t = np.arange(LENGTH - 1)
    batch = sampler.build_batch(np.zeros_like(t), t)
    got = {int(s): float(r) for s, r in zip(t, batch["reward"], strict=True)}
    assert got[8] == 1.0 and got[11] == 1.0 and got[12] == 0.0 and got[15] == 1.0 and got[18] == 1.0
    assert got[26] == 0.0  # the recorded +1 at the last step was deleted by the labeler
    recorded = EpisodeStore(store_path, mode="r")
    recorded.label_settings = LabelSettings(reward_source="recorded")
    batch = TransitionSampler(recorded, timing, batch_size=4, seed=0).build_batch(np.zeros_like(t), t)
    assert float(batch["reward"][26]) == 1.0 and float(batch["reward"][11]) == 0.0


def test_two_windows_conflict_then_keep_mine(qtbot, store_path):
    a, b = open_widget(qtbot, store_path), open_widget(qtbot, store_path)
    a.place_reward(step=5, subtask_index=0)
    assert a.save()
    b.place_reward(step=7, subtask_index=1)
    assert not b.save()
    assert b.conflict is not None and b.conflict_bar.isVisibleTo(b)
    assert LabelStore(store_path).versions("ep0") == [1]
    assert b.resolve_conflict_keep_mine()
    history = LabelStore(store_path).history("ep0")
    assert [h.version for h in history] == [1, 2]
    assert RewardEvent(5, 1.0, "retrieve") in history[0].events
    assert RewardEvent(7, 1.0, "cut") in history[1].events


def test_settings_round_trip(qtbot, store_path):
    a = open_widget(qtbot, store_path)
    a.table.selectRow(1)
    a.unlabeled_only.setChecked(True)
    a.author_edit.setText("bob")
    saved = a.settings_dict()
    b = RewardLabelingWidget()
    qtbot.addWidget(b)
    b.apply_settings({k: (str(v) if isinstance(v, bool) else v) for k, v in saved.items()})  # QSettings strings
    assert b.source is not None and b.data.episode_id == "ep1"
    assert b.unlabeled_only.isChecked() and b.author_edit.text() == "bob"


def test_bad_location_is_reported(qtbot, tmp_path):
    w = RewardLabelingWidget()
    qtbot.addWidget(w)
    assert not w.open_location(str(tmp_path))
    assert "neither an episode store" in w.last_message
