"""Demonstrations in the scissors graph's layout (sernf_sim.scissors_demos): the observations the
policy node would see through sim_world and the drivers, the bridge's executed actions, 10 Hz."""

import os

import numpy as np
import pytest

from sernf_data.store import EpisodeStore
from sernf_sim.hand_pick_place import model as M
from sernf_sim.hand_pick_place import rotations as R
from sernf_sim.scissors_demos import (
    GraphDemoLayout,
    GraphLayoutEnv,
    RecordingConfig,
    record_graph_demos,
)
from sernf_sim.sim_world import BaseFrame

pytestmark = pytest.mark.skipif(os.environ.get("MUJOCO_GL") not in ("egl", "osmesa"),
                                reason="needs an offscreen MuJoCo renderer (MUJOCO_GL=egl or osmesa)")

SIZE = 32
JOINTS = M.NUM_FINGER_JOINTS
# A base that is not the shipped one: a pose left in world coordinates would not pass.
BASE = (-0.4, 0.1, -0.2, 1.0, 0.0, 0.0, 0.0)


def _layout(**changes) -> GraphDemoLayout:
    values = dict(image_size=SIZE, base_in_world=BASE, max_steps=120)
    values.update(changes)
    return GraphDemoLayout(**values)


def test_observations_are_the_worlds_views_joints_and_base_frame_pose():
    layout = _layout()
    env = GraphLayoutEnv(layout.make_task(2, seed=3), layout)
    obs = env.reset(seed=3)
    assert set(obs) == {"front_rgb", "under_rgb", "left_rgb", "hand_joints", "ee_pose"} == set(env.observation_spec)
    inner = env.env
    # The 'left' camera of the graph is the hand-mounted MuJoCo camera 'wrist' (sim_world.camera_sources).
    for key, camera in (("front_rgb", "front"), ("under_rgb", "under"), ("left_rgb", "wrist")):
        assert obs[key].shape == (2, SIZE, SIZE, 3) and obs[key].dtype == np.uint8
        for i in range(2):
            np.testing.assert_array_equal(obs[key][i], inner.render_camera(i, camera, SIZE))
    assert not np.array_equal(obs["front_rgb"][0], obs["left_rgb"][0])
    np.testing.assert_allclose(obs["hand_joints"], np.stack([inner.finger_state(i)[0] for i in range(2)]), atol=1e-6)
    frame = BaseFrame.from_tuple(BASE)
    for i in range(2):
        world = inner.ee_pose()[i]
        p, q = frame.to_base(world[:3], world[3:])
        np.testing.assert_allclose(obs["ee_pose"][i, :3], p, atol=1e-6)
        np.testing.assert_allclose(obs["ee_pose"][i, 3:], q, atol=1e-6)
    # The hand's home in this base frame: world home minus the base's offset.
    np.testing.assert_allclose(obs["ee_pose"][0, :3], np.asarray(M.HAND_HOME_POS) - np.asarray(BASE[:3]), atol=2e-3)


def test_the_task_executes_what_the_bridge_would():
    layout = _layout(max_translation_m=0.015, max_rotation_rad=0.05)
    task = layout.make_task(1, seed=0)
    assert task.config.max_pos_delta == 0.015 and task.config.max_rot_delta == 0.05
    assert task.config.control_hz == 10.0 and task.config.max_steps == 120
    # The bridge's box is in the base frame, the task's in the world frame.
    np.testing.assert_allclose(task.config.workspace_low, np.array(layout.workspace_low) + BASE[:3])
    np.testing.assert_allclose(task.config.workspace_high, np.array(layout.workspace_high) + BASE[:3])


def test_recorded_store_has_the_graph_layout(tmp_path):
    layout = _layout()
    counts = record_graph_demos(layout, RecordingConfig(num_demos=2, num_envs=2, seed=1), tmp_path / "demos",
                                log=lambda _: None)
    assert counts["episodes"] == 2 and counts["steps"] > 0
    assert not (tmp_path / "demos.partial").exists()
    store = EpisodeStore(str(tmp_path / "demos"), mode="r")
    spec = store.spec
    assert spec.action_dim == 24 and spec.control_rate_hz == 10.0
    assert {k: (tuple(v.shape), v.kind) for k, v in spec.obs.items()} == {
        "front_rgb": ((SIZE, SIZE, 3), "rgb"), "under_rgb": ((SIZE, SIZE, 3), "rgb"),
        "left_rgb": ((SIZE, SIZE, 3), "rgb"), "hand_joints": ((JOINTS,), "lowdim"), "ee_pose": ((7,), "lowdim")}
    arrays = store.load_arrays()
    a = arrays.arrays
    steps = int(store.num_steps)
    assert steps == counts["steps"] and a["action"].shape == (steps, 24) and a["front_rgb"].shape == (steps, SIZE, SIZE, 3)
    for i in store.episode_ids():
        meta = store.episode_metadata(i)
        assert meta["source"] == "demo" and meta["extra"]["variant"] == "nominal"
    # 10 Hz: consecutive steps of an episode are 0.1 s apart.
    starts = np.r_[0, arrays.episode_ends[:-1]]
    for s, e in zip(starts, arrays.episode_ends, strict=True):
        np.testing.assert_allclose(np.diff(a["timestamp"][s:e]), 0.1, atol=1e-9)
        assert a["timestamp"][s] == 0.0
        # Each episode starts at the hand's home, in the base frame.
        np.testing.assert_allclose(a["ee_pose"][s, :3], np.asarray(M.HAND_HOME_POS) - np.asarray(BASE[:3]), atol=2e-3)
    # Executed actions: unit quaternion deltas (w >= 0) within the bridge's limits, joint targets
    # within the ORCA ranges; the hand actually moves.
    act = a["action"].astype(np.float64)
    assert np.all(np.linalg.norm(act[:, :3], axis=1) <= layout.max_translation_m + 1e-6)
    np.testing.assert_allclose(np.linalg.norm(act[:, 3:7], axis=1), 1.0, atol=1e-5)
    assert np.all(act[:, 3] >= 0)
    assert np.all(R.angle(act[:, 3:7]) <= layout.max_rotation_rad + 1e-5)
    low = np.array([s.range[0] for s in M.FINGER_JOINTS])
    high = np.array([s.range[1] for s in M.FINGER_JOINTS])
    assert np.all(act[:, 7:] >= low - 1e-6) and np.all(act[:, 7:] <= high + 1e-6)
    assert np.ptp(a["ee_pose"][:, :3], axis=0).max() > 0.05  # the expert moved the arm
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        record_graph_demos(layout, RecordingConfig(num_demos=1), tmp_path / "demos")


def test_layouts_the_recording_cannot_honour_are_refused():
    names = [s.name for s in M.FINGER_JOINTS]
    with pytest.raises(ValueError, match="mislabel joints"):
        GraphDemoLayout(hand_joint_names=tuple(names[1:] + names[:1]))
    with pytest.raises(ValueError, match="must not rotate the base"):
        GraphDemoLayout(base_in_world=(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="same \\(non-zero\\) length"):
        GraphDemoLayout(image_keys=("front_rgb",), camera_sources=("front", "under"))
    with pytest.raises(ValueError, match="distinct"):
        GraphDemoLayout(image_keys=("front_rgb", "front_rgb", "left_rgb"))
    with pytest.raises(ValueError, match="image_size"):
        GraphDemoLayout(image_size=4)
    with pytest.raises(ValueError, match="num_demos"):
        RecordingConfig(num_demos=0)
    with pytest.raises(ValueError, match="expert_quality"):
        RecordingConfig(expert_quality=1.5)
