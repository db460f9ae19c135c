"""MJCF of the hand pick-and-place scene, written here from primitives, plus named indices.

The scene is a table with two free objects (a red box and a blue cylinder), a green target
square drawn on the table (a mocap body, so each MjData can place it independently) and an
ORCA-inspired hand: a palm, three fingers (index, middle, ring) with abduction + three flexion
joints each, and an opposable thumb (opposition roll, then three flexion joints): 16 finger
joints, all driven by position actuators.

The hand is a free body welded to a mocap body (``ee_target``). Writing the mocap pose is the
simulated counterpart of the Franka bridge writing an impedance equilibrium pose: the soft weld
pulls the hand there with a finite stiffness (a "gain"), contacts can push it away, and gravity
compensation on the hand bodies stands in for the arm's own gravity compensation. This is much
cheaper and more stable than simulating a 7-DoF arm and it keeps the relative-pose action
semantics exact.

End-effector (EE) frame = the hand body frame: origin on the palm surface, +z out of the palm
(the approach direction), +x from the thumb towards the fingers, +y = z × x.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

# ----------------------------------------------------------------------------------------------
# Geometry constants (metres). Module-level so the environment, the expert and the tests agree.
# ----------------------------------------------------------------------------------------------

MAX_IMAGE_SIZE = 512
"""Largest offscreen image side the model's framebuffer allows (pixels)."""

TABLE_TOP_Z = 0.0
"""Height of the table surface (world z)."""
TABLE_HALF_XY = (0.35, 0.45)
"""Half extents of the table top in x and y."""

OBJECT_NAMES = ("box", "cylinder")
"""The two graspable objects, in the order used by configs and ``object_state``."""
BOX_HALF = (0.022, 0.022, 0.04)
"""Half sizes of the box object."""
CYL_RADIUS = 0.022
"""Radius of the cylinder object."""
CYL_HALF_HEIGHT = 0.04
"""Half height of the cylinder object."""
OBJECT_HALF_HEIGHT = 0.04
"""Both objects rest with their centre this far above the table."""
OBJECT_MASS = 0.06
"""Nominal mass of each object (kg)."""
OBJECT_FRICTION = 1.3
"""Nominal sliding friction of the objects (the pair uses the max of both geoms, so the hand
and table use a lower value and this one decides)."""

OBJECT_TORSION = 0.01
"""Torsional friction coefficient of the objects (a contact-patch radius, m)."""

TARGET_HALF = 0.06
"""Half side of the square target region drawn on the table."""

PALM_HALF = (0.032, 0.036, 0.012)
"""Half sizes of the palm box (x along the fingers, z = palm thickness)."""
FINGER_RADIUS = 0.008
"""Capsule radius of all finger segments."""
FINGER_Y = (-0.02, 0.0, 0.02)
"""y offsets of the index, middle and ring finger bases on the palm's +x edge."""
FINGER_LENGTHS = (0.030, 0.022, 0.018)
"""Proximal, middle, distal segment lengths of the fingers."""
THUMB_LENGTHS = (0.028, 0.022, 0.018)
"""Metacarpal, proximal, distal segment lengths of the thumb."""
THUMB_PAD_HALF_WIDTH = 0.009
"""The thumb's outer segments are two parallel capsules this far either side of its axis."""

FINGER_KP = 0.3
"""Position gain of the finger actuators (N·m/rad)."""
FINGER_FRICTION = 1.2
"""Sliding friction of the finger segments (rubbery pads)."""
FINGER_TIMECONST = 0.1
"""Time constant (s) of the first-order filter between a finger target and its actuator."""
THUMB_KP_SCALE = 1.5
"""Thumb actuator gain relative to the fingers': the thumb opposes three fingers alone, and a
weaker thumb lets them push a grasped object into it until it yields."""
SIDEWAYS_KP_SCALE = 2.0
"""Gain of the sideways joints (finger abduction, thumb opposition) relative to their finger's
flexion gain: a soft sideways joint lets a squeezed object twist the finger out of the grasp,
which made grasps fail under a few hundredths of a radian of command noise."""


