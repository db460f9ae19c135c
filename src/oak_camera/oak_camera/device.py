"""The OAK itself through depthai v3: choosing the device by MxId, the on-device pipeline, the
calibration, and the connection the capture loop reads frames from.

Nothing here can run without a camera (depthai v3 creates device nodes only on a pipeline that
has a device), so the decisions are kept in pure functions that the tests exercise:
``pipeline_plan`` (what the pipeline will request), ``select_device`` (which device to open),
``sensor_intrinsics`` (calibration -> intrinsics). ``build_pipeline`` only executes a plan.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import depthai as dai

from oak_camera.config import OakCameraConfig
from oak_camera.intrinsics import CropRect, Intrinsics, correct_for_crop_and_resize, ros_distortion

__all__ = [
    "DEVICE_LOST_ERRORS", "CameraConnection", "CameraNotFound", "OakDeviceConnection", "PipelinePlan",
    "add_crop_and_resize", "build_pipeline", "pipeline_plan", "select_device", "sensor_intrinsics",
]

#: What depthai raises when a running camera goes away: reading a queue that depthai closed
#: (``MessageQueue.QueueException``, not a RuntimeError), XLink read/write failures
#: (``XLinkError`` and subclasses) and other RuntimeErrors of the device connection.
DEVICE_LOST_ERRORS: tuple[type[BaseException], ...] = (dai.MessageQueue.QueueException, RuntimeError)


class CameraNotFound(RuntimeError):
    """The requested camera is not connected (or not uniquely identified)."""


class CameraConnection(Protocol):
    """An open camera whose frames the capture loop reads (device or replay)."""

    device_id: str
    description: str
    intrinsics: Intrinsics
    """Of the published (cropped and resized) image."""
    sensor_intrinsics: Intrinsics
    """Of the full sensor mode (the calibration before the crop and resize)."""

    def start(self) -> None: ...

    def next_frame(self, timeout_s: float):
        """The next ``dai.ImgFrame``, or None after ``timeout_s``; raises one of
        ``DEVICE_LOST_ERRORS`` when the camera is gone."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class PipelinePlan:
    """What the device pipeline requests, decided from the config alone."""

    socket: str
    sensor_size: tuple[int, int]
    crop: CropRect
    output_size: tuple[int, int]
    frame_type: str
    fps: float
    queue_size: int
    use_image_manip: bool
    """False: the camera's own scaler does a centred crop + resize (``ImgResizeMode.CROP``).
    True: the camera outputs the whole sensor image (NV12) and an ImageManip node crops the
    configured rectangle and resizes it (an off-centre crop needs this)."""

    @property
    def max_output_bytes(self) -> int:
        return self.output_size[0] * self.output_size[1] * 3


def pipeline_plan(cfg: OakCameraConfig) -> PipelinePlan:
    return PipelinePlan(
        socket=cfg.board_socket, sensor_size=(cfg.sensor_width, cfg.sensor_height), crop=cfg.crop,
        output_size=(cfg.width, cfg.height), frame_type=cfg.frame_type, fps=float(cfg.fps),
        queue_size=cfg.queue_size, use_image_manip=not cfg.centered_crop,
    )


def add_crop_and_resize(pipeline: dai.Pipeline, plan: PipelinePlan,
                        run_on_host: bool = False) -> dai.node.ImageManip:
    """An ImageManip node cutting ``plan.crop`` out of its input and resizing it to the output
    size and type (on the device; ``run_on_host`` runs depthai's same node on the host, which
    the tests use to check the crop and the intrinsics without a camera)."""
    manip = pipeline.create(dai.node.ImageManip)
    if run_on_host:
        manip.setRunOnHost(True)
    manip.initialConfig.addCrop(plan.crop.x, plan.crop.y, plan.crop.width, plan.crop.height)
    manip.initialConfig.setOutputSize(*plan.output_size, dai.ImageManipConfig.ResizeMode.STRETCH)
    manip.initialConfig.setFrameType(dai.ImgFrame.Type.__members__[plan.frame_type])
    manip.setMaxOutputFrameSize(plan.max_output_bytes)
    return manip


