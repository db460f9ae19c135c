"""Hand pick-and-place MJCF: it loads, has the required hand, and the thumb really opposes."""

import mujoco
import numpy as np
import pytest

from sernf_sim.hand_pick_place import model as M


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


def test_hand_has_four_fingers_with_at_least_twelve_actuated_joints(model):
    names = [s.name for s in M.FINGER_JOINTS]
    assert len(names) == M.NUM_FINGER_JOINTS >= 12
    fingers = {_finger_of(n) for n in names}
    assert len(fingers) >= 4 and M.THUMB_NAME in fingers
    # Every finger joint is a hinge driven by exactly one position actuator; the wrist is a
    # mocap weld (not actuated), so the actuator count equals the finger joint count.
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
    flexion = [axes[f"{f}_{j}"] for f in M.FINGER_NAMES for j in ("mcp", "pip", "dip")]
    opp = axes["thumb_opp"]
    # The opposition axis is not parallel to any finger flexion axis (nor to the abduction
    # axes): it is a genuinely different degree of freedom.
    for a in flexion + [axes[f"{f}_abd"] for f in M.FINGER_NAMES]:
        assert abs(np.dot(opp, a)) < 0.5
    # Flexing brings the thumb tip and the finger tips towards each other (opposition), i.e.
    # they close on the same object from opposite sides.
    d = mujoco.MjData(model)
    ix = M.SceneIndex.from_model(model)

    def tip_gap(q):
        d.qpos[ix.finger_qpos] = q
        mujoco.mj_forward(model, d)
        thumb = d.geom_xpos[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "thumb_seg3")]
        middle = d.geom_xpos[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "middle_seg3")]
        return np.linalg.norm(thumb - middle)

    open_q = np.array([0.0, 0.6, 0.2, 0.1] * 4)
    closed_q = np.array([0.0, 1.7, 0.8, 0.5] * 4)
    assert tip_gap(closed_q) < 0.5 * tip_gap(open_q)
    # The opposition joint moves the thumb tip sideways (out of the flexion plane).
    flexed = np.array([0.0, 1.2, 0.4, 0.3] * 4)
    rolled = flexed.copy()
    rolled[names.index("thumb_opp")] = 0.5
    d.qpos[ix.finger_qpos] = flexed
    mujoco.mj_forward(model, d)
    tip_a = d.geom_xpos[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "thumb_seg3")].copy()
    d.qpos[ix.finger_qpos] = rolled
    mujoco.mj_forward(model, d)
    tip_b = d.geom_xpos[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, "thumb_seg3")].copy()
    assert abs(tip_b[1] - tip_a[1]) > 0.01  # hand y is world -y at home: sideways motion


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
