"""depthai ImgFrame -> numpy image -> the fields of a sensor_msgs/Image (no cv_bridge, no rclpy).

A frame from the device queue is an ``dai.ImgFrame``: a byte buffer with a type (planar or
interleaved 8-bit colour here), width, height, row stride (rows may be padded) and, for planar
frames, plane offsets. Timestamps: ``getTimestamp()`` is the capture time already converted by
depthai's time sync to the host's steady clock (``dai.Clock``, CLOCK_MONOTONIC on Linux, the
clock of Python's ``time.monotonic``); ``getTimestampDevice()`` is the device's own clock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oak_camera.intrinsics import Intrinsics

__all__ = [
    "CapturedFrame", "ImageFields", "frame_to_array", "image_fields", "intrinsics_mismatch",
    "steady_to_clock_ns",
]

_LAYOUT = {  # type name -> (channel order, planar)
    "RGB888i": ("rgb", False), "BGR888i": ("bgr", False),
    "RGB888p": ("rgb", True), "BGR888p": ("bgr", True),
}


def frame_to_array(frame) -> tuple[np.ndarray, str]:
    """A ``dai.ImgFrame`` (RGB/BGR, planar or interleaved) -> (``[h, w, 3]`` uint8, "rgb"|"bgr").

    The array is a fresh contiguous copy: the frame's buffer may be reused by depthai."""
    type_name = frame.getType().name
    if type_name not in _LAYOUT:
        raise ValueError(f"frame type {type_name} is not one of {sorted(_LAYOUT)}")
    order, planar = _LAYOUT[type_name]
    width, height = int(frame.getWidth()), int(frame.getHeight())
    stride = int(frame.getStride())
    data = np.asarray(frame.getData(), dtype=np.uint8).ravel()
    if planar:
        if stride < width:
            raise ValueError(f"planar frame stride {stride} < width {width}")
        specs = frame.fb
        offsets = [int(specs.p1Offset), int(specs.p2Offset), int(specs.p3Offset)]
        if not any(offsets):  # depthai's default layout: three stride x height planes
            offsets = [0, stride * height, 2 * stride * height]
        need = max(offsets) + stride * (height - 1) + width
        if data.size < need:
            raise ValueError(f"planar frame data has {data.size} bytes, {need} needed for "
                             f"{width}x{height} with stride {stride}")
        planes = [np.lib.stride_tricks.as_strided(data[o:], shape=(height, width), strides=(stride, 1))
                  for o in offsets]
        return np.ascontiguousarray(np.stack(planes, axis=-1)), order
    if stride < 3 * width:
        raise ValueError(f"interleaved frame stride {stride} < 3 x width {width}")
    need = stride * (height - 1) + 3 * width
    if data.size < need:
        raise ValueError(f"interleaved frame data has {data.size} bytes, {need} needed for "
                         f"{width}x{height} with stride {stride}")
    rows = np.lib.stride_tricks.as_strided(data, shape=(height, 3 * width), strides=(stride, 1))
    return np.ascontiguousarray(rows).reshape(height, width, 3), order


@dataclass(frozen=True)
class CapturedFrame:
    """One frame taken off the queue, converted, with its bookkeeping."""

    image: np.ndarray
    """``[h, w, 3]`` uint8."""
    channel_order: str
    """"rgb" or "bgr": the order of ``image``'s last axis."""
    sequence: int
    """Device sequence number (consecutive per stream; a gap is a dropped frame)."""
    capture_steady_ns: int
    """Capture time on the host's steady clock (depthai time sync)."""
    receive_steady_ns: int
    """When the host took the frame off the queue (steady clock)."""
    device_time_ns: int
    """Capture time on the device's own clock."""


@dataclass(frozen=True)
class ImageFields:
    """Everything a sensor_msgs/Image needs besides its header."""

    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: bytes


def image_fields(image: np.ndarray, channel_order: str, encoding: str) -> ImageFields:
    """``[h, w, 3]`` uint8 in ``channel_order`` -> Image fields in ``encoding`` (rgb8 / bgr8)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected [h, w, 3] uint8, got {image.shape} {image.dtype}")
    if encoding not in ("rgb8", "bgr8") or channel_order not in ("rgb", "bgr"):
        raise ValueError(f"cannot convert {channel_order} to {encoding}")
    if encoding[:3] != channel_order:
        image = image[..., ::-1]
    height, width = image.shape[:2]
    return ImageFields(height, width, encoding, 0, 3 * width, np.ascontiguousarray(image).tobytes())


def steady_to_clock_ns(steady_ns: int, clock_now_ns: int, steady_now_ns: int) -> int:
    """A steady-clock time expressed on another clock (the ROS clock), from one simultaneous
    reading of both: the offset is taken at publication, so wall-clock steps (NTP) between
    frames move stamps with the clock instead of accumulating."""
    return int(steady_ns + (clock_now_ns - steady_now_ns))


def intrinsics_mismatch(frame, expected: Intrinsics, tolerance_px: float = 1.0) -> str | None:
    """Compare the intrinsics we publish with the ones depthai attaches to a device frame
    (``ImgTransformation``: the calibration carried through the camera's own crop and scaling).
    A difference means the camera did not crop what the configuration assumes (another sensor
    mode, an aligned crop); returns the explanation, or None when they agree or the frame
    carries no calibrated transformation (replayed frames, uncalibrated devices)."""
    transformation = frame.getTransformation()
    if not transformation.isValid():
        return None
    k = np.asarray(transformation.getIntrinsicMatrix(), dtype=float)
    if k.shape != (3, 3) or (k[0, 0] == 1.0 and k[1, 1] == 1.0):  # identity: no calibration attached
        return None
    width, height = transformation.getSize()
    if (width, height) != (expected.width, expected.height):
        return f"depthai reports a {width}x{height} frame transformation, the node publishes {expected.width}x{expected.height}"
    theirs = np.array([k[0, 0], k[1, 1], k[0, 2], k[1, 2]])
    ours = np.array([expected.fx, expected.fy, expected.cx, expected.cy])
    worst = float(np.abs(theirs - ours).max())
    if worst <= tolerance_px:
        return None
    return (f"published intrinsics (fx, fy, cx, cy) = ({', '.join(f'{v:.2f}' for v in ours)}) differ by "
            f"{worst:.2f} px from depthai's for this frame ({', '.join(f'{v:.2f}' for v in theirs)}): "
            "check sensor_width/sensor_height and the crop parameters")
