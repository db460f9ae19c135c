"""Hand pick-and-place MJCF: it loads, is the ORCA v1 hand (the driver's joints, order and
ranges), the thumb really opposes, the distal links follow pip and the wrist moves the palm."""

from pathlib import Path

import mujoco
import numpy as np
import pytest
import yaml

from sernf_sim.hand_pick_place import model as M
from sernf_sim.hand_pick_place.expert import hand_pose

ORCA_V1_RIGHT = (
    Path(__file__).resolve().parents[2] / "orca_hand_driver" / "config" / "orca_v1_right.yaml"
)


@pytest.fixture(scope="module")
def model():
    return M.load_model()


def _finger_of(name: str) -> str:
    return name.split("_", 1)[0]


def test_mjcf_loads_and_is_built_from_primitives(model):
    assert model.nmesh == 0 and model.nhfield == 0  # no third-party meshes
    allowed = {
        mujoco.mjtGeom.mjGEOM_PLANE,
        mujoco.mjtGeom.mjGEOM_BOX,
        mujoco.mjtGeom.mjGEOM_CAPSULE,
        mujoco.mjtGeom.mjGEOM_CYLINDER,
        mujoco.mjtGeom.mjGEOM_SPHERE,
    }
    assert {int(t) for t in model.geom_type} <= {int(t) for t in allowed}
    d = mujoco.MjData(model)
    mujoco.mj_step(model, d, 50)  # the scene is stable on its own
    assert np.all(np.isfinite(d.qpos))


def test_hand_has_four_fingers_and_one_position_actuator_per_joint(model):
    names = [s.name for s in M.FINGER_JOINTS]
    assert len(names) == M.NUM_FINGER_JOINTS == 17
    fingers = {_finger_of(n) for n in names} - {M.WRIST_NAME}
    assert fingers == {*M.FINGER_NAMES, M.THUMB_NAME} and len(M.FINGER_NAMES) == 4
    # Every hand joint (the wrist included) is a hinge driven by exactly one position actuator,
    # in the same order; the passive distal links have none.
    assert model.nu == len(names)
    driven = []
    for a in range(model.nu):
        assert model.actuator_trntype[a] == mujoco.mjtTrn.mjTRN_JOINT
        assert model.actuator_biastype[a] == mujoco.mjtBias.mjBIAS_AFFINE  # position servo
        j = model.actuator_trnid[a, 0]
        assert model.jnt_type[j] == mujoco.mjtJoint.mjJNT_HINGE
        driven.append(mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j))
    assert driven == names  # action order == actuator order
    np.testing.assert_allclose(
        model.actuator_ctrlrange[:, 0], [s.range[0] for s in M.FINGER_JOINTS]
    )
    np.testing.assert_allclose(
        model.actuator_ctrlrange[:, 1], [s.range[1] for s in M.FINGER_JOINTS]
    )
    for s in M.FINGER_JOINTS:  # the joints' own limits are the ranges too
        j = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, s.name)
        assert model.jnt_limited[j]
        np.testing.assert_allclose(model.jnt_range[j], s.range)
        assert s.range[0] <= s.home <= s.range[1]


def test_hand_joints_are_the_orca_v1_drivers_names_order_and_ranges():
    """A policy or dataset moves between the simulated hand and the robot without remapping:
    the driver's hand model file is the reference (read here, not copied)."""
    orca = yaml.safe_load(ORCA_V1_RIGHT.read_text())["joints"]
    assert [s.name for s in M.FINGER_JOINTS] == [j["name"] for j in orca]
    np.testing.assert_allclose(
        [s.range for s in M.FINGER_JOINTS], np.deg2rad([j["range_deg"] for j in orca]), atol=1e-12
    )


def test_flexion_is_positive_and_abduction_turns_towards_the_thumb(model):
    d = mujoco.MjData(model)
    ix = M.SceneIndex.from_model(model)

    def tip(q, geom):
        d.qpos[ix.finger_qpos] = q
        mujoco.mj_forward(model, d)
        hand = d.xmat[ix.hand_body].reshape(3, 3)  # flange frame = EE frame
        g = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, geom)
        return hand.T @ (d.geom_xpos[g] - d.xpos[ix.hand_body])

    straight = hand_pose(fingers=(0.0, 0.0, 0.0), thumb=(0.0, 0.0, 0.0, 0.0))
    for f in M.FINGER_NAMES:
        for joint in ("mcp", "pip"):
            bent = straight.copy()
            bent[[s.name for s in M.FINGER_JOINTS].index(f"{f}_{joint}")] = 0.5
            # Flexion moves the tip towards the palm side (+z of the EE frame).
            assert tip(bent, f"{f}_seg3")[2] > tip(straight, f"{f}_seg3")[2] + 0.005
        spread = straight.copy()
        spread[[s.name for s in M.FINGER_JOINTS].index(f"{f}_abd")] = 0.3
        # Positive abduction turns the finger towards the thumb side (-y, the index side).
        assert tip(spread, f"{f}_seg3")[1] < tip(straight, f"{f}_seg3")[1] - 0.005
    assert np.all(np.diff(M.FINGER_Y) > 0)  # index ... pinky from the thumb side outwards


