"""MJCF of the hand pick-and-place scene, written here from primitives, plus named indices.

The scene is a table with two free objects (a red box and a blue cylinder), a green target
square drawn on the table (a mocap body, so each MjData can place it independently) and the
ORCA v1 right hand, simplified to capsules and boxes but with the robot's 17 joints: the same
names, order, ranges and sign conventions as the ORCA driver (``orca_hand_driver``'s
``orca_v1_right.yaml``), so actions, observations and datasets move between this simulation
and the robot without remapping. Four fingers (index, middle, ring, pinky) with abduction,
mcp and pip joints and a passive distal link coupled to pip; an opposable thumb (mcp, abd, pip,
dip); a wrist hinge between the arm's flange and the palm. All 17 are driven by position
actuators, in :data:`FINGER_JOINTS` order.

The flange is a free body welded to a mocap body (``ee_target``). Writing the mocap pose is the
simulated counterpart of the Franka bridge writing an impedance equilibrium pose: the soft weld
pulls the flange there with a finite stiffness (a "gain"), contacts can push it away, and
gravity compensation on the flange and palm stands in for the arm's own gravity compensation.
This is much cheaper and more stable than simulating a 7-DoF arm and it keeps the
relative-pose action semantics exact.

End-effector (EE) frame = the flange body frame (the arm's end effector with the hand's mount
offset; the wrist belongs to the hand): origin on the palm surface when the wrist is at 0, +z out
of the palm (the approach direction), +x from the thumb towards the fingers, +y = z × x (the
pinky side of this right hand).
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
FINGER_Y = (-0.024, -0.008, 0.008, 0.024)
"""y offsets of the index, middle, ring and pinky bases on the palm's +x edge. A right hand
seen from above with the palm down and the fingers forward has its thumb side on the left,
which is hand -y (the EE frame: y = z × x), so the index is the most negative."""
FINGER_LENGTHS = (0.030, 0.022, 0.018)
"""Proximal, middle, distal segment lengths of the fingers."""
THUMB_LENGTHS = (0.028, 0.022, 0.018)
"""Metacarpal, proximal, distal segment lengths of the thumb."""
THUMB_PAD_HALF_WIDTH = 0.009
"""The thumb's outer segments are two parallel capsules this far either side of its axis."""
THUMB_BASE_FLEXION = 1.0
"""Fixed flexion (rad) of the thumb's base mount: ORCA's thumb_mcp moves only ±50°, so the
thumb root is angled towards the palm side and thumb_mcp = 0 already points it half-way down,
where the grasp needs it."""
DISTAL_COUPLING = 0.5
"""ORCA's fingers drive no distal joint: each finger's passive distal link follows its pip
joint at this ratio (a joint equality), as a finger's linkage/tendon couples them."""
WRIST_PIVOT = (-0.032, 0.0, -0.02)
"""Wrist hinge axis position in the flange (EE) frame: behind the palm's heel, so the palm and
fingers swing about the end of the forearm-side mount, as ORCA's wrist does."""

FINGER_KP = 0.3
"""Position gain of the finger actuators (N·m/rad)."""
FINGER_FRICTION = 1.2
"""Sliding friction of the finger segments (rubbery pads)."""
FINGER_TIMECONST = 0.1
"""Time constant (s) of the first-order filter between a finger target and its actuator."""
THUMB_KP_SCALE = 2.0
"""Thumb actuator gain relative to the fingers': the thumb opposes four fingers alone, and a
weaker thumb lets them push a grasped object into it until it yields."""
SIDEWAYS_KP_SCALE = 2.0
"""Gain of the sideways joints (finger and thumb abduction) relative to their finger's flexion
gain: a soft sideways joint lets a squeezed object twist the finger out of the grasp, which made
grasps fail under a few hundredths of a radian of command noise."""
WRIST_KP = 5.0
"""Position gain of the wrist actuator (N·m/rad): it carries the palm, the fingers and a held
object, so it is an order of magnitude stiffer than a finger (a held object then tilts the palm
by a few mrad)."""
WRIST_KV = 0.3
"""Damping gain of the wrist actuator (N·m·s/rad), about critical for the palm's inertia."""


FINGER_NAMES = ("index", "middle", "ring", "pinky")
THUMB_NAME = "thumb"
WRIST_NAME = "wrist"


def actuator_kp(joint: str) -> float:
    """Position gain (N·m/rad) of the actuator driving hand joint ``joint``."""
    if joint == WRIST_NAME:
        return WRIST_KP
    kp = FINGER_KP * (THUMB_KP_SCALE if joint.startswith(THUMB_NAME) else 1.0)
    if joint.endswith("_abd"):
        kp *= SIDEWAYS_KP_SCALE
    return kp


