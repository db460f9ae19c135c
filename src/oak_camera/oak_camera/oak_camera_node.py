"""oak_camera: one OAK camera (depthai v3) as a ROS 2 lifecycle node.

Transitions:
- configure: find the device by MxId (``serial``; empty = the only OAK connected, refused when
  several are), open it, read its calibration, build the pipeline (crop + resize on the device).
  Refused, with the reason in the log, when the camera is missing, ambiguous or in use.
- activate: start streaming and publishing ``image_raw`` + ``camera_info`` (sensor-data QoS).
- deactivate: stop publishing (the camera keeps streaming, so diagnostics stay live and
  re-activation is immediate).
- cleanup / shutdown: stop streaming and close the device.

A camera lost while streaming (unplugged, USB error, no frame within ``frame_timeout_s``) is
reported on /diagnostics (ERROR, with the reason) and in the log, then reopened by the same MxId
with exponential backoff; publishing resumes by itself when it is back.
"""

from __future__ import annotations

import math
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

from oak_camera.config import OakCameraConfig
from oak_camera.device import DEVICE_LOST_ERRORS, CameraConnection, OakDeviceConnection
from oak_camera.frames import CapturedFrame, image_fields, steady_to_clock_ns
from oak_camera.intrinsics import Intrinsics, camera_info_matrices
from oak_camera.replay import ReplayConnection
from oak_camera.stream import CameraStream
from sernf_data.ros.device_node import DeviceLifecycleNode
from sernf_data.ros.diagnostics import diagnostic_status
from sernf_data.ros.parameters import declare_config
from sernf_data.ros.spin import spin_node

NODE_NAME = "oak_camera"


def camera_info_message(intr: Intrinsics, frame_id: str) -> CameraInfo:
    info = CameraInfo()
    info.header.frame_id = frame_id
    info.width, info.height = intr.width, intr.height
    info.distortion_model = intr.distortion_model
    info.d = list(intr.distortion)
    info.k, info.r, info.p = camera_info_matrices(intr)
    return info


#: The node's parameters (launch-file checks read this).
PARAMETERS = OakCameraConfig


