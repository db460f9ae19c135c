"""EpisodeRecorder: reward-to-step assignment and the append_episode format."""

from __future__ import annotations

import numpy as np
import pytest

from sernf_data.store import EpisodeStore, StoreSpec
from sernf_policy.episode_recorder import (
    EpisodeRecorder,
    EpisodeRecorderConfig,
    EpisodeSummary,
    RewardEvent,
)

DT = 0.1
T0 = 1000.0


def make(steps: int = 5, subtasks=("grasp", "cut"), **kw) -> EpisodeRecorder:
    rec = EpisodeRecorder(
        EpisodeRecorderConfig(control_period_s=DT, subtasks=subtasks, **kw),
        episode_id="online-test-1", start_time=T0 - 0.05, obs_keys=["state", "cam"], action_dim=2,
    )
    for i in range(steps):
        rec.add_step(
            T0 + i * DT,
            {"state": np.full(3, i, np.float32), "cam": np.full((2, 2, 3), i, np.uint8)},
            np.array([i, -i], np.float32),
        )
    return rec


def test_config_validation():
    with pytest.raises(ValueError, match="control_period_s"):
        EpisodeRecorderConfig(control_period_s=0)
    with pytest.raises(ValueError, match="subtasks"):
        EpisodeRecorderConfig(control_period_s=0.1, subtasks=("a", "a"))
    with pytest.raises(ValueError, match="max_steps"):
        EpisodeRecorderConfig(control_period_s=0.1, max_steps=0)
    with pytest.raises(ValueError, match="source"):
        EpisodeRecorderConfig(control_period_s=0.1, source="robot")


def test_output_format_matches_append_episode():
    steps, meta = make().finish({"terminated": True})
    assert set(steps) == {"state", "cam", "action", "reward", "timestamp"}
    assert steps["state"].shape == (5, 3) and steps["state"].dtype == np.float32
    assert steps["cam"].shape == (5, 2, 2, 3) and steps["cam"].dtype == np.uint8
    assert steps["action"].shape == (5, 2) and steps["action"].dtype == np.float32
    assert steps["reward"].shape == (5,) and steps["reward"].dtype == np.float32
    assert steps["timestamp"].dtype == np.float64
    np.testing.assert_allclose(steps["timestamp"], T0 + DT * np.arange(5))
    np.testing.assert_array_equal(steps["action"][:, 0], np.arange(5))
    assert meta["id"] == "online-test-1" and meta["source"] == "online"
    assert meta["terminated"] is True and meta["success"] is False
    assert meta["subtask_success"] == {"grasp": False, "cut": False}
    assert set(meta) <= {"id", "source", "success", "subtask_success", "terminated", "operator", "extra"}


def test_rewards_go_to_the_step_whose_window_holds_their_stamp():
    rec = make()
    events = [
        RewardEvent(T0 - 0.02, 0.5),            # after start, before the first tick -> step 0
        RewardEvent(T0 + 0.10, 1.0, "grasp"),   # exactly t_1 -> step 1
        RewardEvent(T0 + 0.19, 0.25),           # inside [t_1, t_2) -> step 1
        RewardEvent(T0 + 0.35, 2.0),            # -> step 3
        RewardEvent(T0 + 0.46, 1.0, "cut"),     # after the last tick, inside its window -> 4
    ]
    # Out of order arrival must not matter.
    for e in reversed(events):
        assert rec.add_reward(e) == ""
    steps, meta = rec.finish({"terminated": True})
    np.testing.assert_allclose(steps["reward"], [0.5, 1.25, 0.0, 2.0, 1.0])
    assert meta["subtask_success"] == {"grasp": True, "cut": True} and meta["success"] is True
    summary = EpisodeSummary.of(steps, meta)
    assert summary.num_steps == 5 and summary.episode_return == pytest.approx(4.75)
    assert summary.subtask_names == ("cut", "grasp") and summary.subtask_success == (True, True)


def test_rewards_outside_the_episode_are_dropped_and_counted():
    rec = make()
    assert "before the episode started" in rec.add_reward(RewardEvent(T0 - 1.0, 1.0))
    assert "non-finite" in rec.add_reward(RewardEvent(T0, float("nan")))
    assert rec.add_reward(RewardEvent(T0 + 5.0, 1.0)) == ""  # far after the end: dropped at finish
    rec.close(T0 + 0.6)
    assert rec.add_reward(RewardEvent(T0 + 0.58, 3.0)) == ""  # late arrival, before the end time
    steps, meta = rec.finish({})
    np.testing.assert_allclose(steps["reward"], [0, 0, 0, 0, 3.0])
    assert meta["extra"]["rewards_dropped"] == 1 and meta["terminated"] is False


def test_success_without_subtasks_and_metadata_overrides():
    rec = make(subtasks=())
    rec.add_reward(RewardEvent(T0 + 0.2, 1.0))
    _, meta = rec.finish({"terminated": True, "operator": "ana", "extra": {"reason": "success"}})
    assert meta["success"] is True and meta["subtask_success"] == {}
    assert meta["operator"] == "ana" and meta["extra"]["reason"] == "success"
    _, meta = make().finish({"success": True, "terminated": False})
    assert meta["success"] is True
    with pytest.raises(ValueError, match="unknown metadata"):
        make().finish({"bogus": 1})


def test_negative_subtask_reward_does_not_mark_success():
    rec = make()
    rec.add_reward(RewardEvent(T0, -1.0, "grasp"))
    _, meta = rec.finish({})
    assert meta["subtask_success"]["grasp"] is False


def test_bad_steps_closed_and_full():
    rec = make(steps=0, max_steps=2)
    with pytest.raises(ValueError, match="no steps"):
        make(steps=0).finish({})
    obs = {"state": np.zeros(3, np.float32), "cam": np.zeros((2, 2, 3), np.uint8)}
    with pytest.raises(ValueError, match="finite"):
        rec.add_step(T0, obs, np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="keys"):
        rec.add_step(T0, {"state": obs["state"]}, np.zeros(2))
    rec.add_step(T0, obs, np.zeros(2))
    with pytest.raises(ValueError, match="backwards"):
        rec.add_step(T0 - 1, obs, np.zeros(2))
    rec.add_step(T0 + DT, obs, np.zeros(2))
    assert rec.full
    with pytest.raises(RuntimeError, match="full"):
        rec.add_step(T0 + 2 * DT, obs, np.zeros(2))
    rec.close(T0 + 0.3)
    assert rec.closed


def test_recorded_episode_is_accepted_by_the_episode_store(tmp_path):
    rec = make()
    rec.add_reward(RewardEvent(T0 + 0.3, 1.0, "grasp"))
    steps, meta = rec.finish({"terminated": True})
    spec = StoreSpec(
        obs={"state": {"shape": (3,), "kind": "lowdim"}, "cam": {"shape": (2, 2, 3), "kind": "rgb"}},
        action_dim=2, control_rate_hz=1 / DT,
    )
    store = EpisodeStore(tmp_path / "replay.zarr", mode="a", spec=spec)
    episode_id = store.append_episode(steps, meta)
    assert episode_id == "online-test-1"
    back, back_meta = EpisodeStore(tmp_path / "replay.zarr", mode="r").read_episode(episode_id)
    np.testing.assert_allclose(back["reward"], steps["reward"])
    assert back_meta["subtask_success"] == {"grasp": True, "cut": False}
