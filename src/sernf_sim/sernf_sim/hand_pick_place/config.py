"""Typed configuration of the hand pick-and-place task: task, episode layouts, domain shift.

* :class:`HandPickPlaceConfig`: everything about the simulated task (number of envs, rendering,
  control rate, action limits, success thresholds, layout sampling boxes, domain shift).
* :class:`HandEpisodeConfig`: one initial layout (object positions/yaws, target position), what
  ``reset(configs=...)`` takes; :func:`test_configs` gives the 10 fixed evaluation layouts
  (2 object placements × 5 target placements, like the paper's Fig. 8).
* :class:`DomainShift`: the physical and sensing differences that make the ``"shifted"``
  variant stand in for "the real robot".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sernf_sim.hand_pick_place import model as M


def _check_finite(owner: str, name: str, value: Any) -> None:
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{owner}.{name} must be finite, got {value!r}")


@dataclass(frozen=True)
class DomainShift:
    """How a variant differs from the nominal simulation (all identity by default)."""

    object_friction_scale: float = 1.0
    """Multiplies the objects' sliding friction (lower = more slippery grasps)."""

    object_mass_scale: float = 1.0
    """Multiplies the objects' mass and inertia (heavier = more slip and sag)."""

    finger_kp_scale: float = 1.0
    """Multiplies the hand's position-actuator gains, the wrist's included: all 17 are the same
    kind of servo (weaker = softer grip, more lag)."""

    arm_stiffness_scale: float = 1.0
    """Multiplies the stiffness of the wrist "impedance" (the weld to the commanded pose)."""

    obs_noise_std: float = 0.0
    """Std of Gaussian noise added to every low-dimensional observation (m / rad / unitless)."""

    image_noise_std: float = 0.0
    """Std of Gaussian pixel noise added to camera images (0–255 scale)."""

    action_latency_steps: int = 0
    """Control steps between a command and its execution (the executed-action report is the
    command as accepted; the robot acts on it this many steps later)."""

    def __post_init__(self) -> None:
        for name in (
            "object_friction_scale",
            "object_mass_scale",
            "finger_kp_scale",
            "arm_stiffness_scale",
        ):
            v = getattr(self, name)
            _check_finite("DomainShift", name, v)
            if not v > 0:
                raise ValueError(f"DomainShift.{name} must be > 0, got {v}")
        for name in ("obs_noise_std", "image_noise_std"):
            v = getattr(self, name)
            _check_finite("DomainShift", name, v)
            if v < 0:
                raise ValueError(f"DomainShift.{name} must be >= 0, got {v}")
        lat = self.action_latency_steps
        if isinstance(lat, bool) or int(lat) != lat or lat < 0:
            raise ValueError(f"DomainShift.action_latency_steps must be an int >= 0, got {lat!r}")
        object.__setattr__(self, "action_latency_steps", int(lat))

    @classmethod
    def shifted(cls) -> DomainShift:
        """The default "real robot" stand-in: slipperier, heavier objects, weaker fingers,
        a softer arm, noisy sensing and one step of latency."""
        return cls(
            object_friction_scale=0.7,
            object_mass_scale=1.5,
            finger_kp_scale=0.75,
            arm_stiffness_scale=0.5,
            obs_noise_std=0.003,
            image_noise_std=6.0,
            action_latency_steps=1,
        )

    @property
    def is_nominal(self) -> bool:
        return self == DomainShift()


