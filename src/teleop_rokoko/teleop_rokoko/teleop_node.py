"""teleop_rokoko node: Rokoko Studio Live gloves → ORCA hand joint commands + Franka wrist commands.

A socket thread (``studio_live.StudioLiveReceiver``) keeps the newest valid frame of the chosen
actor. A steady-clock timer at ``rate_hz`` retargets the chosen hand onto the ORCA hand's
joints (``/orca_hand/joint_command``, names and limits from the hand model file) and turns the
glove's wrist pose into a relative end-effector command (``/franka/relative_pose_command``,
delta in the current EE frame; zero while the clutch is disengaged). Both carry the same stamp,
so a consumer can pair them into one action.

Safety: the node starts disengaged. A stream without a valid packet for ``stale_after_s`` (or a
frame without the chosen glove) stops all commanding — the drivers hold their last targets —
disengages the clutch (the operator re-engages deliberately), and says so in the log and on
``/diagnostics``. Dropped packets are counted by reason on ``/diagnostics``.

Services (std_srvs/Trigger): ``~/engage`` (needs a live glove and a recent ``/franka/ee_pose``),
``~/disengage``, ``~/calibrate_frame`` (point the flat hand along the robot's +x; disengaged
only), ``~/calibrate_flat`` and ``~/calibrate_fist`` (the operator holds the pose; after both the
operator calibration is computed, applied and saved to ``calibration_file``). Optional clutch
gesture: thumb tip on the little fingertip for ``gesture_hold_s``.
"""

from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_srvs.srv import Trigger

from sernf_data.ros.diagnostics import diagnostic_array
from sernf_data.ros.parameters import declare_config
from sernf_data.ros.spin import spin_node
from teleop_rokoko.frames import matrix_to_quat_wxyz, quat_xyzw_to_matrix
from teleop_rokoko.hand_kinematics import load_hand_joints
from teleop_rokoko.retargeting import (
    HumanHand,
    OperatorCalibration,
    RetargetConfig,
    Retargeter,
    calibrate,
    human_hand,
)
from teleop_rokoko.studio_live import StudioLiveReceiver
from teleop_rokoko.wrist import ClutchGesture, WristConfig, WristMapper, frame_yaw_from_hand

_LOG_THROTTLE_S = 2.0


