"""A 2-D point-reaching task with two routes around an obstacle (a two-mode task).

The smallest task that exercises everything SERNF cares about, fast enough for unit tests:

* **Two modes.** A point agent starts on the left of the arena, the goal lies on the right, and a
  disk-shaped obstacle in the middle blocks every straight line between the start and goal
  regions. A policy must commit to the route above *or* below the disk; averaging the two
  (what a unimodal Gaussian policy learns from a 50/50 dataset) drives into the obstacle.
* **Real failures.** Touching the obstacle *terminates* the episode as a failure (reward 0,
  ``terminated=True``, ``info["collision"]``). We chose termination over "the disk blocks
  motion" because a collision is then a distinct, unrecoverable failure the critic has to learn
  to avoid, rather than just lost time (``PointTaskConfig.collision="block"`` gives the
  blocking behaviour if wanted).
* **Time pressure.** The step length is limited (``max_step`` arena units per control step), so
  a clean route around the obstacle takes ~60 % of ``time_limit`` steps; hesitating, dithering
  or taking the long way round ends in a timeout (``truncated=True``). Together with the small
  goal region this makes a good policy measurably better than a sloppy one and makes the
  open-loop execution of action chunks matter.
* **Sparse reward.** +1 on the step the agent's position ends inside the goal disk; the episode
  terminates there.

Units: positions and actions are in arena units (the arena is ``[-a, a]²``); an action is the
commanded displacement for one control step (``1 / control_hz`` seconds), i.e. a velocity
command in units per step. Commands longer than ``max_step`` are scaled down to ``max_step``
(direction kept) and rounded to float32; exactly that command moves the agent and is reported
as ``info["executed_action"]``, so replaying recorded actions reproduces an episode bit for bit.

Observation ``"state"`` (float32, 6): ``[x, y, goal_x, goal_y, dx, dy]`` where ``(dx, dy)`` is the
displacement actually made in the previous step (zeros after reset); with
``time_in_observation`` also ``"time_left"`` (float32, 1), the fraction of the time limit left.

All envs step together as numpy arrays (no Python loop over envs). The env does not auto-reset:
once an env's episode has ended it is frozen (actions ignored, reward 0, its ``terminated`` /
``truncated`` flags stay set) until the next :meth:`PointTask.reset`; the rollout driver
(:func:`sernf_sim.evaluation.rollout_chunked`) handles episode boundaries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sernf_data.spec import ObsKeySpec
from sernf_sim.evaluation import ChunkTiming

#: Layout of the ``"state"`` observation.
STATE_FIELDS = ("x", "y", "goal_x", "goal_y", "dx", "dy")
STATE_DIM = len(STATE_FIELDS)
ACTION_DIM = 2


#: Default chunk timing for the point task at 10 Hz: a decision every 0.8 s, with two queued
#: actions of latency. T=2 so the observation-history path is exercised in tests.
POINT_TIMING = ChunkTiming(T=2, P=2, H=8)


@dataclass(frozen=True)
class PointTaskConfig:
    """Geometry, limits and randomization of the point task. Lengths are in arena units."""

    arena_half_size: float = 1.0
    """The arena is the square ``[-a, a]²``; its walls block motion (positions are clipped)."""

    obstacle_center: tuple[float, float] = (0.0, 0.0)
    """Centre of the disk obstacle."""

    obstacle_radius: float = 0.4
    """Radius of the disk obstacle; large enough that it blocks every straight start→goal line
    of the default randomization ranges."""

    goal_radius: float = 0.07
    """The goal is reached when the agent's position ends a step within this distance of it."""

    max_step: float = 0.05
    """Longest displacement per control step (0.5 units/s at 10 Hz). Longer commands are scaled
    down to this length, keeping their direction."""

    time_limit: int = 65
    """Steps before the episode is truncated. A clean route is ~36–42 steps (plus the
    P hold actions at the start), i.e. ~60 % of the limit."""

    control_hz: float = 10.0
    """Control rate; recorded timestamps are ``step / control_hz`` seconds."""

    start_low: tuple[float, float] = (-0.85, -0.3)
    """Lower corner of the box the start position is drawn from (uniformly)."""

    start_high: tuple[float, float] = (-0.7, 0.3)
    """Upper corner of the start box."""

    goal_low: tuple[float, float] = (0.7, -0.15)
    """Lower corner of the box the goal position is drawn from (uniformly)."""

    goal_high: tuple[float, float] = (0.85, 0.15)
    """Upper corner of the goal box."""

    collision: str = "terminate"
    """What touching the obstacle does: ``"terminate"`` ends the episode as a failure (the
    default); ``"block"`` stops the agent at the obstacle's surface and lets it continue."""

    seed: int = 0
    """Seed of the start/goal randomization (``reset(seed=...)`` re-seeds)."""

    time_in_observation: bool = False
    """Add the observation key ``"time_left"`` (float32, 1): the fraction of ``time_limit``
    still to go, 1 at reset and 0 at the limit. Timeouts are truncations and the critic
    bootstraps through them; without the time it cannot tell a state with 5 steps left from
    the same state with 50, so slow chunks look as good as fast ones under the limit (issue
    #14). Off by default: the recorded datasets and the paper's observations have no time."""

    def __post_init__(self) -> None:
        if not isinstance(self.time_in_observation, bool):
            raise ValueError(f"time_in_observation must be true or false, got {self.time_in_observation!r}")
        a = self.arena_half_size
        if not a > 0:
            raise ValueError(f"arena_half_size must be > 0, got {a}")
        for name in ("obstacle_center", "start_low", "start_high", "goal_low", "goal_high"):
            v = getattr(self, name)
            if len(v) != 2 or not all(np.isfinite(float(x)) for x in v):
                raise ValueError(f"{name} must be two finite numbers, got {v!r}")
            object.__setattr__(self, name, (float(v[0]), float(v[1])))
        if not 0 < self.max_step < a:
            raise ValueError(f"max_step must be in (0, arena_half_size), got {self.max_step}")
        if not self.goal_radius > 0:
            raise ValueError(f"goal_radius must be > 0, got {self.goal_radius}")
        if not self.obstacle_radius > 0:
            raise ValueError(f"obstacle_radius must be > 0, got {self.obstacle_radius}")
        if int(self.time_limit) != self.time_limit or self.time_limit < 1:
            raise ValueError(f"time_limit must be a positive int, got {self.time_limit}")
        if not self.control_hz > 0:
            raise ValueError(f"control_hz must be > 0, got {self.control_hz}")
        if self.collision not in ("terminate", "block"):
            raise ValueError(f"collision must be 'terminate' or 'block', got {self.collision!r}")
        c, r = np.array(self.obstacle_center), self.obstacle_radius
        # A gap between obstacle and walls keeps both routes open and guarantees that clipping a
        # position to the arena can never push it into the obstacle.
        if np.any(np.abs(c) + r + 2 * self.max_step > a):
            raise ValueError("the obstacle must leave a gap of at least 2*max_step to the walls")
        for lo_name, hi_name, margin in (
            ("start_low", "start_high", 0.0),
            ("goal_low", "goal_high", self.goal_radius),
        ):
            lo, hi = np.array(getattr(self, lo_name)), np.array(getattr(self, hi_name))
            if np.any(lo > hi):
                raise ValueError(f"{lo_name} must be <= {hi_name} elementwise, got {lo}, {hi}")
            if np.any(np.abs(lo) > a) or np.any(np.abs(hi) > a):
                raise ValueError(f"the {lo_name}/{hi_name} box must lie inside the arena")
            # Nearest point of the box to the obstacle centre must be clear of the obstacle.
            nearest = np.clip(c, lo, hi)
            if np.linalg.norm(nearest - c) <= r + margin:
                raise ValueError(f"the {lo_name}/{hi_name} box overlaps the obstacle")