class OakCameraNode(DeviceLifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.cfg: OakCameraConfig = declare_config(self, OakCameraConfig)
        self.frame_id = self.cfg.resolved_frame_id()
        self.stream: CameraStream | None = None
        self.publishing = False
        self._info_template: CameraInfo | None = None
        self._info_for: Intrinsics | None = None
        self.image_pub = self.create_publisher(Image, self.cfg.resolved_image_topic(), qos_profile_sensor_data)
        self.info_pub = self.create_publisher(CameraInfo, self.cfg.resolved_camera_info_topic(), qos_profile_sensor_data)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(self.cfg.diagnostics_period_s, self._publish_diagnostics)
        which = self.cfg.serial or "the only OAK connected"
        self.get_logger().info(f"camera '{self.cfg.camera_name}' ({which}, {self.cfg.source}) waiting for configure")

    # -- transitions ----------------------------------------------------------------------------
    def _connect(self) -> CameraConnection:
        if self.cfg.source == "replay":
            return ReplayConnection(self.cfg)
        return OakDeviceConnection(self.cfg)

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        c = self.cfg
        stream = CameraStream(self._connect, self._on_frame, self._on_event, c.frame_timeout_s,
                              c.reconnect_initial_s, c.reconnect_max_s)
        try:
            stream.open()
        except (*DEVICE_LOST_ERRORS, OSError, ValueError) as exc:
            return self.refuse("configure", str(exc))
        self.stream = stream
        self.last_refusal = ""
        self.state_label = "inactive"
        k = stream.intrinsics
        self.get_logger().info(
            f"configured: {stream.description}, {c.width}x{c.height} from crop {c.crop} of "
            f"{c.sensor_width}x{c.sensor_height} at {c.fps:g} fps; fx={k.fx:.2f} fy={k.fy:.2f} "
            f"cx={k.cx:.2f} cy={k.cy:.2f} ({k.distortion_model})")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        assert self.stream is not None
        try:
            self.stream.start()
        except DEVICE_LOST_ERRORS as exc:
            return self.refuse("activate", f"camera did not start: {exc}")
        self.publishing = True
        self.state_label = "active"
        self.get_logger().info(f"active: publishing {self.cfg.resolved_image_topic()} and "
                               f"{self.cfg.resolved_camera_info_topic()}")
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self.publishing = False
        self.state_label = "inactive"
        self.get_logger().info("inactive: not publishing (the camera keeps streaming)")
        return super().on_deactivate(state)

    def release_device(self, what: str) -> None:
        self.publishing = False
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.close()
            self.get_logger().info(f"{what}: camera closed")

    # -- frames ---------------------------------------------------------------------------------
    def _on_event(self, level: str, text: str) -> None:
        # one call site per severity: rclpy refuses a call site whose severity changes
        log = self.get_logger()
        if level == "error":
            log.error(text)
        elif level == "warn":
            log.warning(text)
        else:
            log.info(text)

    def _on_frame(self, frame: CapturedFrame) -> None:
        stream = self.stream
        if not self.publishing or stream is None or stream.intrinsics is None:
            return
        stamp_ns = steady_to_clock_ns(frame.capture_steady_ns, self.get_clock().now().nanoseconds,
                                      time.monotonic_ns())
        sec, nanosec = divmod(stamp_ns, 1_000_000_000)
        fields = image_fields(frame.image, frame.channel_order, self.cfg.encoding)
        image = Image(height=fields.height, width=fields.width, encoding=fields.encoding,
                      is_bigendian=fields.is_bigendian, step=fields.step, data=fields.data)
        image.header.frame_id = self.frame_id
        image.header.stamp.sec, image.header.stamp.nanosec = sec, nanosec
        if self._info_for is not stream.intrinsics:  # built once per connection
            self._info_template = camera_info_message(stream.intrinsics, self.frame_id)
            self._info_for = stream.intrinsics
        info = self._info_template
        info.header.stamp = image.header.stamp  # same stamp: consumers pair them exactly
        self.image_pub.publish(image)
        self.info_pub.publish(info)

    # -- diagnostics ----------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        stream = self.stream
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        values: dict[str, object] = {"state": self.state_label, "camera_name": self.cfg.camera_name,
                                     "serial": self.cfg.serial or "(only one connected)",
                                     "source": self.cfg.source}
        level, message = DiagnosticStatus.OK, self.state_label
        hardware_id = self.cfg.serial or "oak"
        if stream is not None:
            hardware_id = stream.device_id or hardware_id
            st = stream.state
            snap = stream.stats.snapshot(time.monotonic())
            values.update({
                "stream": st.status, "device": stream.description, "publishing": self.publishing,
                "rate_hz": snap.rate_hz, "expected_rate_hz": float(self.cfg.fps),
                "frames": snap.frames, "dropped_frames": snap.dropped,
                "drop_ratio": snap.drop_ratio, "sequence_restarts": snap.sequence_restarts,
                "latency_p50_ms": snap.latency_p50_ms, "latency_p95_ms": snap.latency_p95_ms,
                "latency_max_ms": snap.latency_max_ms,
                "disconnects": st.disconnects, "reconnects": st.reconnects,
            })
            if stream.intrinsics_warning:
                values["intrinsics_warning"] = stream.intrinsics_warning
            if st.status == "lost":
                values.update({"reconnect_attempts": st.reconnect_attempts,
                               "next_attempt_in_s": st.next_attempt_in_s})
                level, message = DiagnosticStatus.ERROR, st.reason
            elif st.status == "streaming":
                if snap.rate_hz < 0.5 * self.cfg.fps:
                    level, message = DiagnosticStatus.WARN, f"frame rate {snap.rate_hz:.1f} Hz below half of {self.cfg.fps:g}"
                elif not math.isnan(snap.latency_p95_ms) and snap.latency_p95_ms > 100.0:
                    level, message = DiagnosticStatus.WARN, f"latency p95 {snap.latency_p95_ms:.0f} ms"
                elif stream.intrinsics_warning:
                    level, message = DiagnosticStatus.WARN, "camera_info may not match the image (see intrinsics_warning)"
                else:
                    message = "streaming" + ("" if self.publishing else " (not publishing)")
        if self.last_refusal:
            values["last_refusal"] = self.last_refusal
            if self.state_label == "unconfigured":
                level, message = DiagnosticStatus.ERROR, self.last_refusal
        array.status.append(diagnostic_status(f"{NODE_NAME}: {self.cfg.camera_name}", hardware_id,
                                              level, message, values))
        self.diag_pub.publish(array)


def main(args: list[str] | None = None) -> None:
    spin_node(OakCameraNode, NODE_NAME, num_threads=1, args=args)


if __name__ == "__main__":
    main()
