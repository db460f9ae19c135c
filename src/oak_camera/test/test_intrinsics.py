"""Intrinsics correction for the on-device crop and resize, checked against geometry (where a
scene point must land) and against depthai's own ImageManip running on the host."""

from __future__ import annotations

import datetime

import depthai as dai
import numpy as np
import pytest

from oak_camera.config import OakCameraConfig
from oak_camera.device import add_crop_and_resize, pipeline_plan
from oak_camera.intrinsics import (
    CropRect,
    Intrinsics,
    camera_info_matrices,
    centered_crop,
    correct_for_crop_and_resize,
    ros_distortion,
)

SENSOR = Intrinsics(1920, 1080, fx=1480.0, fy=1475.0, cx=955.3, cy=546.8,
                    distortion_model="rational_polynomial", distortion=(0.1, -0.2, 0.001, 0.002, 0.05, 0, 0, 0))


def project(k: Intrinsics, point: np.ndarray) -> np.ndarray:
    x, y, z = point
    return np.array([k.fx * x / z + k.cx, k.fy * y / z + k.cy])


def test_centered_crop_keeps_the_output_aspect_ratio() -> None:
    assert centered_crop(1920, 1080, 224, 224) == CropRect(420, 0, 1080, 1080)
    assert centered_crop(1920, 1080, 320, 240) == CropRect(240, 0, 1440, 1080)
    assert centered_crop(1000, 2000, 100, 100) == CropRect(0, 500, 1000, 1000)
    assert centered_crop(1920, 1080, 1920, 1080) == CropRect(0, 0, 1920, 1080)


def test_crop_alone_shifts_the_principal_point() -> None:
    crop = CropRect(100, 40, 640, 480)
    out = correct_for_crop_and_resize(SENSOR, crop, 640, 480)
    assert (out.fx, out.fy) == (SENSOR.fx, SENSOR.fy)
    assert out.cx == pytest.approx(SENSOR.cx - 100) and out.cy == pytest.approx(SENSOR.cy - 40)
    assert (out.width, out.height) == (640, 480)
    assert out.distortion == SENSOR.distortion and out.distortion_model == SENSOR.distortion_model


@pytest.mark.parametrize("convention", ["depthai", "edges"])
def test_scene_points_land_where_the_resampler_puts_them(convention: str) -> None:
    crop = CropRect(420, 0, 1080, 1080)
    out = correct_for_crop_and_resize(SENSOR, crop, 224, 224, convention)
    s = 224 / 1080
    rng = np.random.default_rng(3)
    for point in rng.uniform([-0.3, -0.3, 0.5], [0.3, 0.3, 2.0], size=(20, 3)):
        u, v = project(SENSOR, point)
        if convention == "depthai":  # output pixel j samples input j / s (+ crop origin)
            expected = np.array([s * (u - 420), s * v])
        else:  # edges on edges: the crop's left edge (420 - 0.5) lands on -0.5
            expected = np.array([s * (u - 420 + 0.5) - 0.5, s * (v + 0.5) - 0.5])
        np.testing.assert_allclose(project(out, point), expected, atol=1e-9)
    assert out.fx == pytest.approx(SENSOR.fx * s) and out.fy == pytest.approx(SENSOR.fy * s)


def test_edge_convention_maps_crop_edges_and_centre() -> None:
    crop = CropRect(420, 0, 1080, 1080)
    out = correct_for_crop_and_resize(SENSOR, crop, 224, 224, "edges")
    # a ray through the crop's left edge (u = 419.5) must reach the output's left edge (-0.5),
    # one through the crop's centre pixel (u = 420 + 539.5) the output's centre (111.5)
    for u_sensor, u_out in ((419.5, -0.5), (420 + 1079.5, 223.5), (420 + 539.5, 111.5)):
        ray = np.array([(u_sensor - SENSOR.cx) / SENSOR.fx, 0.0, 1.0])
        assert project(out, ray)[0] == pytest.approx(u_out)
    # the conventions differ by (s - 1) / 2 in the principal point
    naive = correct_for_crop_and_resize(SENSOR, crop, 224, 224, "depthai")
    assert out.cx - naive.cx == pytest.approx((224 / 1080 - 1) / 2)


def test_crop_outside_the_sensor_and_bad_conventions_are_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        correct_for_crop_and_resize(SENSOR, CropRect(1000, 0, 1080, 1080), 224, 224)
    with pytest.raises(ValueError, match="convention"):
        correct_for_crop_and_resize(SENSOR, CropRect(0, 0, 1080, 1080), 224, 224, "corners")
    with pytest.raises(ValueError):
        CropRect(-1, 0, 10, 10)


