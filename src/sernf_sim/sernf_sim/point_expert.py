"""Scripted expert for the point task, with knobs that make it imperfect in realistic ways.

The clean expert drives around the obstacle on a route chosen at random per episode (above or
below, ``upper_route_prob``), which makes its demonstrations *multimodal*: the same start can be
followed by either route. It follows the taut-string path around a disk inflated by
``route_margin``: head for the tangent point of the inflated disk on the chosen side, slide
along it, and go straight for the goal as soon as the line of sight clears. At zero noise it
reaches the goal from every start of the task's boxes within ~60 % of the time limit.

Imperfections (all per env, vectorized), which turn the same expert into a source of
mixed-quality data with *real* failures:

* ``noise_std``: Gaussian noise on every command (fraction of ``max_step``) — wobbly paths,
  occasional scrapes of the obstacle;
* ``speed``: commands shorter than ``max_step`` — slow demonstrations, more timeouts;
* ``hesitation_prob`` / ``hesitation_steps``: stops (zero actions) for a while — timeouts;
* ``switch_prob``: changes its mind once mid-approach and takes the other route — long detour,
  usually a timeout;
* ``cut_corner_prob``: at some point heads straight for the goal ignoring the obstacle —
  collision (a terminal failure).

:meth:`ExpertConfig.from_quality` maps a single quality in ``[0, 1]`` to all knobs (1 = clean).

Use it closed-loop per step (:meth:`PointExpert.act`) or through the chunk interface of
:func:`sernf_sim.evaluation.rollout_chunked` (:meth:`PointExpert.chunk_act_fn`): at each
decision the expert predicts where the queued prefix actions will take it (it knows the task's
deterministic kinematics) and plans the next ``H`` actions open-loop from there. Because the
prediction is exact, a chunk executes the same actions the closed-loop controller would have.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from sernf_sim.point_task import ACTION_DIM, PointTaskConfig, point_kinematics


@dataclass(frozen=True)
class ExpertConfig:
    """Behaviour knobs of :class:`PointExpert` (all zero/one = the clean expert)."""

    noise_std: float = 0.0
    """Std of the Gaussian noise added to each command, as a fraction of ``max_step``."""

    speed: float = 1.0
    """Commanded step length as a fraction of ``max_step``, in (0, 1]."""

    hesitation_prob: float = 0.0
    """Per-step probability of starting a hesitation (zero actions)."""

    hesitation_steps: tuple[int, int] = (4, 12)
    """Inclusive range of a hesitation's duration in steps (drawn uniformly)."""

    switch_prob: float = 0.0
    """Per-episode probability of switching once to the other route mid-approach."""

    switch_window: tuple[int, int] = (12, 20)
    """Inclusive range of expert steps in which the route switch happens."""

    cut_corner_prob: float = 0.0
    """Per-episode probability of heading straight for the goal (ignoring the obstacle) from
    some step on; from the approach side this runs into the obstacle."""

    cut_corner_window: tuple[int, int] = (3, 14)
    """Inclusive range of expert steps at which the corner cutting starts."""

    route_margin: float = 0.07
    """Clearance the planned route keeps from the obstacle (arena units)."""

    upper_route_prob: float = 0.5
    """Probability of taking the route above the obstacle (per episode)."""

    def __post_init__(self) -> None:
        for name in ("hesitation_prob", "switch_prob", "cut_corner_prob", "upper_route_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"ExpertConfig.{name} must be in [0, 1], got {v}")
        if not self.noise_std >= 0:
            raise ValueError(f"ExpertConfig.noise_std must be >= 0, got {self.noise_std}")
        if not 0 < self.speed <= 1:
            raise ValueError(f"ExpertConfig.speed must be in (0, 1], got {self.speed}")
        if not self.route_margin > 0:
            raise ValueError(f"ExpertConfig.route_margin must be > 0, got {self.route_margin}")
        for name in ("hesitation_steps", "switch_window", "cut_corner_window"):
            lo, hi = getattr(self, name)
            if int(lo) != lo or int(hi) != hi or not 0 <= lo <= hi:
                raise ValueError(f"ExpertConfig.{name} must be ints 0 <= lo <= hi, got {(lo, hi)}")
            object.__setattr__(self, name, (int(lo), int(hi)))

    @classmethod
    def from_quality(cls, quality: float, **overrides: float) -> ExpertConfig:
        """Map a quality in ``[0, 1]`` to the knobs; 1 is the clean expert.

        The knobs grow linearly with ``1 - quality``. Approximate success rates on the default
        task with ``POINT_TIMING`` (2000 random episodes each): q=1.0 → 100 %, 0.8 → ~90 %,
        0.6 → ~72 %, 0.4 → ~48 %, 0.2 → ~20 %, 0.0 → ~5 %; failures are about 2/3 timeouts
        and 1/3 collisions.
        """
        if not 0.0 <= quality <= 1.0:
            raise ValueError(f"quality must be in [0, 1], got {quality}")
        bad = 1.0 - quality
        knobs = dict(
            noise_std=0.5 * bad,
            speed=1.0 - 0.2 * bad,
            hesitation_prob=0.05 * bad,
            switch_prob=0.4 * bad,
            cut_corner_prob=0.25 * bad,
        )
        knobs.update(overrides)
        return cls(**knobs)


class PointExpert:
    """Vectorized scripted expert for :class:`sernf_sim.point_task.PointTask`.

    Call :meth:`reset` with the first observation of each episode batch (the chunk adapter and
    :func:`~sernf_sim.evaluation.rollout_chunked` do this), then :meth:`act` per step or use
    :meth:`chunk_act_fn` for chunked rollouts. Per-env episode state (route, pending switch,
    hesitation) lives in the expert, so one expert serves one batch of envs at a time.
    """

    def __init__(
        self,
        task_config: PointTaskConfig | None = None,
        config: ExpertConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.task_config = task_config if task_config is not None else PointTaskConfig()
        self.config = config if config is not None else ExpertConfig()
        self._rng = np.random.default_rng(seed)
        self._n = 0
        self.route = np.zeros(0, dtype=np.int64)
        """Per env: +1 = above the obstacle (clockwise), -1 = below; set by :meth:`reset`."""

    # -- episode state -------------------------------------------------------------------------

    def reset(self, obs: Mapping[str, np.ndarray]) -> None:
        """Start new episodes for a batch; draws each env's route and imperfection schedule."""
        n = int(np.asarray(obs["state"]).shape[0])
        cfg, rng = self.config, self._rng
        self._n = n
        self.route = np.where(rng.random(n) < cfg.upper_route_prob, 1, -1)
        self._t = np.zeros(n, dtype=np.int64)  # expert steps taken (planned) this episode
        self._hesitate_left = np.zeros(n, dtype=np.int64)
        never = np.full(n, -1, dtype=np.int64)
        self._switch_at = np.where(
            rng.random(n) < cfg.switch_prob,
            rng.integers(cfg.switch_window[0], cfg.switch_window[1] + 1, size=n),
            never,
        )
        self._cut_at = np.where(
            rng.random(n) < cfg.cut_corner_prob,
            rng.integers(cfg.cut_corner_window[0], cfg.cut_corner_window[1] + 1, size=n),
            never,
        )
        self._direct = np.zeros(n, dtype=bool)

    # -- controllers ---------------------------------------------------------------------------

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Closed-loop: one action ``[n, 2]`` for the current observation (advances the
        expert's per-episode state by one step)."""
        pos, goal = self._pos_goal(obs["state"])
        return self._step(pos, goal).astype(np.float32)

    def plan(self, state: np.ndarray, prefix: np.ndarray, horizon: int) -> np.ndarray:
        """Open-loop: the next ``horizon`` actions ``[n, H, 2]`` after the queued ``prefix``.

        ``state`` is the newest ``"state"`` observation ``[n, 6]``; ``prefix`` ``[n, P, 2]`` are
        the actions that will execute first (their effect is predicted with the task's
        kinematics before planning).
        """
        pos, goal = self._pos_goal(state)
        prefix = np.asarray(prefix, dtype=np.float64)
        if prefix.ndim != 3 or prefix.shape[0] != pos.shape[0] or prefix.shape[2] != ACTION_DIM:
            raise ValueError(f"prefix must be [n, P, {ACTION_DIM}], got {prefix.shape}")
        for i in range(prefix.shape[1]):
            pos, _, _ = point_kinematics(pos, prefix[:, i], self.task_config)
        out = np.zeros((pos.shape[0], horizon, ACTION_DIM), dtype=np.float32)
        for h in range(horizon):
            a = self._step(pos, goal)
            out[:, h] = a
            pos, _, _ = point_kinematics(pos, a, self.task_config)
        return out

    def chunk_act_fn(self, horizon: int) -> ChunkedPointExpert:
        """An ``act_fn`` for :func:`~sernf_sim.evaluation.rollout_chunked` returning
        ``horizon`` actions per decision."""
        return ChunkedPointExpert(self, horizon)

    # -- internals -----------------------------------------------------------------------------

    def _pos_goal(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        state = np.asarray(state, dtype=np.float64)
        if state.ndim != 2 or state.shape[1] < 4:
            raise ValueError(f"expected a [n, 6] point-task state, got {state.shape}")
        if self._n == 0:
            raise RuntimeError("PointExpert: call reset(obs) at the start of each episode batch")
        if state.shape[0] != self._n:
            raise ValueError(
                f"PointExpert was reset for {self._n} envs but got a batch of {state.shape[0]}"
            )
        return state[:, :2], state[:, 2:4]

    def _step(self, pos: np.ndarray, goal: np.ndarray) -> np.ndarray:
        """Next command for every env at predicted/observed positions; advances the schedule."""
        cfg, tcfg, rng = self.config, self.task_config, self._rng
        n = pos.shape[0]
        t = self._t
        # Scheduled imperfections fire on their step.
        switch_now = self._switch_at == t
        self.route = np.where(switch_now, -self.route, self.route)
        self._direct |= self._cut_at == t

        heading, dist_goal, los = self._heading(pos, goal)
        go_direct = los | self._direct
        to_goal = goal - pos
        goal_dir = to_goal / np.maximum(dist_goal, 1e-12)[:, None]
        heading = np.where(go_direct[:, None], goal_dir, heading)
        step_len = cfg.speed * tcfg.max_step
        # Do not overshoot the goal on the final approach.
        length = np.where(go_direct, np.minimum(step_len, dist_goal), step_len)
        action = heading * length[:, None]
        if cfg.noise_std > 0:
            action = action + rng.normal(0.0, cfg.noise_std * tcfg.max_step, size=(n, ACTION_DIM))

        # Hesitations: start with probability p per step, then hold zero for a drawn duration.
        if cfg.hesitation_prob > 0:
            start = (self._hesitate_left == 0) & (rng.random(n) < cfg.hesitation_prob)
            lo, hi = cfg.hesitation_steps
            self._hesitate_left = np.where(
                start, rng.integers(lo, hi + 1, size=n), self._hesitate_left
            )
        hesitating = self._hesitate_left > 0
        action = np.where(hesitating[:, None], 0.0, action)
        self._hesitate_left = np.maximum(self._hesitate_left - 1, 0)
        self._t = t + 1
        return action

    def _heading(
        self, pos: np.ndarray, goal: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unit heading along the chosen route, distance to goal, and line-of-sight flag."""
        tcfg = self.task_config
        c = np.asarray(tcfg.obstacle_center)
        radius = tcfg.obstacle_radius + self.config.route_margin  # the inflated disk we orbit
        to_goal = goal - pos
        dist_goal = np.linalg.norm(to_goal, axis=-1)
        # Line of sight: the segment to the goal clears a disk between the obstacle and the
        # orbit radius. Checking against less than the orbit radius avoids chattering between
        # "orbit" and "go" exactly at the outgoing tangent point.
        los_radius = tcfg.obstacle_radius + 0.5 * self.config.route_margin
        s = np.clip(
            np.sum((c - pos) * to_goal, axis=-1) / np.maximum(dist_goal**2, 1e-12), 0.0, 1.0
        )
        closest = pos + s[:, None] * to_goal
        los = np.linalg.norm(closest - c, axis=-1) > los_radius

        v = pos - c
        d = np.maximum(np.linalg.norm(v, axis=-1), 1e-12)
        theta = np.arctan2(v[:, 1], v[:, 0])
        route = self.route.astype(np.float64)
        # route +1 passes above going left→right = clockwise = decreasing angle.
        alpha = np.arccos(np.clip(radius / d, -1.0, 1.0))
        phi = theta - route * alpha
        tangent_pt = c + radius * np.stack([np.cos(phi), np.sin(phi)], axis=-1)
        head_out = tangent_pt - pos
        # Inside the inflated disk (only after noise): slide along it and push back out.
        along = route[:, None] * np.stack([np.sin(theta), -np.cos(theta)], axis=-1)
        outward = np.stack([np.cos(theta), np.sin(theta)], axis=-1)
        push = np.clip((radius - d) / tcfg.max_step, 0.0, 1.0)[:, None]
        head_in = along + push * outward
        inside = d <= radius * (1 + 1e-9)
        heading = np.where(inside[:, None], head_in, head_out)
        heading /= np.maximum(np.linalg.norm(heading, axis=-1, keepdims=True), 1e-12)
        return heading, dist_goal, los


class ChunkedPointExpert:
    """``act_fn(obs_history, prefix) -> [n, H, 2]`` wrapper of a :class:`PointExpert`, with the
    ``reset(obs)`` hook that :func:`~sernf_sim.evaluation.rollout_chunked` calls per batch."""

    def __init__(self, expert: PointExpert, horizon: int) -> None:
        if int(horizon) != horizon or horizon < 1:
            raise ValueError(f"horizon must be a positive int, got {horizon}")
        self.expert = expert
        self.horizon = int(horizon)

    def reset(self, obs: Mapping[str, np.ndarray]) -> None:
        self.expert.reset(obs)

    def __call__(self, obs_history: Mapping[str, np.ndarray], prefix: np.ndarray) -> np.ndarray:
        state = np.asarray(obs_history["state"])  # [n, T, 6]; plan from the newest step
        return self.expert.plan(state[:, -1], prefix, self.horizon)