def build_pipeline(pipeline: dai.Pipeline, plan: PipelinePlan) -> dai.MessageQueue:
    """Add the camera (and, for an explicit crop, an ImageManip) to ``pipeline``; returns the
    host-side output queue (non-blocking: a slow host loses the oldest frames, never stalls
    the device)."""
    camera = pipeline.create(dai.node.Camera).build(
        dai.CameraBoardSocket.__members__[plan.socket], sensorResolution=plan.sensor_size,
        sensorFps=plan.fps)
    frame_type = dai.ImgFrame.Type.__members__[plan.frame_type]
    if plan.use_image_manip:
        full = camera.requestOutput(plan.sensor_size, type=dai.ImgFrame.Type.NV12, fps=plan.fps)
        manip = add_crop_and_resize(pipeline, plan)
        full.link(manip.inputImage)
        output = manip.out
    else:
        output = camera.requestOutput(plan.output_size, type=frame_type,
                                      resizeMode=dai.ImgResizeMode.CROP, fps=plan.fps)
    return output.createOutputQueue(maxSize=plan.queue_size, blocking=False)


def select_device(devices: Sequence[dai.DeviceInfo], serial: str) -> dai.DeviceInfo:
    """The device to open: the one whose MxId is ``serial``, or with an empty serial the only
    one connected. Raises CameraNotFound with the reason (and the MxIds that are there)."""
    ids = sorted(d.getDeviceId() for d in devices)
    if serial:
        for device in devices:
            if device.getDeviceId() == serial:
                if device.state in (dai.XLinkDeviceState.X_LINK_BOOTED,
                                    dai.XLinkDeviceState.X_LINK_GATE_BOOTED):
                    raise CameraNotFound(f"OAK {serial} is in use by another process")
                return device
        raise CameraNotFound(f"no OAK with MxId {serial} connected (connected: {ids or 'none'})")
    if not devices:
        raise CameraNotFound("no OAK connected")
    if len(devices) > 1:
        raise CameraNotFound(f"{len(devices)} OAKs connected ({', '.join(ids)}): set the serial "
                             "parameter to the MxId of the one this node drives")
    return devices[0]


def sensor_intrinsics(calibration: dai.CalibrationHandler, socket: str, width: int,
                      height: int) -> Intrinsics:
    """Intrinsics of the full sensor output ``width`` x ``height`` from the device calibration
    (depthai rescales its calibration to that mode)."""
    board_socket = dai.CameraBoardSocket.__members__[socket]
    matrix = calibration.getCameraIntrinsics(board_socket, width, height)
    model, coeffs = ros_distortion(calibration.getDistortionModel(board_socket).name,
                                   calibration.getDistortionCoefficients(board_socket))
    return Intrinsics.from_matrix(matrix, width, height, model, coeffs)


class OakDeviceConnection:
    """One opened OAK with the pipeline of ``plan``; ``close`` releases the device."""

    def __init__(self, cfg: OakCameraConfig) -> None:
        plan = pipeline_plan(cfg)
        info = select_device(dai.Device.getAllConnectedDevices(), cfg.serial)
        self.device = dai.Device(info)
        try:
            # depthai's own reconnection reopens *any* available device, which with three
            # cameras on one PC can be another camera: the capture loop reconnects by MxId.
            self.device.setMaxReconnectionAttempts(0)
            self.device_id = info.getDeviceId()
            self.description = (f"{self.device.getProductName() or 'OAK'} {self.device_id} "
                                f"({self.device.getUsbSpeed().name})")
            sensor = sensor_intrinsics(self.device.readCalibration(), plan.socket, *plan.sensor_size)
            self.sensor_intrinsics = sensor
            self.intrinsics = correct_for_crop_and_resize(sensor, plan.crop, *plan.output_size)
            self.pipeline = dai.Pipeline(self.device)
            self.queue = build_pipeline(self.pipeline, plan)
        except BaseException:
            self.device.close()
            raise

    def start(self) -> None:
        self.pipeline.start()

    def next_frame(self, timeout_s: float):
        return self.queue.get(datetime.timedelta(seconds=timeout_s))

    def close(self) -> None:
        try:
            if self.pipeline.isRunning():
                self.pipeline.stop()  # closes the queues and the device
        finally:
            self.device.close()
