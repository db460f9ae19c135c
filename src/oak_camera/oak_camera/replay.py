"""Recorded frames served through a host-side depthai pipeline: the camera stand-in.

A recording (.npz) holds what a camera delivers: frames at the output size, the device's
sequence numbers (with the gaps of frames it dropped) and device timestamps, plus the
calibration at the sensor size. ``ReplayConnection`` plays it through a real depthai pipeline
(a ThreadedHostNode sending ``dai.ImgFrame`` objects into an output queue made by
``createOutputQueue``), so the capture loop reads it with exactly the calls and types it uses
on a device, and sees depthai's own ``MessageQueue.QueueException`` when the replayed camera
is "unplugged" (the pipeline stops and depthai closes its queues, as on a device loss).
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from pathlib import Path

import depthai as dai
import numpy as np

from oak_camera.config import OakCameraConfig
from oak_camera.device import CameraNotFound, pipeline_plan
from oak_camera.intrinsics import Intrinsics, correct_for_crop_and_resize

__all__ = ["Recording", "ReplayConnection", "load_recording", "save_recording"]


@dataclass
class Recording:
    frames: np.ndarray
    """``[N, h, w, 3]`` uint8, RGB, at the output size."""
    sequence: np.ndarray
    """``[N]`` device sequence numbers (increasing; gaps = frames the device dropped)."""
    device_time_s: np.ndarray
    """``[N]`` capture times on the device clock."""
    sensor: Intrinsics
    """Calibration at the sensor size (what the device would report)."""
    device_id: str = "REPLAY"

    def __post_init__(self) -> None:
        n = len(self.frames)
        if self.frames.ndim != 4 or self.frames.shape[3] != 3 or self.frames.dtype != np.uint8 or n == 0:
            raise ValueError(f"frames must be [N, h, w, 3] uint8 with N > 0, got {self.frames.shape} {self.frames.dtype}")
        if self.sequence.shape != (n,) or self.device_time_s.shape != (n,):
            raise ValueError("sequence and device_time_s need one entry per frame")
        if n > 1 and not np.all(np.diff(self.sequence) > 0):
            raise ValueError("sequence numbers must increase")


def save_recording(path: Path, rec: Recording) -> None:
    s = rec.sensor
    np.savez_compressed(
        path, frames=rec.frames, sequence=rec.sequence.astype(np.int64),
        device_time_s=rec.device_time_s.astype(np.float64),
        sensor_size=np.array([s.width, s.height]), sensor_matrix=s.matrix,
        distortion=np.array(s.distortion, dtype=np.float64), distortion_model=np.array(s.distortion_model),
        device_id=np.array(rec.device_id))


def load_recording(path: Path) -> Recording:
    with np.load(path, allow_pickle=False) as z:
        width, height = (int(v) for v in z["sensor_size"])
        sensor = Intrinsics.from_matrix(z["sensor_matrix"], width, height, str(z["distortion_model"]),
                                        z["distortion"])
        return Recording(z["frames"], z["sequence"], z["device_time_s"], sensor, str(z["device_id"]))


def _to_frame_bytes(rgb: np.ndarray, frame_type: str) -> bytes:
    image = rgb if frame_type.startswith("RGB") else rgb[..., ::-1]
    if frame_type.endswith("p"):
        image = np.transpose(image, (2, 0, 1))  # three planes
    return np.ascontiguousarray(image).tobytes()


class _ReplayCamera(dai.node.ThreadedHostNode):
    """Sends the recording's frames at ``fps`` (looping; sequence numbers keep increasing)."""

    def __init__(self) -> None:
        super().__init__()
        self.out = self.createOutput()

    def setup(self, rec: Recording, frame_type: str, fps: float, unplug_file: Path | None) -> None:
        self.rec, self.frame_type, self.period, self.unplug_file = rec, frame_type, 1.0 / fps, unplug_file

    def run(self) -> None:
        rec = self.rec
        n = len(rec.frames)
        payloads = [_to_frame_bytes(f, self.frame_type) for f in rec.frames]
        height, width = rec.frames.shape[1:3]
        span = int(rec.sequence[-1] - rec.sequence[0]) + 1
        duration = float(rec.device_time_s[-1] - rec.device_time_s[0]) + self.period
        next_time = time.monotonic()
        i = 0
        while self.isRunning():
            if self.unplug_file is not None and self.unplug_file.exists():
                self.stopPipeline()  # the camera is gone: depthai closes the output queues
                return
            loop, k = divmod(i, n)
            frame = dai.ImgFrame()
            frame.setData(payloads[k])
            frame.setWidth(width)
            frame.setHeight(height)
            frame.setType(dai.ImgFrame.Type.__members__[self.frame_type])
            frame.setSequenceNum(int(rec.sequence[k]) + loop * span)
            frame.setTimestampDevice(datetime.timedelta(seconds=float(rec.device_time_s[k]) + loop * duration))
            frame.setTimestamp(dai.Clock.now())  # captured "now" on the host's steady clock
            self.out.send(frame)
            i += 1
            next_time += self.period
            time.sleep(max(0.0, next_time - time.monotonic()))


class ReplayConnection:
    """A CameraConnection playing a recording (see the module docstring)."""

    def __init__(self, cfg: OakCameraConfig) -> None:
        unplug = Path(cfg.replay_unplug_file) if cfg.replay_unplug_file else None
        rec = load_recording(Path(cfg.replay_file))
        if cfg.serial and cfg.serial != rec.device_id:
            raise CameraNotFound(f"no OAK with MxId {cfg.serial} connected (connected: ['{rec.device_id}'])")
        if unplug is not None and unplug.exists():
            raise CameraNotFound(f"no OAK with MxId {cfg.serial or rec.device_id} connected (connected: none)")
        plan = pipeline_plan(cfg)
        if rec.frames.shape[1:3] != (cfg.height, cfg.width):
            raise ValueError(f"recording frames are {rec.frames.shape[2]}x{rec.frames.shape[1]}, "
                             f"the node publishes {cfg.width}x{cfg.height}")
        if (rec.sensor.width, rec.sensor.height) != plan.sensor_size:
            raise ValueError(f"recording calibration is for {rec.sensor.width}x{rec.sensor.height}, "
                             f"the node's sensor size is {plan.sensor_size[0]}x{plan.sensor_size[1]}")
        self.device_id = rec.device_id
        self.description = f"replay of {cfg.replay_file} ({len(rec.frames)} frames)"
        self.sensor_intrinsics = rec.sensor
        self.intrinsics = correct_for_crop_and_resize(rec.sensor, plan.crop, *plan.output_size)
        self.pipeline = dai.Pipeline(createImplicitDevice=False)
        camera = self.pipeline.create(_ReplayCamera)
        camera.setup(rec, plan.frame_type, plan.fps, unplug)
        self.queue = camera.out.createOutputQueue(maxSize=plan.queue_size, blocking=False)

    def start(self) -> None:
        self.pipeline.start()

    def next_frame(self, timeout_s: float):
        return self.queue.get(datetime.timedelta(seconds=timeout_s))

    def close(self) -> None:
        if self.pipeline.isRunning():
            self.pipeline.stop()
        self.pipeline.wait()