@dataclass(frozen=True)
class HandEpisodeConfig:
    """One initial layout: where the two objects stand and where the target square is."""

    object_xy: tuple[tuple[float, float], tuple[float, float]]
    """World xy (m) of the box and the cylinder (order of ``model.OBJECT_NAMES``)."""

    object_yaw: tuple[float, float]
    """Yaw (rad) of the box and the cylinder about world z."""

    target_xy: tuple[float, float]
    """World xy (m) of the centre of the square target region."""

    def __post_init__(self) -> None:
        try:
            oxy = tuple((float(p[0]), float(p[1])) for p in self.object_xy)
            yaw = tuple(float(y) for y in self.object_yaw)
            txy = (float(self.target_xy[0]), float(self.target_xy[1]))
        except (TypeError, ValueError, IndexError) as e:
            raise ValueError(f"HandEpisodeConfig: malformed fields ({e})") from e
        if len(oxy) != len(M.OBJECT_NAMES) or len(yaw) != len(M.OBJECT_NAMES):
            raise ValueError(
                f"HandEpisodeConfig needs {len(M.OBJECT_NAMES)} object positions and yaws, "
                f"got {len(oxy)} and {len(yaw)}"
            )
        for name, v in (("object_xy", oxy), ("object_yaw", yaw), ("target_xy", txy)):
            _check_finite("HandEpisodeConfig", name, v)
        tx, ty = M.TABLE_HALF_XY
        for p in (*oxy, txy):
            if abs(p[0]) > tx - 0.05 or abs(p[1]) > ty - 0.05:
                raise ValueError(f"HandEpisodeConfig: position {p} is not well inside the table")
        object.__setattr__(self, "object_xy", oxy)
        object.__setattr__(self, "object_yaw", yaw)
        object.__setattr__(self, "target_xy", txy)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (recorded in episode metadata)."""
        return {
            "object_xy": [list(p) for p in self.object_xy],
            "object_yaw": list(self.object_yaw),
            "target_xy": list(self.target_xy),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HandEpisodeConfig:
        unknown = set(d) - {"object_xy", "object_yaw", "target_xy"}
        if unknown:
            raise ValueError(f"HandEpisodeConfig: unknown fields {sorted(unknown)}")
        return cls(
            object_xy=tuple(tuple(p) for p in d["object_xy"]),
            object_yaw=tuple(d["object_yaw"]),
            target_xy=tuple(d["target_xy"]),
        )


@dataclass(frozen=True)
class HandPickPlaceConfig:
    """Configuration of :class:`~sernf_sim.hand_pick_place.env.HandPickPlace`."""

    num_envs: int = 1
    """Number of independent simulations stepped together."""

    render_images: bool = False
    """Render the ``wrist_rgb`` and ``front_rgb`` cameras; False = state-only (no GL needed)."""

    image_size: int = 84
    """Square image side in pixels."""

    include_object_state: bool | None = None
    """Add the privileged ``object_state`` observation; ``None`` = only when not rendering."""

    max_steps: int = 100
    """Time limit in control steps (truncation)."""

    control_hz: float = 10.0
    """Control rate (actions per second)."""

    physics_dt: float = 0.004
    """MuJoCo timestep (s); must divide the control period."""

    max_pos_delta: float = 0.03
    """Largest EE translation per step (m); longer commands are scaled down."""

    max_rot_delta: float = 0.3
    """Largest EE rotation per step (rad); larger rotations are scaled down about their axis."""

    workspace_low: tuple[float, float, float] = (-0.3, -0.38, 0.04)
    """Lower corner of the box the commanded EE position is clipped to (world, m): the
    counterpart of the Franka bridge's safety box."""

    workspace_high: tuple[float, float, float] = (0.3, 0.38, 0.35)
    """Upper corner of the commanded-EE-position box (world, m)."""

    reanchor_distance: float = 0.01
    """Commands chain from the previous commanded pose unless the measured EE is further than
    this from it (m); then from the measured pose (no wind-up against obstacles)."""

    reanchor_angle: float = 0.1
    """Rotation counterpart of ``reanchor_distance`` (rad)."""

    lift_height: float = 0.03
    """Grasp success: object bottom at least this far above the table (m) ..."""

    place_max_speed: float = 0.05
    """Place success: the object must be this slow (m/s) on the table, upright, released."""

    upright_cos: float = 0.9
    """An object is upright if its axis is within acos(this) of vertical."""

    object_low: tuple[float, float] = (0.0, -0.18)
    """Lower xy corner of the region random object positions are drawn from (m)."""

    object_high: tuple[float, float] = (0.14, 0.18)
    """Upper xy corner of the random object region (m)."""

    min_object_separation: float = 0.13
    """Minimum distance between the two objects (the open hand spans ~0.2 m along its x)."""

    target_low: tuple[float, float] = (-0.2, -0.18)
    """Lower xy corner of the random target-centre region (m)."""

    target_high: tuple[float, float] = (-0.08, 0.18)
    """Upper xy corner of the random target-centre region (m)."""

    domain_shift: DomainShift = field(default_factory=DomainShift)
    """Physics/sensing differences (identity = nominal simulation)."""

    seed: int | None = 0
    """Seed of layout sampling and observation noise (``None`` = fresh entropy)."""

    physics_threads: int = 1
    """Threads that step the envs' physics in parallel (each env has its own ``MjData``, and
    MuJoCo releases the GIL inside ``mj_step``, so the results are the same for any number).
    Measured on a 2-core machine: 2 threads step the physics ~1.8x faster than 1 (evaluation of
    50 envs); more threads than cores only add switching."""

    def __post_init__(self) -> None:
        def pos_int(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"HandPickPlaceConfig.{name} must be a positive int, got {v!r}")
            object.__setattr__(self, name, int(v))

        pos_int("num_envs")
        pos_int("image_size")
        pos_int("max_steps")
        pos_int("physics_threads")
        if self.image_size > M.MAX_IMAGE_SIZE:
            raise ValueError(
                f"HandPickPlaceConfig.image_size must be <= {M.MAX_IMAGE_SIZE}, got {self.image_size}"
            )
        if not isinstance(self.render_images, bool):
            raise ValueError("HandPickPlaceConfig.render_images must be a bool")
        if self.include_object_state is not None and not isinstance(
            self.include_object_state, bool
        ):
            raise ValueError("HandPickPlaceConfig.include_object_state must be a bool or None")
        if not self.render_images and self.include_object_state is False:
            raise ValueError(
                "HandPickPlaceConfig: with render_images=False the object state is the only "
                "view of the objects; include_object_state cannot be False"
            )
        for name in (
            "control_hz",
            "physics_dt",
            "max_pos_delta",
            "max_rot_delta",
            "reanchor_distance",
            "reanchor_angle",
            "lift_height",
            "place_max_speed",
            "min_object_separation",
        ):
            v = getattr(self, name)
            _check_finite("HandPickPlaceConfig", name, v)
            if not v > 0:
                raise ValueError(f"HandPickPlaceConfig.{name} must be > 0, got {v}")
        if not 0 < self.upright_cos < 1:
            raise ValueError(
                f"HandPickPlaceConfig.upright_cos must be in (0, 1), got {self.upright_cos}"
            )
        if self.max_rot_delta >= math.pi:
            raise ValueError("HandPickPlaceConfig.max_rot_delta must be < pi")
        ratio = 1.0 / (self.control_hz * self.physics_dt)
        if abs(ratio - round(ratio)) > 1e-6 or round(ratio) < 5:
            raise ValueError(
                f"HandPickPlaceConfig: the control period 1/{self.control_hz}s must be a whole "
                f"number (>= 5) of physics steps of {self.physics_dt}s"
            )
        for lo_name, hi_name, dim in (
            ("workspace_low", "workspace_high", 3),
            ("object_low", "object_high", 2),
            ("target_low", "target_high", 2),
        ):
            lo = np.asarray(getattr(self, lo_name), dtype=np.float64)
            hi = np.asarray(getattr(self, hi_name), dtype=np.float64)
            if lo.shape != (dim,) or hi.shape != (dim,):
                raise ValueError(f"HandPickPlaceConfig.{lo_name}/{hi_name} must have {dim} entries")
            _check_finite("HandPickPlaceConfig", lo_name, lo)
            _check_finite("HandPickPlaceConfig", hi_name, hi)
            if np.any(lo > hi):
                raise ValueError(f"HandPickPlaceConfig.{lo_name} must be <= {hi_name} elementwise")
            object.__setattr__(self, lo_name, tuple(float(x) for x in lo))
            object.__setattr__(self, hi_name, tuple(float(x) for x in hi))
        if not isinstance(self.domain_shift, DomainShift):
            raise ValueError("HandPickPlaceConfig.domain_shift must be a DomainShift")

    @property
    def substeps(self) -> int:
        """Physics steps per control step."""
        return int(round(1.0 / (self.control_hz * self.physics_dt)))

    @property
    def object_state(self) -> bool:
        """Whether the ``object_state`` observation is included."""
        if self.include_object_state is None:
            return not self.render_images
        return self.include_object_state

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)


def test_configs() -> list[HandEpisodeConfig]:
    """The 10 fixed evaluation layouts: 2 object placements × 5 target placements.

    Object placement A puts the box front-left and the cylinder front-right (seen from the
    front camera); B swaps sides and turns the box. Targets cover the back row and centre.
    """
    placements = (
        (((0.07, 0.12), (0.05, -0.11)), (0.3, 0.0)),
        (((0.04, -0.13), (0.10, 0.10)), (-0.5, 0.0)),
    )
    targets = ((-0.14, -0.13), (-0.14, 0.0), (-0.14, 0.13), (-0.10, -0.06), (-0.18, 0.07))
    return [
        HandEpisodeConfig(object_xy=oxy, object_yaw=yaw, target_xy=t)
        for oxy, yaw in placements
        for t in targets
    ]


# Not a pytest test, despite the name the task interface asks for.
test_configs.__test__ = False  # type: ignore[attr-defined]
