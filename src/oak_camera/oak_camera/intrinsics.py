"""Pinhole intrinsics of the published image: the device calibration corrected for the on-device
crop and resize, and the CameraInfo fields derived from them.

Pixel coordinates follow OpenCV and ROS CameraInfo: integer coordinates are pixel *centres*
(the image's left edge is at u = -0.5). A crop starting at integer pixel (x0, y0) shifts the
principal point, cx' = cx - x0, in any convention. A resize by s = out / in depends on where
the resampler takes output pixel j from, and two conventions exist:

- ``"depthai"``: output pixel j samples input position j / s, so u' = s·u: fx' = s·fx,
  cx' = s·(cx - x0). This is what depthai's ImageManip does and what its ImgTransformation
  reports for its frames (the tests run depthai's ImageManip and locate a blob in its output).
- ``"edges"``: image edges map onto image edges (cv2.resize, PIL, torchvision), output pixel j
  samples (j + 0.5) / s - 0.5, so u' = s·(u + 0.5) - 0.5: cx' = s·(cx - x0 + 0.5) - 0.5. Use it
  for frames resized on the host by such a library.

The two differ by (s - 1)/2 px in the principal point: about 0.4 px for 1080 -> 224.
Distortion coefficients act on normalised coordinates and are unchanged by crop and resize.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "RESAMPLING_CONVENTIONS", "CropRect", "Intrinsics", "camera_info_matrices", "centered_crop", "correct_for_crop_and_resize",
    "ros_distortion",
]


@dataclass(frozen=True)
class CropRect:
    """A crop of the sensor image, in pixels (top-left corner and size)."""

    x: int
    y: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.x < 0 or self.y < 0:
            raise ValueError(f"crop origin ({self.x}, {self.y}) must not be negative")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"crop size {self.width}x{self.height} must be positive")

    def check_inside(self, width: int, height: int) -> None:
        if self.x + self.width > width or self.y + self.height > height:
            raise ValueError(
                f"crop x={self.x} y={self.y} {self.width}x{self.height} does not fit in the "
                f"{width}x{height} sensor image")


def centered_crop(src_width: int, src_height: int, out_width: int, out_height: int) -> CropRect:
    """The largest centred crop of a ``src`` image with the aspect ratio of ``out`` (what a
    crop-then-resize to ``out`` without distortion keeps). Odd margins put the extra pixel on
    the right/bottom."""
    if min(src_width, src_height, out_width, out_height) <= 0:
        raise ValueError("image sizes must be positive")
    if src_width * out_height >= src_height * out_width:  # source wider than the output
        height = src_height
        width = min(src_width, round(src_height * out_width / out_height))
    else:
        width = src_width
        height = min(src_height, round(src_width * out_height / out_width))
    return CropRect((src_width - width) // 2, (src_height - height) // 2, width, height)


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole camera model of one image size."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = "plumb_bob"
    """ROS distortion model name: plumb_bob, rational_polynomial or equidistant."""
    distortion: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size {self.width}x{self.height} must be positive")
        values = (self.fx, self.fy, self.cx, self.cy, *self.distortion)
        if not all(math.isfinite(v) for v in values):
            raise ValueError("intrinsics must be finite")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"focal lengths fx={self.fx}, fy={self.fy} must be positive")

    @classmethod
    def from_matrix(cls, matrix, width: int, height: int, distortion_model: str,
                    distortion) -> Intrinsics:
        k = np.asarray(matrix, dtype=float)
        if k.shape != (3, 3):
            raise ValueError(f"camera matrix must be 3x3, got {k.shape}")
        return cls(width, height, float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]),
                   distortion_model, tuple(float(d) for d in distortion))

    @property
    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


RESAMPLING_CONVENTIONS = ("depthai", "edges")


def correct_for_crop_and_resize(sensor: Intrinsics, crop: CropRect, out_width: int,
                                out_height: int, convention: str = "depthai") -> Intrinsics:
    """Intrinsics of the image obtained by cropping ``crop`` out of the ``sensor`` image and
    resizing it to ``out_width`` x ``out_height``; ``convention`` is the resampler's (module
    docstring): "depthai" for frames cropped and resized on the OAK."""
    if convention not in RESAMPLING_CONVENTIONS:
        raise ValueError(f"convention {convention!r} is not one of {RESAMPLING_CONVENTIONS}")
    crop.check_inside(sensor.width, sensor.height)
    if out_width <= 0 or out_height <= 0:
        raise ValueError(f"output size {out_width}x{out_height} must be positive")
    sx = out_width / crop.width
    sy = out_height / crop.height
    half = 0.5 if convention == "edges" else 0.0
    return Intrinsics(
        width=out_width, height=out_height,
        fx=sensor.fx * sx, fy=sensor.fy * sy,
        cx=(sensor.cx - crop.x + half) * sx - half,
        cy=(sensor.cy - crop.y + half) * sy - half,
        distortion_model=sensor.distortion_model, distortion=sensor.distortion,
    )


def ros_distortion(depthai_model: str, coefficients) -> tuple[str, tuple[float, ...]]:
    """depthai's calibration model and coefficients -> (ROS distortion_model, D).

    depthai stores 14 coefficients for its perspective model, OpenCV order
    (k1, k2, p1, p2, k3, k4, k5, k6, s1, s2, s3, s4, τx, τy), and 4 for fisheye. ROS calls the
    first eight ``rational_polynomial``; when the thin-prism/tilt terms are non-zero all 14 are
    kept (OpenCV-based consumers such as image_geometry accept 14), so nothing is silently lost.
    """
    coeffs = tuple(float(c) for c in coefficients)
    if depthai_model == "Perspective":
        if len(coeffs) < 8:
            coeffs = coeffs + (0.0,) * (8 - len(coeffs))
        if any(c != 0.0 for c in coeffs[8:]):
            return "rational_polynomial", coeffs
        return "rational_polynomial", coeffs[:8]
    if depthai_model == "Fisheye":
        if len(coeffs) < 4:
            raise ValueError(f"fisheye calibration needs 4 coefficients, got {len(coeffs)}")
        return "equidistant", coeffs[:4]
    raise ValueError(f"camera model {depthai_model!r} has no ROS CameraInfo equivalent "
                     "(supported: Perspective, Fisheye)")


def camera_info_matrices(intr: Intrinsics) -> tuple[list[float], list[float], list[float]]:
    """Row-major K (9), R (9) and P (12) of a monocular camera: R = identity, P = [K | 0]."""
    k = intr.matrix
    r = np.eye(3)
    p = np.hstack([k, np.zeros((3, 1))])
    return k.ravel().tolist(), r.ravel().tolist(), p.ravel().tolist()