def actuator_kp(joint: str) -> float:
    """Position gain (N·m/rad) of the actuator driving finger joint ``joint``."""
    kp = FINGER_KP * (THUMB_KP_SCALE if joint.startswith(THUMB_NAME) else 1.0)
    if joint.endswith(("_abd", "_opp")):
        kp *= SIDEWAYS_KP_SCALE
    return kp


FINGER_NAMES = ("index", "middle", "ring")
THUMB_NAME = "thumb"

HAND_HOME_POS = (0.0, 0.0, 0.22)
"""Initial EE position (world)."""
HAND_HOME_QUAT = (0.0, 1.0, 0.0, 0.0)
"""Initial EE orientation (w, x, y, z): 180° about world x, so the palm faces down and the
fingers point along world +x."""


@dataclass(frozen=True)
class JointSpec:
    """One finger joint: name, axis in its body frame, range (rad), open/home position."""

    name: str
    axis: tuple[float, float, float]
    range: tuple[float, float]
    home: float


def finger_joint_specs() -> list[JointSpec]:
    """The 16 finger joints in actuator / action order (fingers first, then the thumb)."""
    specs: list[JointSpec] = []
    # Flexion rotates a finger (which points along +x at q=0) towards +z, the palm side: that is
    # a rotation about -y. Abduction is about the palm normal z.
    for f in FINGER_NAMES:
        specs += [
            JointSpec(f"{f}_abd", (0.0, 0.0, 1.0), (-0.3, 0.3), 0.0),
            JointSpec(f"{f}_mcp", (0.0, -1.0, 0.0), (-0.2, 2.0), 0.9),
            JointSpec(f"{f}_pip", (0.0, -1.0, 0.0), (0.0, 1.8), 0.3),
            JointSpec(f"{f}_dip", (0.0, -1.0, 0.0), (0.0, 1.5), 0.2),
        ]
    # The thumb points along -x at q=0; flexing it towards +z is a rotation about +y. The first
    # joint rolls the whole thumb about the palm's x axis, which turns its flexion plane: the
    # opposition degree of freedom (its axis is not parallel to any finger flexion axis).
    specs += [
        JointSpec("thumb_opp", (1.0, 0.0, 0.0), (-0.7, 0.7), 0.0),
        JointSpec("thumb_cmc", (0.0, 1.0, 0.0), (-0.2, 2.0), 0.9),
        JointSpec("thumb_mcp", (0.0, 1.0, 0.0), (0.0, 1.6), 0.3),
        JointSpec("thumb_ip", (0.0, 1.0, 0.0), (0.0, 1.5), 0.2),
    ]
    return specs


FINGER_JOINTS = finger_joint_specs()
NUM_FINGER_JOINTS = len(FINGER_JOINTS)


def _fmt(v) -> str:
    return " ".join(f"{float(x):.6g}" for x in v)


def _look_xyaxes(pos, target, up=(0.0, 0.0, 1.0)) -> str:
    """MJCF ``xyaxes`` of a camera at ``pos`` looking at ``target`` (MuJoCo cameras look
    along their -z axis; x is image right, y image up)."""
    pos, target, up = (np.asarray(v, dtype=float) for v in (pos, target, up))
    d = target - pos
    d /= np.linalg.norm(d)
    x = np.cross(d, up)
    x /= np.linalg.norm(x)
    y = np.cross(x, d)
    return _fmt(np.concatenate([x, y]))


