"""Stores written before the store moved to sernf_data (by ``sernf_learner.replay``) still open.

``fixtures/pre_move_store.zarr`` was written by the pre-move module (commit a3a6f1f) with two
analytic episodes; the values below are the formulas it was written from, so a layout or
dtype change in the store shows up here as a failure, not as a silently different dataset.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from sernf_data.spec import ObsKeySpec
from sernf_data.store import EpisodeStore, StoreSpec

FIXTURE = Path(__file__).parent / "fixtures" / "pre_move_store.zarr"
LENGTHS = (5, 3)


def expected_steps(e: int) -> dict[str, np.ndarray]:
    length = LENGTHS[e]
    t = np.arange(length)
    return {
        "state": np.stack([t + 10 * e, 2 * t, -t], axis=1).astype(np.float32),
        "cam": ((np.arange(length * 48).reshape(length, 4, 4, 3) + e) % 256).astype(np.uint8),
        "action": np.stack([0.5 * t, -0.25 * t], axis=1).astype(np.float32),
        "reward": (t == length - 1).astype(np.float32) * (e + 1),
        "timestamp": 1000.0 + 0.1 * t + 100 * e,
    }


def test_pre_move_store_opens_read_only_with_its_data_and_metadata():
    before = sorted(p.relative_to(FIXTURE) for p in FIXTURE.rglob("*"))
    store = EpisodeStore(FIXTURE, mode="r")
    assert store.spec == StoreSpec(
        obs={"state": ObsKeySpec((3,), "lowdim"), "cam": ObsKeySpec((4, 4, 3), "rgb")},
        action_dim=2, control_rate_hz=10.0,
    )
    assert store.episode_ids() == ["demo-0", "demo-1"]
    assert store.episode_lengths.tolist() == list(LENGTHS)
    for e in range(2):
        steps, meta = store.read_episode(f"demo-{e}")
        want = expected_steps(e)
        assert set(steps) == set(want)
        for key, value in want.items():
            assert steps[key].dtype == value.dtype, key
            np.testing.assert_array_equal(steps[key], value, err_msg=key)
        assert meta["operator"] == "alice" and meta["source"] == "demo"
        assert meta["subtask_success"] == {"grasp": True, "cut": e == 0}
        assert meta["success"] is (e == 0)
        assert meta["return"] == float(e + 1)
    # Opening read-only wrote nothing (no lock file, no mirror refresh).
    assert sorted(p.relative_to(FIXTURE) for p in FIXTURE.rglob("*")) == before


def test_pre_move_store_accepts_appends_from_the_moved_code(tmp_path):
    copy = tmp_path / "store.zarr"
    shutil.copytree(FIXTURE, copy)
    store = EpisodeStore(copy, mode="a")
    steps = expected_steps(1)
    store.append_episode(steps, {"id": "demo-2", "source": "demo", "terminated": False, "success": False})
    reopened = EpisodeStore(copy, mode="r")
    assert reopened.episode_ids() == ["demo-0", "demo-1", "demo-2"]
    np.testing.assert_array_equal(reopened.read_episode("demo-0")[0]["cam"], expected_steps(0)["cam"])
    np.testing.assert_array_equal(reopened.read_episode("demo-2")[0]["state"], steps["state"])