HAND_HOME_POS = (0.0, 0.0, 0.22)
"""Initial EE position (world)."""
HAND_HOME_QUAT = (0.0, 1.0, 0.0, 0.0)
"""Initial EE orientation (w, x, y, z): 180° about world x, so the palm faces down and the
fingers point along world +x."""


@dataclass(frozen=True)
class JointSpec:
    """One actuated hand joint: name, axis in its body frame, range (rad), home position."""

    name: str
    axis: tuple[float, float, float]
    range: tuple[float, float]
    home: float


def _deg(lo: float, hi: float) -> tuple[float, float]:
    return (float(np.deg2rad(lo)), float(np.deg2rad(hi)))


# ORCA v1 (right hand) joints in the order of its driver and its joint_states messages, with
# its published ranges of motion in degrees (orca_core's orcahand_v1_right configuration; the
# driver's orca_v1_right.yaml holds the same list, and a test keeps the two equal).
ORCA_V1_RANGES_DEG = {
    "thumb_mcp": (-50, 50),
    "thumb_abd": (-20, 42),
    "thumb_pip": (-12, 108),
    "thumb_dip": (-20, 112),
    "index_abd": (-37, 37),
    "index_mcp": (-20, 95),
    "index_pip": (-20, 108),
    "middle_abd": (-37, 37),
    "middle_mcp": (-20, 91),
    "middle_pip": (-20, 107),
    "ring_abd": (-37, 37),
    "ring_mcp": (-20, 91),
    "ring_pip": (-20, 107),
    "pinky_abd": (-37, 37),
    "pinky_mcp": (-20, 98),
    "pinky_pip": (-20, 108),
    "wrist": (-50, 30),
}

# Axes (sign conventions). A finger points along +x at q = 0: flexion (mcp, pip, and the
# passive distal link) turns it towards +z, the palm side, a rotation about -y, so positive =
# flexion as on the robot. Abduction is about the palm normal: positive turns a finger towards
# the thumb side (-y), i.e. about -z; ORCA's rest pose (index +25°, pinky -37°) is then a spread
# hand. The thumb points along -x from the palm's heel: thumb_mcp/pip/dip flex it towards +z
# (about +y); thumb_abd rolls its flexion plane about the palm's x axis, positive swinging the
# flexed thumb across the palm towards the pinky side (+y), i.e. opposition. The wrist flexes
# the palm towards its palm side (fingers towards +z), about -y like a finger.
_AXES = {
    "abd": (0.0, 0.0, -1.0),
    "mcp": (0.0, -1.0, 0.0),
    "pip": (0.0, -1.0, 0.0),
    "thumb_abd": (-1.0, 0.0, 0.0),
    "thumb_mcp": (0.0, 1.0, 0.0),
    "thumb_pip": (0.0, 1.0, 0.0),
    "thumb_dip": (0.0, 1.0, 0.0),
    "wrist": (0.0, -1.0, 0.0),
}

# Home: an open hand ready to straddle an object from above, fingers straight ahead and half
# flexed, thumb half flexed opposite them, wrist straight. Not ORCA's calibration rest pose
# (thumb_abd 42°, pinky_abd -37°): a thumb rolled to its stop and a splayed pinky grasp off-centre.
_HOME = {
    "mcp": 0.9,
    "pip": 0.3,
    "thumb_mcp": -0.1,
    "thumb_pip": 0.3,
    "thumb_dip": 0.2,
}


def finger_joint_specs() -> list[JointSpec]:
    """The 17 actuated hand joints in ORCA v1 order (= actuator and action order)."""
    specs = []
    for name, (lo, hi) in ORCA_V1_RANGES_DEG.items():
        kind = name.split("_", 1)[1] if "_" in name else name
        key = name if name.startswith(THUMB_NAME) or name == WRIST_NAME else kind
        axis = _AXES[key]
        if name == f"{THUMB_NAME}_abd":
            # The thumb mount is tilted by THUMB_BASE_FLEXION about +y; the roll stays about the
            # palm's x axis, expressed in the tilted frame.
            c, s = np.cos(THUMB_BASE_FLEXION), np.sin(THUMB_BASE_FLEXION)
            axis = (float(-c), 0.0, float(-s))
        specs.append(JointSpec(name, axis, _deg(lo, hi), _HOME.get(key, 0.0)))
    return specs


FINGER_JOINTS = finger_joint_specs()
"""The hand's actuated joints (fingers, thumb and wrist), ORCA v1 names and order."""
NUM_FINGER_JOINTS = len(FINGER_JOINTS)