def _finger_xml(name: str, lengths, joints: list[JointSpec]) -> str:
    """Nested bodies of one finger: two joints on the first body, one on each further body,
    one capsule per segment (two side by side for the thumb's outer segments)."""
    (l1, l2, l3) = lengths
    j = {s.name.split("_", 1)[1]: s for s in joints}
    sign = -1.0 if name == THUMB_NAME else 1.0  # the thumb extends along -x

    def jx(s: JointSpec) -> str:
        return f'<joint name="{s.name}" axis="{_fmt(s.axis)}" range="{_fmt(s.range)}"/>'

    first = jx(j["opp"]) + jx(j["cmc"]) if name == THUMB_NAME else jx(j["abd"]) + jx(j["mcp"])
    second = jx(j["mcp"]) if name == THUMB_NAME else jx(j["pip"])
    third = jx(j["ip"]) if name == THUMB_NAME else jx(j["dip"])
    seg = 'class="finger" type="capsule"'

    def outer(i: int, length: float, extra: str = "") -> str:
        # Finger segments are capsules. The thumb's two outer segments are broad pads (two
        # parallel capsules, as wide as two fingers) instead: a single round thumb opposing a
        # round object squeezes it out sideways as soon as the grasp is a few mm off-centre.
        if name != THUMB_NAME:
            return (
                f'<geom name="{name}_seg{i}" {seg} fromto="0 0 0 {sign * length:.4f} 0 0"{extra}/>'
            )
        w = THUMB_PAD_HALF_WIDTH
        return "".join(
            f'<geom name="{name}_seg{i}{suffix}" {seg} fromto="0 {y} 0 {sign * length:.4f} {y} 0"{extra}/>'
            for suffix, y in (("", -w), ("b", w))
        )

    return f"""
        {first}
        <geom name="{name}_seg1" {seg} fromto="0 0 0 {sign * l1:.4f} 0 0"/>
        <body name="{name}_2" pos="{sign * l1:.4f} 0 0">
          {second}
          {outer(2, l2)}
          <body name="{name}_3" pos="{sign * l2:.4f} 0 0">
            {third}
            {outer(3, l3, ' material="tip"')}
          </body>
        </body>"""