def test_depthai_image_manip_on_the_host_agrees_with_the_correction() -> None:
    """depthai's ImageManip (the node the explicit-crop pipeline puts on the device), run on the
    host: a blob at a known sensor position must appear where the corrected intrinsics put it,
    and depthai's own bookkeeping (ImgTransformation) must give the same matrix."""
    cfg = OakCameraConfig(crop_x=500, crop_y=100, crop_width=900, crop_height=900)
    plan = pipeline_plan(cfg)
    assert plan.use_image_manip and plan.crop == CropRect(500, 100, 900, 900)
    expected = correct_for_crop_and_resize(SENSOR, plan.crop, 224, 224, "depthai")
    u0, v0 = 1000.3, 600.7
    uu, vv = np.meshgrid(np.arange(1920), np.arange(1080))
    blob = (255 * np.exp(-((uu - u0) ** 2 + (vv - v0) ** 2) / (2 * 12.0**2))).astype(np.uint8)
    pipeline = dai.Pipeline(createImplicitDevice=False)
    manip = add_crop_and_resize(pipeline, plan, run_on_host=True)
    source = manip.inputImage.createInputQueue()
    output = manip.out.createOutputQueue(4, True)
    pipeline.start()
    try:
        frame = dai.ImgFrame()
        frame.setData(np.repeat(blob[..., None], 3, axis=2).tobytes())
        frame.setWidth(1920)
        frame.setHeight(1080)
        frame.setType(dai.ImgFrame.Type.RGB888i)
        frame.setTransformation(dai.ImgTransformation(1920, 1080, SENSOR.matrix.tolist()))
        source.send(frame)
        result = output.get(datetime.timedelta(seconds=10))
        assert result is not None, "ImageManip produced nothing"
        image = np.asarray(result.getData()).reshape(224, 224, 3)[..., 0].astype(float)
        transformation = np.array(result.getTransformation().getIntrinsicMatrix())
    finally:
        pipeline.stop()
        pipeline.wait()
    y, x = np.mgrid[:224, :224]
    centroid = np.array([(image * x).sum(), (image * y).sum()]) / image.sum()
    s = 224 / 900
    where_depthai = np.array([s * (u0 - 500), s * (v0 - 100)])
    np.testing.assert_allclose(centroid, where_depthai, atol=0.05)
    # the edge-aligned convention would be off by ~0.38 px here: the check can tell them apart
    assert abs(centroid[0] - (s * (u0 - 500 + 0.5) - 0.5)) > 0.3
    np.testing.assert_allclose(transformation, expected.matrix, atol=1e-3)


def test_ros_distortion_models() -> None:
    fourteen = (0.1, -0.2, 0.001, 0.002, 0.05, 0.01, 0.02, 0.03) + (0.0,) * 6
    assert ros_distortion("Perspective", fourteen) == ("rational_polynomial", fourteen[:8])
    tilted = fourteen[:12] + (0.001, 0.0)
    assert ros_distortion("Perspective", tilted) == ("rational_polynomial", tilted)
    assert ros_distortion("Fisheye", (0.1, 0.2, 0.3, 0.4)) == ("equidistant", (0.1, 0.2, 0.3, 0.4))
    with pytest.raises(ValueError, match="no ROS CameraInfo"):
        ros_distortion("RadialDivision", (0.1,))


def test_camera_info_matrices() -> None:
    out = correct_for_crop_and_resize(SENSOR, CropRect(420, 0, 1080, 1080), 224, 224)
    k, r, p = camera_info_matrices(out)
    np.testing.assert_allclose(np.reshape(k, (3, 3)), out.matrix)
    np.testing.assert_allclose(np.reshape(r, (3, 3)), np.eye(3))
    p = np.reshape(p, (3, 4))
    np.testing.assert_allclose(p[:, :3], out.matrix)
    np.testing.assert_allclose(p[:, 3], 0.0)


def test_config_crop_parameters() -> None:
    assert OakCameraConfig().crop == CropRect(420, 0, 1080, 1080)
    assert OakCameraConfig().centered_crop
    assert OakCameraConfig(crop_width=800, crop_height=800).crop == CropRect(560, 140, 800, 800)
    assert not OakCameraConfig(crop_width=800, crop_height=800).centered_crop
    for bad in ({"crop_x": 10}, {"crop_width": 100}, {"crop_x": 1500, "crop_y": 0, "crop_width": 800, "crop_height": 800},
                {"crop_x": 10, "crop_width": 100, "crop_height": 100}, {"width": 4000},
                {"frame_type": "NV12"}, {"encoding": "mono8"}, {"camera_name": "front camera"},
                {"fps": 0.0}, {"source": "replay"}, {"board_socket": "CAM_Z"},
                {"reconnect_initial_s": 2.0, "reconnect_max_s": 1.0}):
        with pytest.raises(ValueError):
            OakCameraConfig(**bad)
    cfg = OakCameraConfig(camera_name="wrist_left")
    assert cfg.resolved_image_topic() == "/cameras/wrist_left/image_raw"
    assert cfg.resolved_camera_info_topic() == "/cameras/wrist_left/camera_info"
    assert cfg.resolved_frame_id() == "wrist_left_optical_frame"
