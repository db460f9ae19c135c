"""Device choice by MxId, the pipeline plan, and the capture loop (drops, loss, reconnection)
against a replayed camera served by a real host-side depthai pipeline."""

from __future__ import annotations

import inspect
import threading
import time
from pathlib import Path

import depthai as dai
import numpy as np
import pytest

from oak_camera.config import OakCameraConfig
from oak_camera.device import CameraNotFound, pipeline_plan, select_device
from oak_camera.intrinsics import CropRect, Intrinsics
from oak_camera.replay import Recording, ReplayConnection, save_recording
from oak_camera.stream import CameraStream

S = dai.XLinkDeviceState


def info(mxid: str, state=S.X_LINK_UNBOOTED) -> dai.DeviceInfo:
    return dai.DeviceInfo("1.3", mxid, state, dai.XLinkProtocol.X_LINK_USB_VSC,
                          dai.XLinkPlatform.X_LINK_MYRIAD_X, dai.XLinkError_t.X_LINK_SUCCESS)


def test_select_device_by_mxid() -> None:
    a, b = info("14442C10D13EABCE00"), info("18443010C1A5C71200")
    assert select_device([a, b], "18443010C1A5C71200").getDeviceId() == "18443010C1A5C71200"
    assert select_device([a], "").getDeviceId() == "14442C10D13EABCE00"
    with pytest.raises(CameraNotFound, match="2 OAKs connected .*set the serial"):
        select_device([a, b], "")
    with pytest.raises(CameraNotFound, match="no OAK with MxId 1944.*14442C10D13EABCE00"):
        select_device([a], "19443010C1A5C71299")
    with pytest.raises(CameraNotFound, match="no OAK connected"):
        select_device([], "")
    with pytest.raises(CameraNotFound, match="in use by another process"):
        select_device([info("14442C10D13EABCE00", S.X_LINK_BOOTED)], "14442C10D13EABCE00")


def test_pipeline_plan() -> None:
    plan = pipeline_plan(OakCameraConfig(fps=15.0, frame_type="BGR888p"))
    assert plan.socket == "CAM_A" and plan.sensor_size == (1920, 1080)
    assert plan.crop == CropRect(420, 0, 1080, 1080) and plan.output_size == (224, 224)
    assert plan.frame_type == "BGR888p" and plan.fps == 15.0 and not plan.use_image_manip
    assert plan.max_output_bytes == 224 * 224 * 3
    plan = pipeline_plan(OakCameraConfig(crop_x=0, crop_y=0, crop_width=1080, crop_height=1080))
    assert plan.use_image_manip and plan.crop == CropRect(0, 0, 1080, 1080)


def test_depthai_api_used_by_the_device_pipeline_exists() -> None:
    """The device half of build_pipeline cannot run without a camera (depthai v3 refuses device
    nodes on a pipeline without a device); this catches API drift in what it calls."""
    with pytest.raises(RuntimeError, match="host only"):
        dai.Pipeline(createImplicitDevice=False).create(dai.node.Camera)
    for name in ("CAM_A", "CAM_B", "CAM_C", "CAM_D"):
        assert name in dai.CameraBoardSocket.__members__
    for name in ("RGB888i", "BGR888i", "RGB888p", "BGR888p", "NV12"):
        assert name in dai.ImgFrame.Type.__members__
    build_doc = dai.node.Camera.build.__doc__
    assert "sensorResolution" in build_doc and "sensorFps" in build_doc
    request_doc = dai.node.Camera.requestOutput.__doc__
    assert "resizeMode: depthai.ImgResizeMode" in request_doc and "fps" in request_doc
    assert "CROP" in dai.ImgResizeMode.__members__
    assert "createOutputQueue" in dir(dai.Node.Output)
    for method in ("getAllConnectedDevices", "setMaxReconnectionAttempts", "readCalibration", "getUsbSpeed"):
        assert callable(getattr(dai.Device, method))
    for method in ("getCameraIntrinsics", "getDistortionCoefficients", "getDistortionModel"):
        assert callable(getattr(dai.CalibrationHandler, method))
    assert "keepAspectRatio" in inspect.getdoc(dai.CalibrationHandler.getCameraIntrinsics)