@dataclass
class TeleopConfig:
    """Parameters of the teleop_rokoko node (declared as ROS parameters with these defaults)."""

    port: int = 14043
    """UDP port Studio Live streams to (Studio: Custom target, JSON v3)."""
    bind_address: str = "0.0.0.0"
    """Local address to listen on (127.0.0.1 when Studio runs on this machine)."""
    actor_name: str = ""
    """Studio actor to follow; empty: the first actor of each packet."""
    hand_side: str = "right"
    """Glove that drives the hand and the wrist: 'right' or 'left' (mirrored onto the right hand)."""
    max_packet_bytes: int = 65536
    """Datagrams (and decompressed payloads) above this size are dropped."""
    stale_after_s: float = 0.1
    """No valid packet for this long: hold (stop commanding) and disengage the clutch."""
    rate_hz: float = 30.0
    """Command rate (Hz)."""
    hand_model_file: str = ""
    """Hand model YAML (joint names and limits; the hand driver's file). Empty: ORCA v1 right."""
    calibration_file: str = ""
    """Operator calibration YAML: loaded at start if it exists, written by the calibration services."""
    operator: str = ""
    """Operator name stored with a new calibration."""
    frame_yaw_deg: float = 0.0
    """Yaw from the glove world to the robot base (deg); a calibration file's value wins."""
    position_scale: float = 1.0
    """Robot metres per metre of wrist motion."""
    max_step_m: float = 0.01
    """Largest EE position delta per command (m)."""
    max_step_rad: float = 0.05
    """Largest EE rotation delta per command (rad)."""
    reanchor_distance_m: float = 0.01
    """Re-anchor the commanded EE pose to the measured one beyond this deviation (m)."""
    reanchor_angle_rad: float = 0.1
    """Re-anchor the commanded EE pose to the measured one beyond this deviation (rad)."""
    ee_pose_timeout_s: float = 0.5
    """An EE pose older than this does not count (engage is refused without a recent one)."""
    pinch_threshold_m: float = 0.04
    """Operator thumb–fingertip distance (m) below which the robot closes its pinch."""
    retarget_iterations: int = 6
    """Gauss-Newton steps per frame."""
    wrist_joint_rad: float = 0.0
    """Fixed command of the hand's wrist joint (the arm follows the glove's wrist)."""
    gesture_clutch: bool = False
    """Toggle the clutch by holding the thumb tip on the little fingertip."""
    gesture_hold_s: float = 0.7
    """How long the clutch gesture must be held (s)."""
    engage_on_start: bool = False
    """Engage as soon as glove and EE pose are available (tests, simulation)."""
    hand_command_topic: str = "/orca_hand/joint_command"
    """Hand joint position commands (sensor_msgs/JointState, rad)."""
    arm_command_topic: str = "/franka/relative_pose_command"
    """Relative EE pose commands (geometry_msgs/PoseStamped, delta in the current EE frame)."""
    arm_command_frame: str = "panda_EE"
    """header.frame_id of the relative pose commands."""
    ee_pose_topic: str = "/franka/ee_pose"
    """Measured EE pose (geometry_msgs/PoseStamped, base frame)."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.hand_side not in ("left", "right"):
            raise ValueError(f"hand_side must be 'left' or 'right', got {self.hand_side!r}")
        for name in ("stale_after_s", "rate_hz", "ee_pose_timeout_s", "gesture_hold_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if not math.isfinite(self.frame_yaw_deg):
            raise ValueError("frame_yaw_deg must be finite")
        if self.max_packet_bytes < 256:
            raise ValueError("max_packet_bytes must be >= 256")


#: The node's parameters (launch-file checks read this).
PARAMETERS = TeleopConfig


class TeleopNode(Node):
    def __init__(self) -> None:
        super().__init__("teleop_rokoko")
        cfg = self.cfg = declare_config(self, TeleopConfig)
        self.joints = load_hand_joints(cfg.hand_model_file or None)
        self.calibration = OperatorCalibration(operator=cfg.operator,
                                               frame_yaw_rad=math.radians(cfg.frame_yaw_deg))
        if cfg.calibration_file and Path(cfg.calibration_file).exists():
            self.calibration = OperatorCalibration.load(cfg.calibration_file)
            self.get_logger().info(f"operator calibration from {cfg.calibration_file}: scale "
                                   f"{self.calibration.scale:.3f}, frame yaw "
                                   f"{math.degrees(self.calibration.frame_yaw_rad):.1f} deg")
        self.retargeter = Retargeter(
            self.joints,
            RetargetConfig(pinch_threshold_m=cfg.pinch_threshold_m, iterations=cfg.retarget_iterations,
                           wrist_command_rad=cfg.wrist_joint_rad),
            self.calibration)
        self.wrist = WristMapper(
            WristConfig(cfg.position_scale, cfg.max_step_m, cfg.max_step_rad, cfg.reanchor_distance_m,
                        cfg.reanchor_angle_rad),
            frame_yaw_rad=self.calibration.frame_yaw_rad)
        self.gesture = ClutchGesture(hold_s=cfg.gesture_hold_s) if cfg.gesture_clutch else None
        self._ee: tuple[np.ndarray, np.ndarray, float] | None = None  # position, rotation, monotonic time
        self._human: HumanHand | None = None
        self._wrist_pose: tuple[np.ndarray, np.ndarray] | None = None
        self._calib_flat: np.ndarray | None = None
        self._calib_fist: np.ndarray | None = None
        self._stale = True
        self._hold_reason = "no Studio Live packet yet"
        self._published = 0
        self._auto_engaged = False
        self._retarget_s = 0.0

        self.hand_pub = self.create_publisher(JointState, cfg.hand_command_topic, 10)
        self.arm_pub = self.create_publisher(PoseStamped, cfg.arm_command_topic, 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(PoseStamped, cfg.ee_pose_topic, self._on_ee_pose, qos_profile_sensor_data)
        self.create_service(Trigger, "~/engage", self._on_engage)
        self.create_service(Trigger, "~/disengage", self._on_disengage)
        self.create_service(Trigger, "~/calibrate_frame", self._on_calibrate_frame)
        self.create_service(Trigger, "~/calibrate_flat", self._on_calibrate_flat)
        self.create_service(Trigger, "~/calibrate_fist", self._on_calibrate_fist)

        self.receiver = StudioLiveReceiver(cfg.port, cfg.bind_address, cfg.actor_name,
                                           cfg.max_packet_bytes, logger=_RosLogAdapter(self))
        self.receiver.start()
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        # Commands go out on the steady clock: operator input is real time even in simulation.
        self.create_timer(1.0 / cfg.rate_hz, self._tick, clock=steady)
        self.create_timer(1.0, self._publish_diagnostics, clock=steady)
        self.get_logger().info(
            f"listening for Studio Live on udp://{cfg.bind_address}:{self.receiver.port} "
            f"(actor {cfg.actor_name or '<first>'}, {cfg.hand_side} glove), commanding "
            f"{len(self.joints.names)} hand joints at {cfg.rate_hz:g} Hz; clutch disengaged")

    def shutdown_workers(self) -> None:
        self.receiver.stop()

    # -- inputs ---------------------------------------------------------------------------------
    def _on_ee_pose(self, msg: PoseStamped) -> None:
        p, o = msg.pose.position, msg.pose.orientation
        pos = np.array([p.x, p.y, p.z])
        quat = np.array([o.x, o.y, o.z, o.w])
        if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(quat)) and 0.5 < np.linalg.norm(quat) < 1.5):
            self.get_logger().warning("ignoring EE pose with NaN/inf or a non-unit quaternion",
                                      throttle_duration_sec=_LOG_THROTTLE_S)
            return
        self._ee = (pos, quat_xyzw_to_matrix(quat), time.monotonic())

    def _fresh_ee(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self._ee is None or time.monotonic() - self._ee[2] > self.cfg.ee_pose_timeout_s:
            return None
        return self._ee[0], self._ee[1]

    def _hold(self, reason: str, detail: str = "") -> None:
        """Stop commanding (the drivers keep their last targets) and drop the clutch; the log
        line comes once per change of reason."""
        if not self._stale or reason != self._hold_reason:
            self.get_logger().warning(f"holding: {reason}{detail}"
                                      + ("; clutch disengaged" if self.wrist.engaged else ""))
        self._stale, self._hold_reason = True, reason
        self.wrist.disengage()
        self._human = None
        self._wrist_pose = None

    # -- the control tick -----------------------------------------------------------------------
    def _tick(self) -> None:
        cfg = self.cfg
        frame, age = self.receiver.latest()
        if frame is None or age > cfg.stale_after_s:
            if frame is None:
                self._hold("no Studio Live packet yet")
            else:
                self._hold(f"Studio Live stream stale (no valid packet for > {cfg.stale_after_s:g} s)",
                           f" (last one {age:.3f} s ago)")
            return
        bones = frame.hand(cfg.hand_side)
        if bones is None:
            self._hold(f"actor {frame.name!r} has no complete {cfg.hand_side} glove in the stream")
            return
        try:
            human = human_hand(bones, cfg.hand_side)
        except ValueError as exc:
            self._hold(f"unusable hand pose: {exc}")
            return
        if self._stale:
            self.get_logger().info(f"Studio Live stream live (actor {frame.name!r}): commanding the hand")
            self._stale = False
            self.retargeter.reset()
        self._human = human
        wrist_bone = bones[f"{cfg.hand_side}Hand"]
        self._wrist_pose = (wrist_bone.position, wrist_bone.rotation)
        started = time.perf_counter()
        q = self.retargeter.retarget(human)
        self._retarget_s = time.perf_counter() - started
        if self.gesture is not None and self.gesture.update(human.points, time.monotonic()):
            if self.wrist.engaged:
                self.wrist.disengage()
                self.get_logger().info("clutch disengaged by gesture")
            else:
                self.get_logger().info(f"clutch gesture: {self._try_engage()[1]}")
        if cfg.engage_on_start and not self._auto_engaged:
            self._auto_engaged, why = self._try_engage()
            if self._auto_engaged:
                self.get_logger().info(why)
        ee = self._fresh_ee()
        dp, d_rot = self.wrist.step(*self._wrist_pose, *(ee if ee is not None else (None, None)))
        stamp = self.get_clock().now().to_msg()
        hand = JointState()
        hand.header.stamp = stamp
        hand.name = list(self.joints.names)
        hand.position = [float(v) for v in q]
        arm = PoseStamped()
        arm.header.stamp = stamp
        arm.header.frame_id = cfg.arm_command_frame
        arm.pose.position.x, arm.pose.position.y, arm.pose.position.z = (float(v) for v in dp)
        o = arm.pose.orientation
        o.w, o.x, o.y, o.z = (float(v) for v in matrix_to_quat_wxyz(d_rot))
        self.hand_pub.publish(hand)
        self.arm_pub.publish(arm)
        self._published += 1

    # -- services -------------------------------------------------------------------------------
    def _try_engage(self) -> tuple[bool, str]:
        if self._stale or self._wrist_pose is None:
            return False, f"refused to engage: {self._hold_reason}"
        ee = self._fresh_ee()
        if ee is None:
            return False, (f"refused to engage: no EE pose on {self.cfg.ee_pose_topic} within "
                           f"{self.cfg.ee_pose_timeout_s:g} s")
        self.wrist.engage(*self._wrist_pose, *ee)
        return True, "clutch engaged: glove wrist and EE pose are the new reference"

    def _on_engage(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self._try_engage()
        self._log_answer(response)
        return response

    def _log_answer(self, response: Trigger.Response) -> None:
        # One call site per severity: rclpy refuses a call site whose severity changes.
        if response.success:
            self.get_logger().info(response.message)
        else:
            self.get_logger().warning(response.message)

    def _on_disengage(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        was = self.wrist.engaged
        self.wrist.disengage()
        response.success = True
        response.message = "clutch disengaged" if was else "clutch was not engaged"
        self.get_logger().info(response.message)
        return response

    def _on_calibrate_frame(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.wrist.engaged:
            response.success, response.message = False, "refused: disengage the clutch before calibrating the frame"
        elif self._human is None:
            response.success, response.message = False, f"refused: {self._hold_reason}"
        else:
            try:
                yaw = frame_yaw_from_hand(self._human.palm_rotation)
            except ValueError as exc:
                response.success, response.message = False, f"refused: {exc}"
            else:
                self.wrist.set_frame_yaw(yaw)
                self.calibration.frame_yaw_rad = yaw
                saved = self._save_calibration()
                response.success = True
                response.message = f"frame yaw {math.degrees(yaw):.1f} deg{saved}"
        self._log_answer(response)
        return response

    def _on_calibrate_flat(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        return self._capture("flat", response)

    def _on_calibrate_fist(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        return self._capture("fist", response)

    def _capture(self, pose: str, response: Trigger.Response) -> Trigger.Response:
        if self._human is None:
            response.success, response.message = False, f"refused: {self._hold_reason}"
            self.get_logger().warning(response.message)
            return response
        points = self._human.points.copy()
        if pose == "flat":
            self._calib_flat = points
        else:
            self._calib_fist = points
        response.success = True
        if self._calib_flat is None or self._calib_fist is None:
            response.message = f"{pose} hand captured; now capture the {'fist' if pose == 'flat' else 'flat hand'}"
        else:
            calibration = calibrate(self.retargeter, self._calib_flat, self._calib_fist,
                                    operator=self.cfg.operator, frame_yaw_rad=self.wrist.frame_yaw_rad)
            self.calibration = calibration
            self.retargeter.set_calibration(calibration)
            self.retargeter.reset()
            response.message = f"operator calibration: scale {calibration.scale:.3f}{self._save_calibration()}"
        self.get_logger().info(response.message)
        return response

    def _save_calibration(self) -> str:
        if not self.cfg.calibration_file:
            return " (not saved: calibration_file is empty)"
        try:
            self.calibration.save(self.cfg.calibration_file)
        except OSError as exc:
            return f" (NOT saved to {self.cfg.calibration_file}: {exc})"
        return f", saved to {self.cfg.calibration_file}"

    # -- diagnostics ----------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        _, age = self.receiver.latest()
        if self._stale:
            level, message = DiagnosticStatus.WARN, f"holding: {self._hold_reason}"
        else:
            level, message = DiagnosticStatus.OK, "engaged" if self.wrist.engaged else "live, clutch disengaged"
        values = {"stale": self._stale, "engaged": self.wrist.engaged,
                  "stream_age_s": float(min(age, 1e9)), "commands_published": self._published,
                  "retarget_ms": 1e3 * self._retarget_s, "reanchors": self.wrist.reanchors,
                  "calibration_scale": float(self.calibration.scale),
                  "frame_yaw_deg": math.degrees(self.wrist.frame_yaw_rad),
                  **self.receiver.counts()}
        self.diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), "teleop_rokoko: glove stream",
                                               f"udp:{self.receiver.port}", level, message, values))


class _RosLogAdapter:
    """The receiver thread logs through the node's logger (warning / exception)."""

    def __init__(self, node: Node):
        self._logger = node.get_logger()

    def warning(self, message: str) -> None:
        self._logger.warning(message)

    def exception(self, message: str) -> None:
        self._logger.error(f"{message}\n{traceback.format_exc()}")


def main(args: list[str] | None = None) -> None:
    spin_node(TeleopNode, "teleop_rokoko", num_threads=1, args=args)


if __name__ == "__main__":
    main()