def build_mjcf(timestep: float = 0.004) -> str:
    """The scene as an MJCF string (see the module docstring)."""
    px, py, pz = PALM_HALF
    fingers = []
    for f, y in zip(FINGER_NAMES, FINGER_Y, strict=True):
        js = [s for s in FINGER_JOINTS if s.name.startswith(f + "_")]
        fingers.append(
            f'<body name="{f}_1" pos="{px + 0.004:.4f} {y:.4f} -0.004">'
            + _finger_xml(f, FINGER_LENGTHS, js)
            + "</body>"
        )
    tjs = [s for s in FINGER_JOINTS if s.name.startswith("thumb_")]
    thumb = (
        f'<body name="thumb_1" pos="{-(px + 0.004):.4f} 0 -0.004">'
        + _finger_xml(THUMB_NAME, THUMB_LENGTHS, tjs)
        + "</body>"
    )
    actuators = "\n".join(
        f'<position name="{s.name}" joint="{s.name}" class="finger" ctrlrange="{_fmt(s.range)}"'
        f' kp="{actuator_kp(s.name):.6g}"/>'
        for s in FINGER_JOINTS
    )
    front_pos = (0.26, 0.0, 0.56)
    front_xy = _look_xyaxes(front_pos, (-0.08, 0.0, 0.03))
    tx, ty = TABLE_HALF_XY
    bx, by, bz = BOX_HALF
    # Wrist camera: beside the palm (hand -y side), looking at the space between fingers and
    # thumb where the object ends up, like the paper's hand-mounted camera that shows finger
    # placement. The front camera looks at the workspace from across the table.
    wrist_pos = (-0.01, -0.075, -0.025)
    wrist_xy = _look_xyaxes(wrist_pos, (0.01, 0.0, 0.08), up=(1.0, 0.0, 0.0))
    # Under camera (sim_world's "under" view, the paper's second hand-mounted camera): below the
    # wrist on the other side than the wrist camera, looking past the thumb into the grasp.
    under_pos = (-(px + 0.04), 0.05, 0.04)
    under_xy = _look_xyaxes(under_pos, (px * 0.5, 0.0, 0.10), up=(1.0, 0.0, 0.0))
    return f"""
<mujoco model="sernf_hand_pick_place">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{timestep}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <!-- Offscreen 84x84 observations: no shadows, no multisampling, coarse tessellation
         (~0.3 ms per frame with EGL/llvmpipe instead of ~3 ms; docs/design.md §3). -->
    <quality shadowsize="0" offsamples="0" numslices="12" numstacks="6" numquads="1"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.5 0.5 0.5" specular="0.05 0.05 0.05"/>
    <global offwidth="{MAX_IMAGE_SIZE}" offheight="{MAX_IMAGE_SIZE}"/>
  </visual>
  <asset>
    <material name="table" rgba="0.62 0.55 0.45 1"/>
    <material name="floor" rgba="0.30 0.32 0.35 1"/>
    <material name="hand" rgba="0.25 0.25 0.28 1"/>
    <material name="tip" rgba="0.85 0.75 0.6 1"/>
    <material name="target" rgba="0.2 0.8 0.25 1"/>
  </asset>
  <default>
    <!-- Hand geoms: contype 2 / conaffinity 1 so they touch the table and objects but never
         each other (self-collision of a simplified hand only costs time and jitter). -->
    <default class="hand">
      <geom material="hand" contype="2" conaffinity="1" friction="0.8 0.01 0.001"
            solref="0.01 1" density="800"/>
    </default>
    <default class="finger">
      <geom size="{FINGER_RADIUS}" material="hand" contype="2" conaffinity="1"
            friction="{FINGER_FRICTION} 0.01 0.001" solref="0.01 1" density="1000" condim="4"/>
      <!-- Armature keeps the light finger links well conditioned at a 4 ms step. The position
           actuators low-pass their target (timeconst, like the finger motors' limited
           bandwidth): without it a grasp shakes loose under 10 Hz command jitter of a few
           hundredths of a radian, which any learned policy produces. -->
      <joint damping="0.05" armature="0.002" limited="true"/>
      <position kp="{FINGER_KP}" kv="0.03" timeconst="{FINGER_TIMECONST}"/>
    </default>
    <default class="object">
      <geom contype="1" conaffinity="3" condim="4" friction="{OBJECT_FRICTION} {OBJECT_TORSION} 0.001"
            solref="0.01 1"/>
    </default>
  </default>
  <worldbody>
    <light name="sun" directional="true" pos="0 0 2" dir="0.3 0.2 -1" castshadow="false"
           diffuse="0.6 0.6 0.6"/>
    <geom name="floor" type="plane" size="2 2 0.1" pos="0 0 -0.75" material="floor"
          contype="1" conaffinity="1"/>
    <geom name="table" type="box" size="{tx} {ty} 0.02" pos="0 0 {TABLE_TOP_Z - 0.02}"
          material="table" contype="1" conaffinity="3" friction="0.6 0.01 0.001"/>
    <camera name="front" pos="{_fmt(front_pos)}" xyaxes="{front_xy}" fovy="62"/>
    <body name="target" mocap="true" pos="-0.12 0 {TABLE_TOP_Z}">
      <geom name="target_marker" type="box" size="{TARGET_HALF} {TARGET_HALF} 0.0008"
            material="target" contype="0" conaffinity="0"/>
    </body>
    <body name="ee_target" mocap="true" pos="{_fmt(HAND_HOME_POS)}" quat="{_fmt(HAND_HOME_QUAT)}"/>
    <body name="hand" pos="{_fmt(HAND_HOME_POS)}" quat="{_fmt(HAND_HOME_QUAT)}" gravcomp="1">
      <freejoint name="hand_free"/>
      <!-- Heavier than a real palm on purpose: the soft weld's sag under a held object scales
           with 1/mass, and a stiff effective "impedance" keeps hold actions still. gravcomp
           cancels gravity on the palm body (the arm's job); the light fingers are left to
           their actuators. -->
      <inertial pos="0 0 -0.03" mass="1.0" diaginertia="0.004 0.004 0.004"/>
      <geom name="palm" class="hand" type="box" size="{px} {py} {pz}" pos="0 0 {-pz}"/>
      <geom name="wrist" type="cylinder" size="0.03 0.03" pos="0 0 -0.05" material="hand"
            contype="0" conaffinity="0" mass="0"/>
      <camera name="wrist" pos="{_fmt(wrist_pos)}" xyaxes="{wrist_xy}" fovy="75"/>
      <camera name="under" pos="{_fmt(under_pos)}" xyaxes="{under_xy}" fovy="80"/>
      <site name="ee" pos="0 0 0" size="0.005"/>
      {"".join(fingers)}
      {thumb}
    </body>
    <body name="box" pos="0.08 0.1 {TABLE_TOP_Z + bz}">
      <freejoint name="box_free"/>
      <geom name="box" class="object" type="box" size="{bx} {by} {bz}" rgba="0.85 0.15 0.12 1"
            mass="{OBJECT_MASS}"/>
    </body>
    <body name="cylinder" pos="0.08 -0.1 {TABLE_TOP_Z + CYL_HALF_HEIGHT}">
      <freejoint name="cylinder_free"/>
      <geom name="cylinder" class="object" type="cylinder" size="{CYL_RADIUS} {CYL_HALF_HEIGHT}"
            rgba="0.15 0.3 0.9 1" mass="{OBJECT_MASS}"/>
    </body>
  </worldbody>
  <equality>
    <!-- The "arm": hand welded to the commanded EE pose (mocap). solref sets the stiffness;
         the domain shift scales its time constant like a changed impedance gain. -->
    <weld name="wrist_weld" body1="ee_target" body2="hand" solref="0.01 1" solimp="0.95 0.99 0.001"/>
  </equality>
  <actuator>
    {actuators}
  </actuator>
</mujoco>
"""