@dataclass(frozen=True)
class PointEpisodeConfig:
    """Fixed start and goal of one episode (what :meth:`PointTask.reset` ``configs`` take)."""

    start: tuple[float, float]
    """Agent start position (arena units)."""
    goal: tuple[float, float]
    """Goal position (arena units)."""

    def __post_init__(self) -> None:
        for name in ("start", "goal"):
            v = getattr(self, name)
            if len(v) != 2 or not all(np.isfinite(float(x)) for x in v):
                raise ValueError(f"PointEpisodeConfig.{name} must be two finite numbers, got {v!r}")
            object.__setattr__(self, name, (float(v[0]), float(v[1])))

    def to_dict(self) -> dict[str, list[float]]:
        """Plain-JSON form (for episode metadata)."""
        return {"start": list(self.start), "goal": list(self.goal)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PointEpisodeConfig:
        return cls(start=tuple(d["start"]), goal=tuple(d["goal"]))


#: Fixed fractions (within the start and goal boxes) of the evaluation configurations, chosen to
#: cover both sides of the obstacle axis, the box corners and the centre.
_TEST_FRACTIONS = (
    # (start_u_x, start_u_y, goal_u_x, goal_u_y)
    (0.0, 0.0, 0.0, 1.0),
    (1.0, 1.0, 1.0, 0.0),
    (0.5, 0.5, 0.5, 0.5),
    (0.0, 1.0, 1.0, 1.0),
    (1.0, 0.0, 0.0, 0.0),
    (0.3, 0.15, 0.7, 0.6),
    (0.7, 0.85, 0.3, 0.4),
    (0.2, 0.4, 0.9, 0.2),
    (0.8, 0.6, 0.1, 0.8),
    (0.5, 0.05, 0.5, 0.95),
)


def clip_actions(actions: np.ndarray, max_step: float) -> np.ndarray:
    """Scale each 2-D command down to length ``max_step`` if longer (direction kept).

    Commands within a relative 1e-6 of the limit are left alone, so that clipping a command
    that was already clipped (and rounded to float32 for recording) is a no-op: replaying
    recorded actions then reproduces the episode exactly.
    """
    norm = np.linalg.norm(actions, axis=-1, keepdims=True)
    scale = np.where(norm > max_step * (1 + 1e-6), max_step / np.maximum(norm, 1e-12), 1.0)
    return actions * scale


def point_kinematics(
    pos: np.ndarray, actions: np.ndarray, config: PointTaskConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step of the point dynamics, vectorized over leading axes.

    Args:
        pos: ``[..., 2]`` positions (float64), assumed outside the obstacle.
        actions: ``[..., 2]`` commands.
        config: the task geometry.

    Returns:
        ``(new_pos, executed, hit)``: the position after the step, the clipped command actually
        executed, and whether the straight path of this step touched the obstacle (the agent is
        then stopped at the surface, so it never tunnels through however long a step is).
    """
    # Execute exactly the float32 value that gets reported and recorded.
    executed = clip_actions(actions, config.max_step).astype(np.float32).astype(np.float64)
    c = np.asarray(config.obstacle_center)
    r = config.obstacle_radius
    # Segment p + s*d, s in [0, 1], against the disk |x - c| <= r: smallest root of
    # |f + s d|^2 = r^2 with f = p - c.
    f = pos - c
    d = executed
    qa = np.sum(d * d, axis=-1)
    qb = 2.0 * np.sum(f * d, axis=-1)
    qc = np.sum(f * f, axis=-1) - r * r
    disc = qb * qb - 4.0 * qa * qc
    moving = qa > 0
    sq = np.sqrt(np.maximum(disc, 0.0))
    s_hit = np.where(moving, (-qb - sq) / np.where(moving, 2.0 * qa, 1.0), np.inf)
    hit = moving & (disc >= 0) & (s_hit >= 0) & (s_hit <= 1)
    hit |= qc <= 0  # already touching (only possible in "block" mode at the surface)
    new_pos = pos + d
    # Stop at the surface, nudged outward by a hair so the next step starts outside.
    contact = pos + np.clip(s_hit, 0, 1)[..., None] * d
    radial = contact - c
    radial_norm = np.maximum(np.linalg.norm(radial, axis=-1, keepdims=True), 1e-12)
    contact = c + radial / radial_norm * (r * (1 + 1e-9))
    new_pos = np.where(hit[..., None], contact, new_pos)
    a = config.arena_half_size
    new_pos = np.clip(new_pos, -a, a)
    return new_pos, executed, hit


def route_taken(positions: np.ndarray, config: PointTaskConfig) -> int:
    """Which way a trajectory went around the obstacle: +1 above, -1 below, 0 never passed it.

    ``positions`` is ``[L, 2]`` (or the ``[L, 6]`` state; the first two columns are used). The
    side is the sign of ``y - c_y`` averaged over the steps whose ``x`` is within the obstacle's
    extent.
    """
    positions = np.asarray(positions)[:, :2]
    cx, cy = config.obstacle_center
    band = np.abs(positions[:, 0] - cx) <= config.obstacle_radius
    if not band.any():
        return 0
    return int(np.sign(np.mean(positions[band, 1] - cy)))


class PointTask:
    """Vectorized two-route point task (see the module docstring).

    Interface (docs/architecture.md, "Simulated tasks"): ``num_envs``, ``observation_spec``,
    ``action_dim``, ``control_hz``, ``hold_action(obs)``, ``reset(seed, configs)``,
    ``step(actions)``, ``test_configs()``.
    """

    def __init__(
        self, num_envs: int = 1, seed: int | None = None, config: PointTaskConfig | None = None
    ) -> None:
        """``seed`` overrides ``config.seed`` when given."""
        if int(num_envs) != num_envs or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs}")
        self.config = config if config is not None else PointTaskConfig()
        self.num_envs = int(num_envs)
        self._rng = np.random.default_rng(self.config.seed if seed is None else seed)
        n = self.num_envs
        self._pos = np.zeros((n, 2))
        self._goal = np.zeros((n, 2))
        self._last_delta = np.zeros((n, 2))
        self._steps = np.zeros(n, dtype=np.int64)
        self._terminated = np.zeros(n, dtype=bool)
        self._truncated = np.zeros(n, dtype=bool)
        self._success = np.zeros(n, dtype=bool)
        self._was_reset = False
        self.episode_configs: list[PointEpisodeConfig] = []
        """Start/goal of each env's current episode (set by :meth:`reset`)."""

    # -- interface -----------------------------------------------------------------------------

    @property
    def observation_spec(self) -> dict[str, ObsKeySpec]:
        spec = {"state": ObsKeySpec(shape=(STATE_DIM,), kind="lowdim")}
        if self.config.time_in_observation:
            spec["time_left"] = ObsKeySpec(shape=(1,), kind="lowdim")
        return spec

    @property
    def action_dim(self) -> int:
        return ACTION_DIM

    @property
    def control_hz(self) -> float:
        return self.config.control_hz

    @property
    def time_limit(self) -> int:
        return self.config.time_limit

    def hold_action(self, obs: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """The "do nothing" action ``[n, 2]``: zero displacement."""
        return np.zeros((self.num_envs, ACTION_DIM), dtype=np.float32)

    def executed_form(self, actions: np.ndarray) -> np.ndarray:
        """What the task's limits turn commands ``[..., 2]`` into when executed (float32, as
        recorded): rollouts queue this form, so the prefix a policy sees is the one the replay
        stores."""
        return clip_actions(np.asarray(actions, dtype=np.float64), self.config.max_step).astype(np.float32)

    def test_configs(self) -> list[PointEpisodeConfig]:
        """The 10 fixed evaluation configurations (spread over the start and goal boxes)."""
        cfg = self.config
        slo, shi = np.array(cfg.start_low), np.array(cfg.start_high)
        glo, ghi = np.array(cfg.goal_low), np.array(cfg.goal_high)
        out = []
        for sx, sy, gx, gy in _TEST_FRACTIONS:
            start = slo + np.array([sx, sy]) * (shi - slo)
            goal = glo + np.array([gx, gy]) * (ghi - glo)
            out.append(PointEpisodeConfig(start=tuple(start), goal=tuple(goal)))
        return out

    def sample_configs(self, n: int) -> list[PointEpisodeConfig]:
        """Draw ``n`` random start/goal configurations from the task's boxes."""
        cfg = self.config
        starts = self._rng.uniform(cfg.start_low, cfg.start_high, size=(n, 2))
        goals = self._rng.uniform(cfg.goal_low, cfg.goal_high, size=(n, 2))
        return [PointEpisodeConfig(tuple(s), tuple(g)) for s, g in zip(starts, goals, strict=True)]

    def reset(
        self,
        seed: int | None = None,
        configs: Sequence[PointEpisodeConfig | Mapping[str, Any] | None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Start a new episode in every env.

        Args:
            seed: re-seeds the randomization first (reproducible resets).
            configs: ``num_envs`` entries fixing start/goal per env (``PointEpisodeConfig`` or
                its dict form); ``None`` entries (or ``configs=None``) are drawn at random.

        Returns:
            The first observation, ``{"state": [n, 6] float32}``.
        """
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        n = self.num_envs
        # Always draw the random ones so fixed entries do not shift the random stream of others.
        sampled = self.sample_configs(n)
        if configs is not None:
            if len(configs) != n:
                raise ValueError(f"reset: expected {n} configs (one per env), got {len(configs)}")
            chosen = []
            for i, c in enumerate(configs):
                if c is None:
                    chosen.append(sampled[i])
                elif isinstance(c, PointEpisodeConfig):
                    chosen.append(c)
                elif isinstance(c, Mapping):
                    chosen.append(PointEpisodeConfig.from_dict(c))
                else:
                    raise TypeError(f"reset: config {i} has unsupported type {type(c).__name__}")
            sampled = chosen
        starts = np.array([c.start for c in sampled], dtype=np.float64)
        goals = np.array([c.goal for c in sampled], dtype=np.float64)
        self._check_placement(starts, goals)
        self.episode_configs = list(sampled)
        self._pos = starts
        self._goal = goals
        self._last_delta = np.zeros((n, 2))
        self._steps[:] = 0
        self._terminated[:] = False
        self._truncated[:] = False
        self._success[:] = False
        self._was_reset = True
        return self._obs()

    def step(
        self, actions: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Advance every env by one control step.

        Args:
            actions: ``[n, 2]`` displacement commands (arena units per step).

        Returns:
            ``(obs, reward [n] float32, terminated [n] bool, truncated [n] bool, info)`` with
            ``info`` keys ``"success"`` (bool[n], goal reached in this episode),
            ``"subtask_success"`` (``{"reach": bool[n]}``), ``"collision"`` (bool[n], touched the
            obstacle in this step), ``"executed_action"`` (``[n, 2]`` float32, the clipped
            command; zeros for envs already done) and ``"steps"`` (int[n], steps taken).
            ``terminated``/``truncated`` stay set for envs whose episode already ended.
        """
        if not self._was_reset:
            raise RuntimeError("PointTask.step called before reset()")
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.num_envs, ACTION_DIM):
            raise ValueError(
                f"actions must be [{self.num_envs}, {ACTION_DIM}], got {actions.shape}"
            )
        if not np.all(np.isfinite(actions)):
            raise ValueError("actions contain NaN or inf")
        cfg = self.config
        active = ~(self._terminated | self._truncated)
        # Finished envs are frozen: they execute the hold action and do not move.
        actions = np.where(active[:, None], actions, 0.0)
        new_pos, executed, hit = point_kinematics(self._pos, actions, cfg)
        hit &= active
        new_pos = np.where(active[:, None], new_pos, self._pos)
        self._last_delta = np.where(active[:, None], new_pos - self._pos, self._last_delta)
        self._pos = new_pos

        reached = active & ~hit & (np.linalg.norm(new_pos - self._goal, axis=-1) <= cfg.goal_radius)
        failed = hit if cfg.collision == "terminate" else np.zeros_like(hit)
        self._steps += active
        terminated_now = reached | failed
        truncated_now = active & ~terminated_now & (self._steps >= cfg.time_limit)
        self._terminated |= terminated_now
        self._truncated |= truncated_now
        self._success |= reached

        reward = reached.astype(np.float32)
        info = {
            "success": self._success.copy(),
            "subtask_success": {"reach": self._success.copy()},
            "collision": hit,
            "executed_action": executed.astype(np.float32),
            "steps": self._steps.copy(),
        }
        return self._obs(), reward, self._terminated.copy(), self._truncated.copy(), info

    # -- extras --------------------------------------------------------------------------------

    def render(self, size: int = 64) -> np.ndarray:
        """Top-down RGB frames ``[n, size, size, 3]`` uint8 (for GIFs; not an observation)."""
        cfg = self.config
        a = cfg.arena_half_size
        # Pixel centres in arena coordinates; image row 0 is the top (y = +a).
        u = (np.arange(size) + 0.5) / size * 2 * a - a
        xs, ys = np.meshgrid(u, -u)
        grid = np.stack([xs, ys], axis=-1)  # [S, S, 2]
        img = np.full((self.num_envs, size, size, 3), 235, dtype=np.uint8)
        obstacle = (
            np.linalg.norm(grid - np.array(cfg.obstacle_center), axis=-1) <= cfg.obstacle_radius
        )
        img[:, obstacle] = (90, 90, 90)
        dot = max(cfg.goal_radius, 2.5 * a / size)
        goal = np.linalg.norm(grid[None] - self._goal[:, None, None], axis=-1) <= cfg.goal_radius
        agent = np.linalg.norm(grid[None] - self._pos[:, None, None], axis=-1) <= dot * 0.6
        img[goal] = (60, 180, 75)
        img[agent] = (220, 40, 40)
        return img

    def _obs(self) -> dict[str, np.ndarray]:
        state = np.concatenate([self._pos, self._goal, self._last_delta], axis=-1)
        obs = {"state": state.astype(np.float32)}
        if self.config.time_in_observation:
            left = 1.0 - np.minimum(self._steps, self.config.time_limit) / self.config.time_limit
            obs["time_left"] = left[:, None].astype(np.float32)
        return obs

    def _check_placement(self, starts: np.ndarray, goals: np.ndarray) -> None:
        cfg = self.config
        c, r, a = np.array(cfg.obstacle_center), cfg.obstacle_radius, cfg.arena_half_size
        for name, p, margin in (("start", starts, 0.0), ("goal", goals, cfg.goal_radius)):
            bad = np.linalg.norm(p - c, axis=-1) <= r + margin
            bad |= np.any(np.abs(p) > a, axis=-1)
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(
                    f"reset: {name} {p[i].tolist()} of env {i} is outside the arena or overlaps "
                    "the obstacle"
                )
        if np.any(np.linalg.norm(starts - goals, axis=-1) <= cfg.goal_radius):
            raise ValueError("reset: a start lies inside its goal region")

    def config_dict(self) -> dict[str, Any]:
        """The task config as plain JSON (for metadata / checkpoints)."""
        d = asdict(self.config)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