def make_recording(path: Path, sequence=(0, 1, 2, 5, 6, 7, 8, 9)) -> Recording:
    n = len(sequence)
    frames = np.zeros((n, 224, 224, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(n, dtype=np.uint8)[:, None, None] * 20  # frame index in red
    frames[:, :, :, 2] = 200
    rec = Recording(frames, np.array(sequence), np.arange(n) / 30.0,
                    Intrinsics(1920, 1080, 1500.0, 1500.0, 960.0, 540.0, "rational_polynomial", (0.0,) * 8),
                    device_id="14442C10D13EABCE00")
    save_recording(path, rec)
    return rec


class Collector:
    def __init__(self) -> None:
        self.frames = []
        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def on_frame(self, frame) -> None:
        with self.lock:
            self.frames.append(frame)

    def on_event(self, level: str, text: str) -> None:
        with self.lock:
            self.events.append((level, text))

    def wait(self, predicate, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate():
                    return True
            time.sleep(0.02)
        with self.lock:
            return predicate()


def replay_stream(tmp_path: Path, collector: Collector, **cfg_args) -> tuple[CameraStream, OakCameraConfig]:
    make_recording(tmp_path / "rec.npz")
    cfg = OakCameraConfig(source="replay", replay_file=str(tmp_path / "rec.npz"),
                          replay_unplug_file=str(tmp_path / "unplugged"), serial="14442C10D13EABCE00",
                          reconnect_initial_s=0.1, reconnect_max_s=0.4, **cfg_args)
    stream = CameraStream(lambda: ReplayConnection(cfg), collector.on_frame, collector.on_event,
                          cfg.frame_timeout_s, cfg.reconnect_initial_s, cfg.reconnect_max_s)
    return stream, cfg


def test_stream_delivers_frames_and_counts_drops(tmp_path: Path) -> None:
    c = Collector()
    stream, _ = replay_stream(tmp_path, c, fps=60.0, frame_type="BGR888p")
    stream.open()
    assert stream.device_id == "14442C10D13EABCE00"
    assert stream.intrinsics.width == 224 and stream.intrinsics.fx == pytest.approx(1500 * 224 / 1080)
    try:
        stream.start()
        assert c.wait(lambda: len(c.frames) >= 12)
    finally:
        stream.close()
    first = c.frames[:8]
    assert [f.sequence for f in first] == [0, 1, 2, 5, 6, 7, 8, 9]
    assert first[3].channel_order == "bgr" and first[3].image[0, 0, 2] == 3 * 20  # red channel last in BGR
    snap = stream.stats.snapshot(time.monotonic())
    assert snap.dropped >= 2 and snap.frames >= 12
    assert ("warn", "2 frame(s) dropped (sequence gap before frame 5)") in c.events
    # later gaps within the same second are summed into the next line, not logged one by one
    assert len([e for e in c.events if "dropped" in e[1]]) <= 1 + len(c.frames) / 60
    assert all(0 <= f.receive_steady_ns - f.capture_steady_ns < 5e8 for f in c.frames)
    assert stream.state.status == "closed"


def test_stream_reconnects_after_unplug(tmp_path: Path) -> None:
    c = Collector()
    stream, _ = replay_stream(tmp_path, c, fps=60.0)
    stream.open()
    stream.start()
    try:
        assert c.wait(lambda: len(c.frames) >= 5)
        (tmp_path / "unplugged").touch()
        assert c.wait(lambda: any(level == "error" for level, _ in c.events))
        assert c.wait(lambda: stream.state.reconnect_attempts >= 2)  # reopening fails while unplugged
        state = stream.state
        assert state.status == "lost" and state.disconnects == 1
        assert "QueueException" in state.reason or "reopen failed" in state.reason
        assert "no OAK with MxId 14442C10D13EABCE00" in state.reason
        count = len(c.frames)
        time.sleep(0.3)
        assert len(c.frames) == count  # nothing while unplugged
        (tmp_path / "unplugged").unlink()
        assert c.wait(lambda: stream.state.status == "streaming" and len(c.frames) >= count + 5)
        assert stream.state.reconnects == 1 and stream.state.reason == ""
        # the new session numbers from 0 again: not counted as drops or as a device restart
        assert stream.stats.sequence_restarts == 0
    finally:
        stream.close()
    lost = [text for level, text in c.events if level == "error"]
    assert lost and "MessageQueue was closed" in lost[0]
    assert any("back" in text for level, text in c.events if level == "info")


def test_stream_treats_silence_as_loss(tmp_path: Path) -> None:
    c = Collector()
    stream, _ = replay_stream(tmp_path, c, fps=2.0, frame_timeout_s=0.25)  # frames 0.5 s apart
    stream.open()
    stream.start()
    try:
        assert c.wait(lambda: stream.state.disconnects >= 1)
        assert any("no frame for" in text for level, text in c.events if level == "error")
    finally:
        stream.close()


def test_open_fails_with_the_reason_when_the_camera_is_missing(tmp_path: Path) -> None:
    c = Collector()
    stream, _ = replay_stream(tmp_path, c)
    (tmp_path / "unplugged").touch()
    with pytest.raises(CameraNotFound, match="no OAK with MxId"):
        stream.open()
    stream2, _ = replay_stream(tmp_path, c, width=112, height=112)
    (tmp_path / "unplugged").unlink()
    with pytest.raises(ValueError, match="recording frames are 224x224"):
        stream2.open()


def test_robot_camera_parameter_file() -> None:
    """config/robot/cameras.yaml: three cameras, every parameter a field of the node's config,
    each section a valid config, topics the scissors policy listens to."""
    import dataclasses

    import yaml

    path = Path(__file__).resolve().parents[3] / "config" / "robot" / "cameras.yaml"
    sections = yaml.safe_load(path.read_text())
    assert set(sections) == {"oak_front", "oak_under", "oak_left"}
    fields = {f.name for f in dataclasses.fields(OakCameraConfig)}
    topics = set()
    for node, section in sections.items():
        params = section["ros__parameters"]
        assert set(params) <= fields, f"{node}: unknown {sorted(set(params) - fields)}"
        cfg = OakCameraConfig(**params)
        assert (cfg.width, cfg.height) == (224, 224) and cfg.serial.startswith("MXID_OF_")
        topics.add(cfg.resolved_image_topic())
    assert topics == {"/cameras/front/image_raw", "/cameras/under/image_raw", "/cameras/left/image_raw"}


def test_list_devices_shows_mxids_and_states() -> None:
    from oak_camera.list_devices import describe_devices

    lines = describe_devices([info("18443010C1A5C71200", S.X_LINK_BOOTED), info("14442C10D13EABCE00")])
    assert lines[1].startswith("14442C10D13EABCE00") and "unbooted" in lines[1]
    assert lines[2].startswith("18443010C1A5C71200") and "in use by another process" in lines[2]
    assert "no OAK found" in describe_devices([])[0]


def test_record_round_trip_through_a_replayed_camera(tmp_path: Path) -> None:
    """record() reads a camera connection the way the node does; recording a replayed camera
    gives back the same frames, sequence numbers (gaps included) and calibration."""
    from oak_camera.record import record
    from oak_camera.replay import load_recording

    original = make_recording(tmp_path / "rec.npz")
    for frame_type in ("BGR888p", "RGB888i"):
        cfg = OakCameraConfig(source="replay", replay_file=str(tmp_path / "rec.npz"), fps=100.0,
                              frame_type=frame_type)
        rec = record(lambda cfg=cfg: ReplayConnection(cfg), n_frames=len(original.frames))
        save_recording(tmp_path / "again.npz", rec)
        again = load_recording(tmp_path / "again.npz")
        np.testing.assert_array_equal(again.frames, original.frames)
        np.testing.assert_array_equal(again.sequence, original.sequence)
        np.testing.assert_allclose(again.device_time_s, original.device_time_s, atol=1e-6)
        assert again.sensor == original.sensor and again.device_id == original.device_id
    with pytest.raises(ValueError):
        record(lambda: ReplayConnection(cfg), n_frames=0)
