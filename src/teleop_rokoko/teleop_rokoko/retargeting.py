"""Human hand (glove bones) → ORCA hand joint targets by key-vector retargeting.

The formulation of "Robotic Telekinesis" (Sivakumar et al., RSS 2022) that the ORCA lab's own
tooling uses: per frame, minimise over the joint vector q

    E(q) = Σ_i w_i ‖v_i^robot(q) − s · v_i^human‖²  +  λ_rest ‖q − q_rest‖²  +  λ_prev ‖q − q_prev‖²

where the key vectors v_i run palm → fingertip and palm → middle joint (PIP, thumb IP) for the
five fingers and thumb tip → fingertip for the four fingers, all in the palm frame (see
``hand_kinematics``), and s scales the operator's hand to the robot's. When the operator's thumb
and a fingertip come closer than ``pinch_threshold_m``, that thumb→finger target shrinks to zero
and its weight grows, so a human pinch closes the robot's pinch although the two hands differ in
size (the "projection" step of the paper). The problem is solved by a few damped Gauss-Newton
(Levenberg-Marquardt) steps with the analytic Jacobian, warm-started from the previous frame,
with every iterate projected onto the joint limits.

Per-operator calibration (``OperatorCalibration``): from a flat hand the scale s (least squares
over the key vectors), and from a flat hand and a fist a per-joint affine map of the flexion
joints (gain, offset) so that the operator's flat hand and fist reach the robot's flat hand and
(90 % of) full flexion. Saved to / loaded from YAML.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from teleop_rokoko.hand_kinematics import HandJoints, HandKinematics
from teleop_rokoko.studio_live import BonePose

__all__ = [
    "HumanHand",
    "OperatorCalibration",
    "RetargetConfig",
    "Retargeter",
    "calibrate",
    "human_hand",
]

_HUMAN_FINGERS = ("Thumb", "Index", "Middle", "Ring", "Little")


@dataclass(frozen=True)
class HumanHand:
    """An operator's hand in its palm frame: ``points`` [10, 3] = 5 middle joints (thumb IP,
    finger PIPs) then 5 tips, thumb first — the slots of ``HandKinematics.points``."""

    points: np.ndarray
    wrist_position: np.ndarray
    """[3] wrist position in the glove world frame."""
    palm_rotation: np.ndarray
    """[3, 3] palm frame axes (columns) in the glove world frame."""


def human_hand(bones: dict[str, BonePose], side: str) -> HumanHand:
    """Glove bones of one hand (``ActorFrame.hand``) → key points in the palm frame.

    Palm frame: origin at the wrist, +x towards the middle finger's knuckle, +y towards the
    index knuckle side (the thumb side), +z = x × y for a right hand. A left hand uses −(x × y):
    its coordinates are those of the mirror-image right hand, so a left glove can drive the
    right robot hand.
    """
    wrist = bones[f"{side}Hand"].position
    x = bones[f"{side}MiddleProximal"].position - wrist
    across = bones[f"{side}IndexProximal"].position - bones[f"{side}LittleProximal"].position
    nx = np.linalg.norm(x)
    if nx < 1e-4:
        raise ValueError("degenerate hand: wrist and middle knuckle coincide")
    x = x / nx
    y = across - np.dot(across, x) * x
    ny = np.linalg.norm(y)
    if ny < 1e-4:
        raise ValueError("degenerate hand: knuckles in line with the wrist")
    y = y / ny
    z = np.cross(x, y) * (1.0 if side == "right" else -1.0)
    rot = np.column_stack([x, y, z])
    mids = [f"{side}ThumbDistal"] + [f"{side}{f}Medial" for f in _HUMAN_FINGERS[1:]]
    tips = [f"{side}{f}Tip" for f in _HUMAN_FINGERS]
    world = np.array([bones[n].position for n in mids + tips])
    return HumanHand(points=(world - wrist) @ rot, wrist_position=wrist, palm_rotation=rot)


@dataclass
class RetargetConfig:
    """Weights and solver settings of the key-vector retargeting."""

    tip_weight: float = 1.0
    """Weight of the palm → fingertip vectors."""
    middle_weight: float = 0.3
    """Weight of the palm → PIP / thumb IP vectors (they fix how a finger bends)."""
    pinch_weight: float = 1.0
    """Weight of the thumb tip → fingertip vectors at ordinary distances."""
    pinch_threshold_m: float = 0.04
    """Operator thumb–fingertip distance (m) below which the robot is asked to close the gap."""
    pinch_contact_m: float = 0.012
    """Operator thumb–fingertip distance (m) that counts as touching (target distance 0)."""
    pinch_close_weight: float = 8.0
    """Weight of a thumb → fingertip vector whose operator distance is at pinch_contact_m."""
    rest_weight: float = 2e-5
    """λ_rest per rad² (an error of 1 cm² costs 1e-4): pulls free joints to the rest pose."""
    smooth_weight: float = 2e-4
    """λ_prev per rad²: pulls towards the previous frame's solution (temporal smoothness)."""
    iterations: int = 6
    """Gauss-Newton steps per frame (warm-started)."""
    damping: float = 1e-7
    """Initial Levenberg-Marquardt damping (m²/rad²)."""
    wrist_command_rad: float = 0.0
    """Fixed command of the hand's wrist joint (not retargeted; the arm follows the glove)."""

    def __post_init__(self) -> None:
        for name in ("tip_weight", "middle_weight", "pinch_weight", "pinch_close_weight",
                     "rest_weight", "smooth_weight", "damping"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not 0 <= self.pinch_contact_m < self.pinch_threshold_m:
            raise ValueError("need 0 <= pinch_contact_m < pinch_threshold_m")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")


@dataclass
class OperatorCalibration:
    """Per-operator calibration: hand scale and per-joint affine output map (in joint order)."""

    scale: float = 1.0
    """Robot / operator hand size ratio applied to the operator's key vectors."""
    joint_names: list[str] = field(default_factory=list)
    """Joint order of gain / offset (empty: identity map)."""
    gain: list[float] = field(default_factory=list)
    offset: list[float] = field(default_factory=list)
    """command = offset + gain · solution (rad), then clamped to the limits."""
    frame_yaw_rad: float = 0.0
    """Yaw from the glove world to the robot base frame (set by the frame calibration)."""
    operator: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and 0.3 < self.scale < 3.0):
            raise ValueError(f"scale must be in (0.3, 3), got {self.scale}")
        if not (len(self.gain) == len(self.offset) == len(self.joint_names)):
            raise ValueError("gain, offset and joint_names must have the same length")
        if not all(math.isfinite(v) for v in [*self.gain, *self.offset, self.frame_yaw_rad]):
            raise ValueError("calibration values must be finite")

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(yaml.safe_dump(asdict(self), sort_keys=False))
        tmp.replace(path)  # atomic: a crash never leaves half a calibration

    @staticmethod
    def load(path: str | Path) -> OperatorCalibration:
        data = yaml.safe_load(Path(path).read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a calibration mapping")
        known = {k: data[k] for k in ("scale", "joint_names", "gain", "offset", "frame_yaw_rad", "operator") if k in data}
        known["joint_names"] = [str(n) for n in known.get("joint_names", [])]
        known["gain"] = [float(v) for v in known.get("gain", [])]
        known["offset"] = [float(v) for v in known.get("offset", [])]
        return OperatorCalibration(**known)

    def output_map(self, joints: HandJoints) -> tuple[np.ndarray, np.ndarray]:
        """(gain, offset) in the hand's joint order; joints the file does not name map 1:1."""
        gain, offset = np.ones(len(joints.names)), np.zeros(len(joints.names))
        for name, g, o in zip(self.joint_names, self.gain, self.offset, strict=True):
            if name in joints.names:
                gain[joints.index(name)], offset[joints.index(name)] = g, o
        return gain, offset


class Retargeter:
    """Per-frame retargeting with warm starts; ``retarget(hand) -> q`` in the joint order."""

    def __init__(self, joints: HandJoints, config: RetargetConfig | None = None,
                 calibration: OperatorCalibration | None = None):
        self.joints = joints
        self.kin = HandKinematics(joints)
        self.config = config or RetargetConfig()
        self.active = self.kin.model_joint_indices  # [16] the optimised joints
        self.q_rest = joints.clamp(np.zeros(len(joints.names)))
        self.q_rest[joints.index("wrist")] = self.config.wrist_command_rad
        self.q_rest = joints.clamp(self.q_rest)
        self.set_calibration(calibration or OperatorCalibration())
        self.reset()

    def set_calibration(self, calibration: OperatorCalibration) -> None:
        self.calibration = calibration
        self._gain, self._offset = calibration.output_map(self.joints)

    def reset(self) -> None:
        """Forget the warm start (e.g. after the stream was stale)."""
        self.q_raw = self.q_rest.copy()

    def _targets(self, human: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Human key vectors (scaled) and weights: [14, 3], [14]."""
        cfg = self.config
        mids, tips = human[:5], human[5:]
        vectors = [tips * scale, mids * scale]
        weights = [np.full(5, cfg.tip_weight), np.full(5, cfg.middle_weight)]
        pinch = tips[1:] - tips[0]
        dist = np.linalg.norm(pinch, axis=1)
        ramp = np.clip((dist - cfg.pinch_contact_m) / (cfg.pinch_threshold_m - cfg.pinch_contact_m), 0.0, 1.0)
        # Within the threshold the target length shrinks linearly to zero at contact (continuous
        # at the threshold, where it is scale · threshold) and the weight grows.
        far = dist >= cfg.pinch_threshold_m
        shrink = np.where(far, scale, scale * cfg.pinch_threshold_m * ramp / np.maximum(dist, 1e-9))
        vectors.append(pinch * shrink[:, None])
        weights.append(np.where(far, cfg.pinch_weight,
                                cfg.pinch_close_weight + (cfg.pinch_weight - cfg.pinch_close_weight) * ramp))
        return np.concatenate(vectors), np.concatenate(weights)

    def _robot_vectors(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        points, jac = self.kin.points_and_jacobian(q)
        jac = jac[:, :, self.active]  # [10, 3, 16]
        v = np.concatenate([points[5:], points[:5], points[6:] - points[5]])
        jv = np.concatenate([jac[5:], jac[:5], jac[6:] - jac[5]])
        return v, jv  # [14, 3], [14, 3, 16]

    def solve(self, human_points: np.ndarray, q_init: np.ndarray, iterations: int | None = None,
              scale: float | None = None) -> tuple[np.ndarray, float]:
        """Minimise E from ``q_init``; returns (q within limits, final energy)."""
        cfg = self.config
        scale = self.calibration.scale if scale is None else scale
        targets, weights = self._targets(np.asarray(human_points, dtype=np.float64), scale)
        sw = np.sqrt(weights)[:, None]
        lo, hi = self.joints.lower[self.active], self.joints.upper[self.active]
        q = self.joints.clamp(np.array(q_init, dtype=np.float64))
        q_prev = q[self.active].copy()
        rest = self.q_rest[self.active]
        n = len(self.active)

        def residual(qa: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
            q[self.active] = qa
            v, jv = self._robot_vectors(q)
            r_vec = ((v - targets) * sw).ravel()
            j_vec = (jv * sw[:, :, None]).reshape(-1, n)
            r = np.concatenate([r_vec, math.sqrt(cfg.rest_weight) * (qa - rest),
                                math.sqrt(cfg.smooth_weight) * (qa - q_prev)])
            return r, j_vec, float(r @ r)

        qa = q_prev.copy()
        r, j_vec, energy = residual(qa)
        mu = cfg.damping
        reg = cfg.rest_weight + cfg.smooth_weight
        for _ in range(iterations or cfg.iterations):
            # Normal equations of the stacked residual (regularisers have identity Jacobians).
            h = j_vec.T @ j_vec + (reg + mu) * np.eye(n)
            m = j_vec.shape[0]
            g = (j_vec.T @ r[:m] + math.sqrt(cfg.rest_weight) * r[m:m + n]
                 + math.sqrt(cfg.smooth_weight) * r[m + n:])
            # Projected Newton: joints resting on a limit with the gradient pushing outwards are
            # held this step; the others take the Newton step of the reduced system (a clipped
            # full step stalls as soon as one joint sits on its limit, e.g. a fist's MCPs).
            held = ((qa <= lo + 1e-9) & (g > 0)) | ((qa >= hi - 1e-9) & (g < 0))
            free = ~held
            step = np.zeros(n)
            step[free] = np.linalg.solve(h[np.ix_(free, free)], g[free])
            candidate = np.clip(qa - step, lo, hi)
            r_new, j_new, e_new = residual(candidate)
            if e_new < energy:
                qa, r, j_vec, energy = candidate, r_new, j_new, e_new
                mu = max(mu * 0.3, 1e-12)
            else:
                mu *= 10.0
                residual(qa)  # restore q to the accepted iterate
        q[self.active] = qa
        return q, energy

    def retarget(self, hand: HumanHand | np.ndarray) -> np.ndarray:
        """One frame: operator key points → joint command (rad, within limits, joint order)."""
        points = hand.points if isinstance(hand, HumanHand) else np.asarray(hand, dtype=np.float64)
        if points.shape != (10, 3) or not np.all(np.isfinite(points)):
            raise ValueError("human key points must be a finite [10, 3] array")
        self.q_raw, _ = self.solve(points, self.q_raw)
        return self.command(self.q_raw)

    def command(self, q_raw: np.ndarray) -> np.ndarray:
        """Apply the operator's output map and the fixed wrist, then clamp to the limits."""
        q = self._offset + self._gain * q_raw
        q[self.joints.index("wrist")] = self.config.wrist_command_rad
        return self.joints.clamp(q)


def calibrate(retargeter: Retargeter, flat: np.ndarray, fist: np.ndarray, operator: str = "",
              frame_yaw_rad: float = 0.0) -> OperatorCalibration:
    """Operator calibration from key points of a flat hand and a fist (``HumanHand.points``).

    Scale: least-squares ratio of the robot's flat-hand key vectors to the operator's. Flexion
    joints (finger MCP/PIP): an affine map sending the operator's solved flat hand to the robot's
    flat hand (0) and the solved fist to 90 % of the joint's flexion limit, gain limited to
    [0.6, 1.8]; other joints pass through unchanged.
    """
    joints, kin = retargeter.joints, retargeter.kin
    flat, fist = np.asarray(flat, dtype=np.float64), np.asarray(fist, dtype=np.float64)
    robot_flat = kin.points(joints.clamp(np.zeros(len(joints.names))))
    scale = float(np.sum(robot_flat * flat) / np.sum(flat * flat))
    scale = float(np.clip(scale, 0.5, 2.0))
    q_flat, _ = retargeter.solve(flat, retargeter.q_rest, iterations=60, scale=scale)
    q_fist, _ = retargeter.solve(fist, q_flat, iterations=60, scale=scale)
    names, gains, offsets = [], [], []
    for name in joints.names:
        if not name.endswith(("_mcp", "_pip")) or name.startswith("thumb"):
            continue
        j = joints.index(name)
        span = q_fist[j] - q_flat[j]
        target_fist = 0.9 * joints.upper[j]
        gain = float(np.clip(target_fist / span, 0.6, 1.8)) if span > 0.2 else 1.0
        names.append(name)
        gains.append(gain)
        offsets.append(float(-gain * q_flat[j]))
    return OperatorCalibration(scale=scale, joint_names=names, gain=gains, offset=offsets,
                               frame_yaw_rad=frame_yaw_rad, operator=operator)