def _fmt(v) -> str:
    return " ".join(f"{float(x):.12g}" for x in v)


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
    """Nested bodies of one finger: two joints on the first body (abduction, base flexion),
    one on each further body, one capsule per segment (two side by side for the thumb's outer
    segments). A finger's distal joint is passive, coupled to its pip by an equality."""
    (l1, l2, l3) = lengths
    j = {s.name.split("_", 1)[1]: s for s in joints}
    thumb = name == THUMB_NAME
    sign = -1.0 if thumb else 1.0  # the thumb extends along -x

    def jx(s: JointSpec) -> str:
        return f'<joint name="{s.name}" class="finger" axis="{_fmt(s.axis)}" range="{_fmt(s.range)}"/>'

    first = jx(j["abd"]) + jx(j["mcp"])
    second = jx(j["pip"])
    if thumb:
        third = jx(j["dip"])
    else:
        pip = j["pip"]
        third = (
            f'<joint name="{name}_distal" class="finger" axis="{_fmt(pip.axis)}"'
            f' range="{_fmt(np.multiply(pip.range, DISTAL_COUPLING))}"/>'
        )
    seg = 'class="finger" type="capsule"'

    def outer(i: int, length: float, extra: str = "") -> str:
        # Finger segments are capsules. The thumb's two outer segments are broad pads (two
        # parallel capsules, as wide as two fingers) instead: a single round thumb opposing a
        # round object squeezes it out sideways as soon as the grasp is a few mm off-centre.
        if not thumb:
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
    # The thumb mount is flexed by THUMB_BASE_FLEXION about +y (the thumb's flexion axis).
    tilt = f"{np.cos(THUMB_BASE_FLEXION / 2):.12g} 0 {np.sin(THUMB_BASE_FLEXION / 2):.12g} 0"
    thumb = (
        f'<body name="thumb_1" pos="{-(px + 0.004):.4f} 0 -0.004" quat="{tilt}">'
        + _finger_xml(THUMB_NAME, THUMB_LENGTHS, tjs)
        + "</body>"
    )
    # MuJoCo's default (soft) constraint: the distal link gives a few hundredths of a radian
    # under load like a compliant linkage. A stiff coupling (solref 0.008) made fingertips rigid
    # and halved the noisy expert's success (0.65 -> 0.37 on 100 layouts): they squeezed
    # objects out of the grasp.
    couplings = "\n".join(
        f'<joint name="{f}_distal_coupling" joint1="{f}_distal" joint2="{f}_pip"'
        f' polycoef="0 {DISTAL_COUPLING} 0 0 0"/>'
        for f in FINGER_NAMES
    )
    wrist = next(s for s in FINGER_JOINTS if s.name == WRIST_NAME)
    actuators = "\n".join(
        f'<position name="{s.name}" joint="{s.name}"'
        f' class="{"wrist" if s.name == WRIST_NAME else "finger"}" ctrlrange="{_fmt(s.range)}"'
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
      <joint damping="0.05" armature="0.002" limited="true" solreflimit="0.008 1"
             solimplimit="0.95 0.99 0.001"/>
      <position kp="{FINGER_KP}" kv="0.03" timeconst="{FINGER_TIMECONST}"/>
    </default>
    <default class="wrist">
      <joint damping="0.1" armature="0.01" limited="true"/>
      <position kp="{WRIST_KP}" kv="{WRIST_KV}" timeconst="{FINGER_TIMECONST}"/>
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
      <!-- The flange: the arm's end effector (its pose is ee_pose). Heavier than a real mount
           on purpose: the soft weld's sag under a held object scales with 1/mass, and a stiff
           effective "impedance" keeps hold actions still. gravcomp cancels gravity on the
           flange and the palm (the arm's job); the light fingers are left to their actuators. -->
      <inertial pos="0 0 -0.03" mass="0.7" diaginertia="0.003 0.003 0.003"/>
      <geom name="mount" type="cylinder" size="0.03 0.03" pos="0 0 -0.05" material="hand"
            contype="0" conaffinity="0" mass="0"/>
      <camera name="wrist" pos="{_fmt(wrist_pos)}" xyaxes="{wrist_xy}" fovy="75"/>
      <camera name="under" pos="{_fmt(under_pos)}" xyaxes="{under_xy}" fovy="80"/>
      <site name="ee" pos="0 0 0" size="0.005"/>
      <!-- ORCA's wrist: a hinge between the flange and the palm; at wrist = 0 the palm frame
           is the flange frame. -->
      <body name="palm" gravcomp="1">
        <joint name="{wrist.name}" class="wrist" pos="{_fmt(WRIST_PIVOT)}" axis="{_fmt(wrist.axis)}"
               range="{_fmt(wrist.range)}"/>
        <inertial pos="0 0 -0.012" mass="0.3" diaginertia="0.0003 0.0003 0.0003"/>
        <geom name="palm" class="hand" type="box" size="{px} {py} {pz}" pos="0 0 {-pz}"/>
        {"".join(fingers)}
        {thumb}
      </body>
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
    {couplings}
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
