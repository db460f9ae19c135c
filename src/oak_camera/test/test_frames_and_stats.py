"""ImgFrame -> array -> Image fields, timestamps, and the drop/latency statistics."""

from __future__ import annotations

import datetime
import time

import depthai as dai
import numpy as np
import pytest

from oak_camera.frames import frame_to_array, image_fields, steady_to_clock_ns
from oak_camera.stats import StreamStats

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)  # h=5, w=7: odd sizes catch transposes


def make_frame(type_name: str, rgb: np.ndarray, stride_pad: int = 0) -> dai.ImgFrame:
    """A frame laid out the way the device sends it, rows padded by ``stride_pad`` bytes of junk."""
    h, w, _ = rgb.shape
    ordered = rgb if type_name.startswith("RGB") else rgb[..., ::-1]
    if type_name.endswith("i"):
        rows = ordered.reshape(h, 3 * w)
        stride = 3 * w + stride_pad
        buf = np.full((h, stride), 0xEE, np.uint8)
        buf[:, : 3 * w] = rows
    else:
        stride = w + stride_pad
        buf = np.full((3, h, stride), 0xEE, np.uint8)
        buf[:, :, :w] = np.transpose(ordered, (2, 0, 1))
    frame = dai.ImgFrame()
    frame.setData(buf.ravel())
    frame.setWidth(w)
    frame.setHeight(h)
    frame.setType(dai.ImgFrame.Type.__members__[type_name])
    frame.setStride(stride)
    return frame


@pytest.mark.parametrize("type_name", ["RGB888i", "BGR888i", "RGB888p", "BGR888p"])
@pytest.mark.parametrize("pad", [0, 9])
def test_frame_to_array_handles_layouts_and_padded_rows(type_name: str, pad: int) -> None:
    image, order = frame_to_array(make_frame(type_name, RGB, pad))
    assert order == type_name[:3].lower()
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8 and image.flags.c_contiguous
    np.testing.assert_array_equal(image, RGB if order == "rgb" else RGB[..., ::-1])
    # and into the message, in either encoding
    for encoding in ("rgb8", "bgr8"):
        fields = image_fields(image, order, encoding)
        assert (fields.height, fields.width, fields.step, fields.is_bigendian) == (5, 7, 21, 0)
        assert fields.encoding == encoding and len(fields.data) == 5 * 21
        back = np.frombuffer(fields.data, np.uint8).reshape(5, 7, 3)
        np.testing.assert_array_equal(back, RGB if encoding == "rgb8" else RGB[..., ::-1])


def test_malformed_frames_are_refused() -> None:
    short = make_frame("RGB888i", RGB)
    short.setData(np.zeros(10, np.uint8))
    with pytest.raises(ValueError, match="needed"):
        frame_to_array(short)
    nv12 = make_frame("RGB888i", RGB)
    nv12.setType(dai.ImgFrame.Type.NV12)
    with pytest.raises(ValueError, match="NV12"):
        frame_to_array(nv12)
    with pytest.raises(ValueError):
        image_fields(np.zeros((4, 4), np.uint8), "rgb", "rgb8")


def test_depthai_clock_is_the_python_monotonic_clock() -> None:
    """Frame timestamps (``getTimestamp``) are on dai.Clock; the node maps them to ROS time
    through time.monotonic_ns, which is only right if the two are one clock."""
    before = time.monotonic()
    now = dai.Clock.now().total_seconds()
    after = time.monotonic()
    assert before - 1e-3 <= now <= after + 1e-3


def test_steady_to_ros_time() -> None:
    # captured 30 ms before "now" on the steady clock -> 30 ms before "now" on the ROS clock
    assert steady_to_clock_ns(1_000_000_000, 1_700_000_000_030_000_000, 1_030_000_000) == 1_700_000_000_000_000_000


def test_stats_count_drops_from_sequence_gaps_and_restarts() -> None:
    stats = StreamStats(window_s=1.0)
    t = 100.0
    gaps = []
    for seq in (0, 1, 2, 5, 6, 9):  # 2 + 2 dropped
        gaps.append(stats.on_frame(seq, capture_s=t - 0.02, receive_s=t))
        t += 0.1
    assert gaps == [0, 0, 0, 2, 0, 2]
    snap = stats.snapshot(t)
    assert (snap.frames, snap.dropped, snap.sequence_restarts) == (6, 4, 0)
    assert snap.drop_ratio == pytest.approx(4 / 10)
    assert snap.rate_hz == pytest.approx(10.0)
    assert snap.latency_p50_ms == pytest.approx(20.0) and snap.latency_max_ms == pytest.approx(20.0)
    # reopened stream: numbering starts again, no gap counted
    stats.restart_sequence()
    assert stats.on_frame(0, t - 0.05, t) == 0
    # a device that restarted on its own (sequence went backwards) is counted as a restart
    assert stats.on_frame(10, t, t) == 9
    assert stats.on_frame(3, t, t) == 0
    snap = stats.snapshot(t)
    assert snap.sequence_restarts == 1 and snap.dropped == 13
    assert snap.latency_max_ms == pytest.approx(50.0)
    # nothing for longer than the window: rate 0
    assert stats.snapshot(t + 5.0).rate_hz == 0.0


def test_frames_keep_their_timestamps_through_a_depthai_queue() -> None:
    """The same object path as the device: frames through a depthai MessageQueue keep
    sequence number and both timestamps."""
    queue = dai.MessageQueue("test", 4, False)
    frame = make_frame("RGB888i", RGB)
    frame.setSequenceNum(41)
    frame.setTimestamp(datetime.timedelta(seconds=12.5))
    frame.setTimestampDevice(datetime.timedelta(seconds=3.25))
    queue.send(frame)
    got = queue.get(datetime.timedelta(seconds=1))
    assert got.getSequenceNum() == 41
    assert got.getTimestamp().total_seconds() == pytest.approx(12.5)
    assert got.getTimestampDevice().total_seconds() == pytest.approx(3.25)
    np.testing.assert_array_equal(frame_to_array(got)[0], RGB)


def test_intrinsics_mismatch_against_depthais_frame_transformation() -> None:
    from oak_camera.frames import intrinsics_mismatch
    from oak_camera.intrinsics import CropRect, Intrinsics, correct_for_crop_and_resize

    sensor = Intrinsics(1920, 1080, 1500.0, 1500.0, 960.0, 540.0)
    ours = correct_for_crop_and_resize(sensor, CropRect(420, 0, 1080, 1080), 224, 224)
    frame = make_frame("RGB888i", RGB)
    assert intrinsics_mismatch(frame, ours) is None  # no transformation attached (replay)

    def device_frame(crop_x: int) -> dai.ImgFrame:
        t = dai.ImgTransformation(1920, 1080, sensor.matrix.tolist())
        t.addCrop(crop_x, 0, 1080, 1080)
        t.addScale(224 / 1080, 224 / 1080)
        f = make_frame("RGB888i", RGB)
        f.setTransformation(t)
        return f

    assert intrinsics_mismatch(device_frame(420), ours) is None
    message = intrinsics_mismatch(device_frame(400), ours)  # the camera cropped 20 px further left
    assert message is not None and "differ by 4.15 px" in message