@dataclass(frozen=True)
class SceneIndex:
    """Addresses into MjModel / MjData arrays, resolved once per model by name."""

    hand_qpos: int
    hand_qvel: int
    hand_body: int
    ee_mocap: int
    target_mocap: int
    finger_qpos: np.ndarray
    finger_qvel: np.ndarray
    object_qpos: tuple[int, ...]
    object_qvel: tuple[int, ...]
    object_body: tuple[int, ...]
    object_geom: tuple[int, ...]
    table_geom: int
    floor_geom: int
    thumb_geoms: np.ndarray
    finger_geoms: np.ndarray
    hand_geoms: np.ndarray
    weld_eq: int

    @classmethod
    def from_model(cls, m: mujoco.MjModel) -> SceneIndex:
        def jid(n):
            return mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n)

        def bid(n):
            return mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, n)

        def gid(n):
            return mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, n)

        fj = [jid(s.name) for s in FINGER_JOINTS]
        hand_body = bid("hand")

        def colliding_geoms(bodies: set[int]) -> np.ndarray:
            return np.array(
                [g for g in range(m.ngeom) if m.geom_bodyid[g] in bodies and m.geom_contype[g]]
            )

        # Contact classification by body: the thumb's three bodies, the other fingers' bodies,
        # and the whole hand subtree (MuJoCo numbers parents before children, so one pass
        # collects the subtree).
        hand_bodies = {hand_body}
        for b in range(m.nbody):
            if m.body_parentid[b] in hand_bodies:
                hand_bodies.add(b)
        thumb = colliding_geoms({bid(f"{THUMB_NAME}_{i}") for i in (1, 2, 3)})
        fingers = colliding_geoms({bid(f"{f}_{i}") for f in FINGER_NAMES for i in (1, 2, 3)})
        hand_geoms = colliding_geoms(hand_bodies)
        return cls(
            hand_qpos=int(m.jnt_qposadr[jid("hand_free")]),
            hand_qvel=int(m.jnt_dofadr[jid("hand_free")]),
            hand_body=hand_body,
            ee_mocap=int(m.body_mocapid[bid("ee_target")]),
            target_mocap=int(m.body_mocapid[bid("target")]),
            finger_qpos=np.array([m.jnt_qposadr[j] for j in fj]),
            finger_qvel=np.array([m.jnt_dofadr[j] for j in fj]),
            object_qpos=tuple(int(m.jnt_qposadr[jid(f"{o}_free")]) for o in OBJECT_NAMES),
            object_qvel=tuple(int(m.jnt_dofadr[jid(f"{o}_free")]) for o in OBJECT_NAMES),
            object_body=tuple(bid(o) for o in OBJECT_NAMES),
            object_geom=tuple(gid(o) for o in OBJECT_NAMES),
            table_geom=gid("table"),
            floor_geom=gid("floor"),
            thumb_geoms=thumb,
            finger_geoms=fingers,
            hand_geoms=hand_geoms,
            weld_eq=mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_EQUALITY, "wrist_weld"),
        )


def load_model(timestep: float = 0.004) -> mujoco.MjModel:
    """Compile the scene."""
    return mujoco.MjModel.from_xml_string(build_mjcf(timestep))
