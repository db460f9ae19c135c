"""sernf-bag2zarr: analytic bags (sqlite3 and MCAP) convert to the exactly resampled values;
bad bags are skipped with a reason; converting twice adds nothing."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import synthetic_bags as sb
from scipy.spatial.transform import Rotation

from sernf_data.bag2zarr import (
    ConversionConfig,
    bag_sha256,
    convert_bags,
    format_end_reason,
    main,
    parse_end_reason,
)
from sernf_data.store import EpisodeStore

CONFIG = ConversionConfig(image_topics={"front_rgb": "/cameras/front/image_raw",
                                        "under_rgb": "/cameras/under/image_raw/compressed"})
# Tolerances: the store keeps float32 observations/actions; float64 timestamps are exact.
ATOL_F32 = 2e-6


def expected_grid(start=0.05, end=1.95):
    # t0: the latest first sample over the observation streams and the END/START span; every
    # stream's first stamp is T0 + 0.0037, so t0 = START.
    t0 = sb.T0 + max(start, 0.0037)
    last_sample = sb.T0 + 0.0037 + math.floor((2.0 - 1e-12) * 40) / 40  # pose stream ends first
    t_last = min(sb.T0 + end, last_sample)
    # Steps whose action interval [t_k, t_k + 0.1) ends by t_last.
    n = int(math.floor((t_last - t0) / 0.1 + 1e-9))
    return t0 + 0.1 * np.arange(n)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_analytic_bag_converts_to_the_interpolated_values(tmp_path, storage):
    bag = sb.write_demo_bag(tmp_path / f"demo_{storage}", storage=storage)
    report = convert_bags([bag], tmp_path / "demos.zarr", CONFIG)
    assert not report.skipped, report.skipped
    store = EpisodeStore(tmp_path / "demos.zarr")
    (episode_id,) = store.episode_ids()
    steps, meta = store.read_episode(episode_id)
    grid = expected_grid()
    np.testing.assert_allclose(steps["timestamp"], grid, rtol=0, atol=1e-6)
    # Header stamps are used, not receive times (those lag by RECEIVE_LAG).
    np.testing.assert_allclose(steps["hand_joints"], sb.joints(grid), rtol=0, atol=ATOL_F32)
    np.testing.assert_allclose(steps["ee_pose"][:, :3], sb.ee_position(grid), rtol=0, atol=ATOL_F32)
    np.testing.assert_allclose(steps["ee_pose"][:, 3:], sb.ee_quat_wxyz(grid), rtol=0, atol=ATOL_F32)
    # Images: the latest frame at or before each step (camera at 30 Hz from T0 + 0.0037).
    frames = np.floor((grid - sb.T0 - 0.0037) * 30 + 1e-9).astype(int)
    for key in ("front_rgb", "under_rgb"):
        assert steps[key].dtype == np.uint8 and steps[key].shape == (grid.size, sb.H, sb.W, 3)
        for k, i in enumerate(frames):
            np.testing.assert_array_equal(steps[key][k], sb.frame(i), err_msg=f"{key} step {k}")
    # Action: arm deltas executed in [t_k, t_k+dt) composed; hand: the latest target before t_k+dt.
    command_t = sb.T0 + 0.0037 + np.arange(0, 61) / 30
    for k, t in enumerate(grid):
        n = int(np.count_nonzero((command_t >= t) & (command_t < t + 0.1)))
        rot = Rotation.from_rotvec([n * sb.ARM_ANGLE, 0, 0]).as_quat()  # xyzw
        want = [n * sb.ARM_STEP[0], 0, 0, rot[3], rot[0], rot[1], rot[2]]
        np.testing.assert_allclose(steps["action"][k, :7], want, rtol=0, atol=ATOL_F32, err_msg=f"step {k}")
        latest = command_t[command_t < t + 0.1][-1]
        np.testing.assert_allclose(steps["action"][k, 7:], sb.hand_target(latest), rtol=0, atol=ATOL_F32)
    # The reward at T0 + 1.23 belongs to the step whose (t_k, t_k + dt] holds it.
    (k_reward,) = np.flatnonzero(steps["reward"])
    assert grid[k_reward] < sb.T0 + 1.23 <= grid[k_reward] + 0.1 and steps["reward"][k_reward] == 1.0
    assert meta["subtask_success"] == {"retrieve": True, "cut": False} and meta["success"] is False
    assert meta["operator"] == "alice" and meta["terminated"] is True and meta["source"] == "demo"
    assert meta["extra"]["bag_sha256"] == bag_sha256(bag) and meta["extra"]["bag"] == bag.name
    assert store.spec.obs["ee_pose"].quaternion_at == 3 and store.spec.action_dim == 10


def test_same_bag_twice_adds_nothing_and_two_episodes_in_one_bag(tmp_path):
    demo = sb.DemoBag(duration=3.0, episodes=[
        (0.1, 1.0, format_end_reason("operator", {"retrieve": True, "cut": True})),
        (1.2, 2.9, format_end_reason("timeout", {"retrieve": False, "cut": False}))])
    bag = sb.write_demo_bag(tmp_path / "two", demo)
    first = convert_bags([bag], tmp_path / "s.zarr", CONFIG)
    assert first.episodes == 2 and first.successes == 1
    store = EpisodeStore(tmp_path / "s.zarr")
    metas = [store.episode_metadata(i) for i in store.episode_ids()]
    assert [m["terminated"] for m in metas] == [True, False]
    again = convert_bags([bag, shutil.copytree(bag, tmp_path / "renamed")], tmp_path / "s.zarr", CONFIG)
    assert again.episodes == 0 and sum(map(len, again.already_present.values())) == 4
    assert EpisodeStore(tmp_path / "s.zarr").num_episodes == 2


BAD = {
    "missing_topic": (sb.DemoBag(drop_topics=("/franka/ee_pose",)), "missing topic"),
    "gap": (sb.DemoBag(joint_gap=(0.6, 1.4)), "gap of"),
    "backwards": (sb.DemoBag(backwards_at=30), "backwards"),
    "encoding": (sb.DemoBag(encoding="mono8"), "encoding"),
    "no_end": (sb.DemoBag(episodes=[]), "no episode events"),
}


def test_bad_bags_are_skipped_one_line_each_and_the_good_ones_convert(tmp_path, capsys):
    bags = [sb.write_demo_bag(tmp_path / name, demo) for name, (demo, _) in BAD.items()]
    # A truncated MCAP file and a truncated sqlite3 database.
    for storage in ("mcap", "sqlite3"):
        bag = sb.write_demo_bag(tmp_path / f"truncated_{storage}", storage=storage)
        data_file = next(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3"))
        data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
        bags.append(bag)
    good = sb.write_demo_bag(tmp_path / "good")
    out = tmp_path / "store.zarr"
    code = main([*map(str, bags), str(good), "--out", str(out), "--image", "front_rgb=/cameras/front/image_raw",
                 "--image", "under_rgb=/cameras/under/image_raw/compressed"])
    assert code == 0
    captured = capsys.readouterr()
    skipped_lines = [line for line in captured.err.splitlines() if line.startswith("skipped ")]
    assert len(skipped_lines) == len(bags), captured.err
    for name, (_, why) in BAD.items():
        assert any(f"/{name}:" in line and why in line for line in skipped_lines), (name, skipped_lines)
    for storage in ("mcap", "sqlite3"):
        assert any(f"truncated_{storage}:" in line for line in skipped_lines)
    assert "episodes added" in captured.out and "bags skipped" in captured.out
    store = EpisodeStore(out)
    assert store.num_episodes == 1
    assert store.episode_metadata(store.episode_ids()[0])["extra"]["bag"] == "good"


def test_end_reason_round_trip():
    reason = format_end_reason("operator", {"retrieve": True, "cut": False}, "bob")
    assert parse_end_reason(reason) == ("operator", {"retrieve": True, "cut": False}, "bob")
    with pytest.raises(ValueError):
        format_end_reason("operator", {"bad name": True})
