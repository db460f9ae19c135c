"""The camera node's configuration (one dataclass: node parameters are declared from it)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from oak_camera.intrinsics import CropRect, centered_crop

__all__ = ["FRAME_TYPES", "OakCameraConfig"]

#: On-device output formats the frame conversion handles (8-bit colour, planar or interleaved).
FRAME_TYPES = ("RGB888i", "BGR888i", "RGB888p", "BGR888p")
ENCODINGS = ("rgb8", "bgr8")
SOCKETS = ("CAM_A", "CAM_B", "CAM_C", "CAM_D")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass
class OakCameraConfig:
    """Parameters of oak_camera (one camera per node)."""

    camera_name: str = "front"
    """Camera name: topics default to /cameras/<camera_name>/image_raw and .../camera_info."""
    serial: str = ""
    """Device MxId (e.g. 14442C10D13EABCE00; `depthai` lists them, see docs/robot/cameras.md).
    Empty: the only OAK connected; refused when several are connected."""
    board_socket: str = "CAM_A"
    """Sensor socket on the device: CAM_A is the colour camera of OAK-1 Lite and OAK-D Lite."""
    sensor_width: int = 1920
    """Sensor output width the crop is taken from (a mode the sensor supports; 1920x1080 on the
    IMX214 of the OAK-1 Lite / OAK-D Lite). The calibration is read at this size."""
    sensor_height: int = 1080
    """Sensor output height (see sensor_width)."""
    crop_x: int = -1
    """Left edge of the crop in sensor pixels; -1 (and crop_y -1): the largest centred crop with
    the output's aspect ratio."""
    crop_y: int = -1
    """Top edge of the crop in sensor pixels; -1: centred (see crop_x)."""
    crop_width: int = 0
    """Crop width in sensor pixels; 0: the largest crop with the output's aspect ratio."""
    crop_height: int = 0
    """Crop height in sensor pixels; 0: see crop_width."""
    width: int = 224
    """Published image width (the crop is resized to width x height on the device)."""
    height: int = 224
    """Published image height."""
    fps: float = 30.0
    """Frame rate requested from the sensor."""
    frame_type: str = "RGB888i"
    """On-device output format: RGB888i / BGR888i (interleaved) or RGB888p / BGR888p (planar)."""
    encoding: str = "rgb8"
    """Published sensor_msgs/Image encoding: rgb8 (what the policy expects) or bgr8."""
    frame_id: str = ""
    """Header frame_id; empty: <camera_name>_optical_frame."""
    image_topic: str = ""
    """Image topic; empty: /cameras/<camera_name>/image_raw."""
    camera_info_topic: str = ""
    """CameraInfo topic; empty: /cameras/<camera_name>/camera_info."""
    queue_size: int = 4
    """Host-side frame queue (non-blocking: when the node falls behind the oldest frames go, and
    the sequence numbers show them as dropped)."""
    frame_timeout_s: float = 1.0
    """No frame for this long while streaming: the camera is treated as lost (reconnect)."""
    reconnect_initial_s: float = 0.5
    """First wait before reopening a lost camera; doubles after each failed attempt."""
    reconnect_max_s: float = 5.0
    """Longest wait between reopen attempts."""
    diagnostics_period_s: float = 1.0
    """Period of /diagnostics messages."""
    source: str = "device"
    """device: an OAK over USB. replay: frames recorded in replay_file, served by a host-side
    depthai pipeline (the same queue and frame types as the device), for tests and debugging."""
    replay_file: str = ""
    """Recording (.npz, oak_camera.replay) played when source is replay."""
    replay_unplug_file: str = ""
    """source replay only: while this file exists the replayed camera behaves as unplugged
    (streaming stops, reopening fails), so reconnection can be exercised without hardware."""

    def __post_init__(self) -> None:
        if not _NAME.match(self.camera_name):
            raise ValueError(f"camera_name {self.camera_name!r} must be a ROS name "
                             "(letters, digits, underscores; starting with a letter)")
        if self.board_socket not in SOCKETS:
            raise ValueError(f"board_socket {self.board_socket!r} is not one of {SOCKETS}")
        if self.frame_type not in FRAME_TYPES:
            raise ValueError(f"frame_type {self.frame_type!r} is not one of {FRAME_TYPES}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding {self.encoding!r} is not one of {ENCODINGS}")
        for name in ("sensor_width", "sensor_height", "width", "height", "queue_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.width > self.sensor_width or self.height > self.sensor_height:
            raise ValueError("the output must not be larger than the sensor image")
        if not 0 < self.fps <= 120:
            raise ValueError(f"fps must be in (0, 120], got {self.fps}")
        for name in ("frame_timeout_s", "reconnect_initial_s", "reconnect_max_s", "diagnostics_period_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be at least reconnect_initial_s")
        if self.source not in ("device", "replay"):
            raise ValueError(f"source {self.source!r} must be device or replay")
        if self.source == "replay" and not self.replay_file:
            raise ValueError("source replay needs replay_file")
        if self.serial and not re.fullmatch(r"[0-9A-Za-z.:_-]+", self.serial):
            raise ValueError(f"serial {self.serial!r} does not look like an MxId")
        self.crop  # noqa: B018 - validates the crop parameters now, not at configure

    @property
    def crop(self) -> CropRect:
        """The sensor-image rectangle that becomes the published image."""
        explicit_origin = self.crop_x >= 0 or self.crop_y >= 0
        explicit_size = self.crop_width > 0 or self.crop_height > 0
        if explicit_size != (self.crop_width > 0 and self.crop_height > 0):
            raise ValueError("crop_width and crop_height must be given together")
        if explicit_origin and not explicit_size:
            raise ValueError("crop_x/crop_y need crop_width and crop_height")
        if not explicit_size:
            return centered_crop(self.sensor_width, self.sensor_height, self.width, self.height)
        if explicit_origin and (self.crop_x < 0 or self.crop_y < 0):
            raise ValueError("crop_x and crop_y must be given together")
        if explicit_origin:
            rect = CropRect(self.crop_x, self.crop_y, self.crop_width, self.crop_height)
        else:  # a size alone: centred
            rect = CropRect((self.sensor_width - self.crop_width) // 2,
                            (self.sensor_height - self.crop_height) // 2,
                            self.crop_width, self.crop_height)
        rect.check_inside(self.sensor_width, self.sensor_height)
        return rect

    @property
    def centered_crop(self) -> bool:
        """True when the crop is the default centred one (done by the camera's own scaler)."""
        return self.crop_width <= 0 and self.crop_height <= 0

    def resolved_frame_id(self) -> str:
        return self.frame_id or f"{self.camera_name}_optical_frame"

    def resolved_image_topic(self) -> str:
        return self.image_topic or f"/cameras/{self.camera_name}/image_raw"

    def resolved_camera_info_topic(self) -> str:
        return self.camera_info_topic or f"/cameras/{self.camera_name}/camera_info"