def test_distal_links_follow_pip(model):
    ix = M.SceneIndex.from_model(model)

    def settle(pip):
        d = mujoco.MjData(model)
        q = hand_pose(fingers=(0.0, 0.8, pip), thumb=(0.0, 0.0, 0.3, 0.3))
        d.qpos[ix.finger_qpos] = q
        d.ctrl[:] = q
        d.act[:] = q
        mujoco.mj_step(model, d, 200)
        out = {}
        for f in M.FINGER_NAMES:
            for j in ("pip", "distal"):
                jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, f"{f}_{j}")
                out[f, j] = d.qpos[model.jnt_qposadr[jid]]
        return out

    low, high = settle(0.3), settle(1.3)
    for f in M.FINGER_NAMES:
        # The coupling is compliant (it gives a few hundredths of a radian under the link's
        # weight), so compare the motion: the distal link turns by the ratio times the pip's.
        d_pip = high[f, "pip"] - low[f, "pip"]
        d_distal = high[f, "distal"] - low[f, "distal"]
        assert d_pip > 0.8
        assert d_distal == pytest.approx(M.DISTAL_COUPLING * d_pip, rel=0.2)
        assert high[f, "distal"] == pytest.approx(M.DISTAL_COUPLING * high[f, "pip"], abs=0.06)


def test_wrist_flexes_the_palm_and_leaves_the_flange_where_the_arm_holds_it(model):
    d = mujoco.MjData(model)
    ix = M.SceneIndex.from_model(model)
    palm = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "palm")
    wrist = [s.name for s in M.FINGER_JOINTS].index(M.WRIST_NAME)
    mujoco.mj_forward(model, d)
    flange0, palm0 = d.xpos[ix.hand_body].copy(), d.xmat[palm].reshape(3, 3).copy()
    np.testing.assert_allclose(palm0, d.xmat[ix.hand_body].reshape(3, 3), atol=1e-9)
    q = d.qpos[ix.finger_qpos].copy()
    q[wrist] = 0.4  # flexion
    d.qpos[ix.finger_qpos] = q
    mujoco.mj_forward(model, d)
    np.testing.assert_allclose(d.xpos[ix.hand_body], flange0)
    # The fingertips swing towards the palm side (+z of the flange frame) by the wrist angle.
    normal = d.xmat[palm].reshape(3, 3)[:, 2]
    assert np.degrees(np.arccos(np.clip(normal @ palm0[:, 2], -1, 1))) == pytest.approx(
        np.degrees(0.4), abs=0.5
    )
    fingers_dir = d.xmat[palm].reshape(3, 3)[:, 0]
    assert fingers_dir @ palm0[:, 2] > 0.3


def test_hand_is_welded_to_a_mocap_end_effector_with_two_cameras(model):
    ix = M.SceneIndex.from_model(model)
    assert model.eq_type[ix.weld_eq] == mujoco.mjtEq.mjEQ_WELD
    assert {model.eq_obj1id[ix.weld_eq], model.eq_obj2id[ix.weld_eq]} == {
        ix.hand_body,
        mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "ee_target"),
    }
    assert ix.ee_mocap >= 0 and ix.target_mocap >= 0
    wrist = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "wrist")
    front = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "front")
    assert wrist >= 0 and front >= 0
    assert model.cam_bodyid[wrist] == ix.hand_body  # moves with the hand
    assert model.cam_bodyid[front] == 0  # fixed in the world


def _world_axes(model, names):
    d = mujoco.MjData(model)
    mujoco.mj_forward(model, d)
    out = {}
    for n in names:
        j = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n)
        out[n] = d.xaxis[j].copy()
    return out


def test_thumb_is_opposable(model):
    names = [s.name for s in M.FINGER_JOINTS]
    axes = _world_axes(model, names)
    flexion = [axes[f"{f}_{j}"] for f in M.FINGER_NAMES for j in ("mcp", "pip")]
    roll = axes["thumb_abd"]
    # The thumb's abduction (opposition roll) axis is not parallel to any finger flexion axis
    # (nor to the abduction axes): it is a genuinely different degree of freedom.
    for a in flexion + [axes[f"{f}_abd"] for f in M.FINGER_NAMES]:
        assert abs(np.dot(roll, a)) < 0.5
    # Flexing brings the thumb tip and the finger tips towards each other (opposition), i.e.
    # they close on the same object from opposite sides.
    d = mujoco.MjData(model)
    ix = M.SceneIndex.from_model(model)

    def geom_pos(q, name):
        d.qpos[ix.finger_qpos] = q
        mujoco.mj_forward(model, d)
        return d.geom_xpos[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, name)].copy()

    def tip_gap(q):
        return np.linalg.norm(geom_pos(q, "thumb_seg3") - geom_pos(q, "middle_seg3"))

    open_q = hand_pose(fingers=(0.0, 0.6, 0.2), thumb=(-0.4, 0.0, 0.2, 0.1))
    closed_q = hand_pose(fingers=(0.0, 1.6, 0.8), thumb=(0.7, 0.0, 0.4, 0.4))
    assert tip_gap(closed_q) < 0.5 * tip_gap(open_q)
    # Positive thumb abduction swings the flexed thumb tip across the palm towards the pinky
    # side (hand +y, world -y at home).
    flexed = hand_pose(fingers=(0.0, 1.2, 0.4), thumb=(0.2, 0.0, 0.4, 0.3))
    rolled = flexed.copy()
    rolled[names.index("thumb_abd")] = 0.5
    tip_a, tip_b = geom_pos(flexed, "thumb_seg3"), geom_pos(rolled, "thumb_seg3")
    assert tip_a[1] - tip_b[1] > 0.01


def test_hand_geoms_do_not_self_collide_but_touch_objects_and_table(model):
    ix = M.SceneIndex.from_model(model)

    def collide(g1, g2):
        return bool(
            model.geom_contype[g1] & model.geom_conaffinity[g2]
            or model.geom_contype[g2] & model.geom_conaffinity[g1]
        )

    hand = list(ix.hand_geoms)
    assert not any(collide(a, b) for a in hand for b in hand if a != b)
    for g in hand:
        assert collide(g, ix.table_geom)
        assert all(collide(g, og) for og in ix.object_geom)
    assert collide(ix.object_geom[0], ix.object_geom[1])
