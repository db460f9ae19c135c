"""Chunked rollouts for any vectorized sim task, with episode recording; GIF helper.

:func:`rollout_chunked` runs a policy (any ``act_fn``; no torch needed here) on an env that
follows the vectorized interface of docs/architecture.md ("Simulated tasks") with the chunk
timing of docs/design.md §6 (Fig. 7):

* At decision step ``t`` the ``act_fn`` gets the observation history ``o_{t-T+1..t}``
  (``dict`` of ``[n, T, ...]``, oldest first; at an episode start padded by repeating the first
  observation) and the prefix ``a_{t..t+P-1}`` (``[n, P, A]``): the ``P`` actions still queued.
  At the first decision of an episode the prefix is ``P`` copies of ``env.hold_action(obs)``.
* It returns the chunk ``a_{t+P..t+P+H-1}`` (``[n, H, A]``), appended to the queue after the
  prefix. The env executes one queued action per step.
* The next decision comes when ``P`` actions remain queued, i.e. at ``t + H``; its prefix is the
  last ``P`` actions of this chunk. So decisions happen at ``t = 0, H, 2H, ...`` and the executed
  sequence is ``hold×P, chunk_0, chunk_1, ...``, minus the tail cut off by the episode end.

Episodes run in batches of ``env.num_envs``. An env whose episode ended keeps receiving its hold
action (its outputs are ignored) until every episode in the batch has ended, then the whole batch
is reset. Envs must therefore accept steps after their episode ended (PointTask freezes them).

Env requirements beyond docs/architecture.md (the hand task implements the same):

* ``env.control_hz`` (float) for timestamps, unless ``control_hz=`` is passed;
* ``info["executed_action"]`` ``[n, A]``: the command as the env actually executed it (after
  clipping to its limits) — this, not the policy's raw output, is what gets recorded (docs/design.md §2,
  "drivers report what they did");
* ``info["success"]`` ``bool[n]`` and ``info["subtask_success"]`` ``dict[str, bool[n]]``, read at
  the step an episode ends;
* optionally ``env.episode_configs`` (one entry per env with ``to_dict()``), recorded in the
  metadata as ``"config"``;
* optionally ``env.executed_form(actions [n, H, A])``: the task's static command limits. A chunk
  is queued in that form, so the prefix the next decision sees is what will be executed and
  recorded — the same prefix the replay gives the learner (without it, the policy would act on
  raw prefixes and be trained on clipped ones).

If the ``act_fn`` has a ``reset(obs)`` attribute it is called with the first observation of every
batch (stateful policies and scripted experts start their episodes there).

Recorded episode (``record=True``) = ``(steps, metadata)``, the arguments of
``EpisodeStore.append_episode``. ``steps`` holds flat keys, all with ``L`` = episode length rows:

* one entry per observation key (e.g. ``"state"``): ``o_t``, the observation the policy saw
  *before* executing ``a_t`` (``[L, *shape]``, spec dtype); the observation after the last action
  is not stored (the transition sampler clamps ``next_obs`` to the last step);
* ``"action"``: ``[L, A]`` float32, the executed action ``a_t``;
* ``"reward"``: ``[L]`` float32, ``r_t`` received for ``a_t``;
* ``"timestamp"``: ``[L]`` float64 seconds, ``t / control_hz``.

``metadata`` (plain JSON) follows ``EpisodeStore.append_episode``'s schema: top level
``success``, ``subtask_success`` (name → bool), ``terminated`` (the task ended the episode, as
opposed to the time limit) and ``source`` (when passed); everything else under ``extra``:
``truncated``, ``length``, ``return``, ``episode_index``, ``config_index`` (index into
``configs``, -1 for random starts), ``reset_seed`` (seed passed to ``env.reset`` for the batch),
``env_index`` (slot in the batch), and ``config`` when the env exposes it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sernf_data.spec import STEP_ARRAY_KEYS

ActFn = Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]
"""``act_fn(obs_history: {key: [n, T, ...]}, prefix: [n, P, A]) -> chunk [n, H, A]``."""

Episode = tuple[dict[str, np.ndarray], dict[str, Any]]
"""``(steps, metadata)`` as taken by ``EpisodeStore.append_episode``."""


@dataclass(frozen=True)
class ChunkTiming:
    """Observation/prefix/chunk sizes of docs/design.md §6 (Fig. 7)."""

    T: int
    """Observation steps the policy sees (``o_{t-T+1..t}``)."""
    P: int
    """Queued prefix actions the policy sees (``a_{t..t+P-1}``); 0 disables the prefix."""
    H: int
    """Actions predicted per decision; the next decision comes ``H`` steps later."""

    def __post_init__(self) -> None:
        for name in ("T", "P", "H"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v:
                raise ValueError(f"ChunkTiming.{name} must be an int, got {v!r}")
        if self.T < 1 or self.H < 1 or self.P < 0:
            raise ValueError(f"need T >= 1, P >= 0, H >= 1; got T={self.T} P={self.P} H={self.H}")


@dataclass
class RolloutResult:
    """Outcome of :func:`rollout_chunked`."""

    success_rate: float
    """Fraction of episodes with ``info["success"]`` at their end."""
    subtask_success_rates: dict[str, float]
    """Per subtask name, the fraction of episodes where it succeeded."""
    mean_return: float
    """Mean undiscounted episode return."""
    mean_length: float
    """Mean episode length in steps."""
    metadata: list[dict[str, Any]] = field(default_factory=list)
    """Per-episode metadata (always filled), in episode order."""
    episodes: list[Episode] = field(default_factory=list)
    """Per-episode ``(steps, metadata)`` when recording, else empty."""
    joints_past_range_rate: float | None = None
    """Fraction of episodes in which a hand joint reading went further past its range than the
    policy node accepts (the env's ``info["joints_past_range"]``): on the robot the node would
    have held there and the episode would have failed. None when the env does not report it."""
    success_rate_if_held: float | None = None
    """Success rate counting those episodes as failures, as the robot would have ended them."""

    @property
    def num_episodes(self) -> int:
        return len(self.metadata)

    @property
    def episode_success(self) -> list[int]:
        """Per-episode outcome (1 succeeded, 0 failed) in episode order: with fixed-seed episodes,
        two evaluations pair episode by episode (McNemar tests of the benchmark and the demo)."""
        return [int(bool(m["success"])) for m in self.metadata]

    def summary(self) -> dict[str, Any]:
        """Plain-JSON summary (for logs and eval reports)."""
        out = {
            "num_episodes": self.num_episodes,
            "success_rate": self.success_rate,
            "subtask_success_rates": dict(self.subtask_success_rates),
            "mean_return": self.mean_return,
            "mean_length": self.mean_length,
        }
        if self.joints_past_range_rate is not None:
            out["joints_past_range_rate"] = self.joints_past_range_rate
            out["success_rate_if_held"] = self.success_rate_if_held
        return out


def rollout_chunked(
    env: Any,
    act_fn: ActFn,
    T: int,
    P: int,
    H: int,
    num_episodes: int,
    configs: Sequence[Any] | None = None,
    seed: int = 0,
    record: bool = True,
    progress: bool = False,
    control_hz: float | None = None,
    max_steps: int = 100_000,
    source: str | None = None,
) -> RolloutResult:
    """Run ``num_episodes`` episodes of ``act_fn`` on ``env`` with chunk timing ``(T, P, H)``.

    Args:
        env: a vectorized task (see the module docstring for the interface).
        act_fn: ``(obs_history {k: [n, T, ...]}, prefix [n, P, A]) -> [n, H, A]``; called for all
            ``n`` envs every decision (finished envs' chunks are ignored), optionally with a
            ``reset(obs)`` hook.
        T, P, H: observation steps, prefix actions, chunk length.
        num_episodes: episodes to run, in batches of ``env.num_envs``.
        configs: per-episode env configs passed to ``env.reset(configs=...)``; episode ``i``
            uses ``configs[i % len(configs)]``. ``None``: the env draws random ones.
        seed: base seed; batch ``b`` resets the env with a seed derived from ``(seed, b)``.
        record: keep the per-step arrays of every episode.
        progress: print one line per batch to stderr.
        control_hz: overrides ``env.control_hz`` for timestamps.
        max_steps: safety limit on steps per batch (an env that never ends its episodes).
        source: written as ``metadata["source"]`` (``"demo"``, ``"online"``, ``"distill"``) when
            given, as ``EpisodeStore.append_episode`` requires one.

    Returns:
        A :class:`RolloutResult`.
    """
    timing = ChunkTiming(T=T, P=P, H=H)
    T, P, H = timing.T, timing.P, timing.H
    if int(num_episodes) != num_episodes or num_episodes < 1:
        raise ValueError(f"num_episodes must be a positive int, got {num_episodes}")
    if configs is not None and len(configs) == 0:
        raise ValueError("configs must be None or non-empty")
    hz = float(control_hz if control_hz is not None else _require_attr(env, "control_hz"))
    if not hz > 0:
        raise ValueError(f"control_hz must be > 0, got {hz}")
    if source is not None and not isinstance(source, str):
        raise TypeError(f"source must be a string, got {type(source).__name__}")
    n = int(env.num_envs)
    reset_hook = getattr(act_fn, "reset", None)

    metadata: list[dict[str, Any]] = []
    episodes: list[Episode] = []
    num_batches = -(-num_episodes // n)
    t_start = time.monotonic()
    for b in range(num_batches):
        first = b * n
        count = min(n, num_episodes - first)
        ep_idx = list(range(first, first + count))
        batch_cfg_idx = None
        reset_configs = None
        if configs is not None:
            batch_cfg_idx = [i % len(configs) for i in ep_idx]
            # Pad unused env slots with a valid config; their episodes are not recorded.
            padded = batch_cfg_idx + [batch_cfg_idx[-1]] * (n - count)
            reset_configs = [configs[i] for i in padded]
        reset_seed = int(np.random.SeedSequence([int(seed), b]).generate_state(1)[0])
        batch_meta, batch_eps = _run_batch(
            env, act_fn, reset_hook, timing, count, reset_seed, reset_configs, record, hz, max_steps
        )
        for j in range(count):
            extra = batch_meta[j]["extra"]
            extra["episode_index"] = ep_idx[j]
            extra["config_index"] = -1 if batch_cfg_idx is None else batch_cfg_idx[j]
            if source is not None:
                batch_meta[j]["source"] = source
        metadata.extend(batch_meta)
        if record:
            episodes.extend(batch_eps)
        if progress:
            done = first + count
            rate = float(np.mean([m["success"] for m in metadata]))
            print(
                f"[rollout_chunked] {done}/{num_episodes} episodes, success {rate:.2f}, "
                f"{time.monotonic() - t_start:.1f}s",
                file=sys.stderr,
            )

    return _summarize(metadata, episodes)


def _run_batch(
    env: Any,
    act_fn: ActFn,
    reset_hook: Callable[[dict[str, np.ndarray]], None] | None,
    timing: ChunkTiming,
    count: int,
    reset_seed: int,
    reset_configs: list[Any] | None,
    record: bool,
    hz: float,
    max_steps: int,
) -> tuple[list[dict[str, Any]], list[Episode]]:
    """One batch of ``env.num_envs`` episodes; the first ``count`` env slots are recorded."""
    T, P, H = timing.T, timing.P, timing.H
    n = int(env.num_envs)
    obs = _check_obs(env.reset(seed=reset_seed, configs=reset_configs), n, "reset")
    if callable(reset_hook):
        reset_hook({k: v.copy() for k, v in obs.items()})
    hold = np.asarray(env.hold_action(obs), dtype=np.float32)
    A = int(env.action_dim)
    if hold.shape != (n, A):
        raise ValueError(f"env.hold_action returned {hold.shape}, expected [{n}, {A}]")
    ep_configs = getattr(env, "episode_configs", None)
    config_dicts = None
    if (
        ep_configs is not None
        and len(ep_configs) == n
        and all(hasattr(c, "to_dict") for c in ep_configs)
    ):
        config_dicts = [c.to_dict() for c in ep_configs]

    # History o_{t-T+1..t}, padded at the start by repeating o_0.
    hist = {k: np.repeat(v[:, None], T, axis=1) for k, v in obs.items()}
    queue = np.repeat(hold[:, None], P, axis=1)  # [n, q, A]; the first prefix is hold×P
    executed_form = getattr(env, "executed_form", None)
    active = np.arange(n) < count  # unused padding slots never count
    returns = np.zeros(n, dtype=np.float64)
    lengths = np.zeros(n, dtype=np.int64)
    meta: list[dict[str, Any] | None] = [None] * n
    obs_log: dict[str, list[np.ndarray]] = {k: [] for k in obs}
    act_log: list[np.ndarray] = []
    rew_log: list[np.ndarray] = []

    t = 0
    while active.any():
        if t >= max_steps:
            raise RuntimeError(f"episodes still running after max_steps={max_steps} steps")
        if queue.shape[1] == P:  # decision step: P actions left queued
            prefix = queue.copy()
            chunk = act_fn({k: v.copy() for k, v in hist.items()}, prefix)
            chunk = np.asarray(chunk, dtype=np.float32)
            if chunk.shape != (n, H, A):
                raise ValueError(
                    f"act_fn returned a chunk of shape {chunk.shape}, expected {(n, H, A)}"
                )
            if not np.all(np.isfinite(chunk[active])):
                raise ValueError(f"act_fn returned non-finite actions at step {t}")
            if executed_form is not None:
                chunk = np.asarray(executed_form(chunk), dtype=np.float32).reshape(n, H, A)
            queue = np.concatenate([queue, chunk], axis=1)
        action = queue[:, 0]
        if not active.all():
            # Finished (or unused) envs get their *current* hold action (e.g. "keep the joint
            # targets where they are"), so they stay put until the batch is reset.
            hold_now = np.asarray(env.hold_action(obs), dtype=np.float32).reshape(n, A)
            action = np.where(active[:, None], action, hold_now)
        queue = queue[:, 1:]
        next_obs, reward, terminated, truncated, info = env.step(action)
        next_obs = _check_obs(next_obs, n, "step")
        executed = _info_array(info, "executed_action", (n, A))
        reward = np.asarray(reward, dtype=np.float64).reshape(n)
        terminated = np.asarray(terminated, dtype=bool).reshape(n)
        truncated = np.asarray(truncated, dtype=bool).reshape(n)
        if record:
            for k, v in obs.items():
                obs_log[k].append(v.copy())  # envs may reuse their output buffers
            act_log.append(executed.astype(np.float32))
            rew_log.append(reward.astype(np.float32))
        returns += np.where(active, reward, 0.0)
        lengths += active
        ended = active & (terminated | truncated)
        if ended.any():
            success = _info_array(info, "success", (n,)).astype(bool)
            subtasks = info.get("subtask_success")
            if not isinstance(subtasks, Mapping):
                raise KeyError('env.step info needs "subtask_success": dict[str, bool[n]]')
            sub = {name: np.asarray(v, dtype=bool).reshape(n) for name, v in subtasks.items()}
            for j in np.flatnonzero(ended):
                extra: dict[str, Any] = {
                    "truncated": bool(truncated[j] and not terminated[j]),
                    "length": int(lengths[j]),
                    "return": float(returns[j]),
                    "reset_seed": reset_seed,
                    "env_index": int(j),
                }
                if config_dicts is not None:
                    extra["config"] = config_dicts[j]
                if "joints_past_range" in info:
                    extra["joints_past_range"] = bool(_info_array(info, "joints_past_range", (n,))[j])
                meta[j] = {
                    "success": bool(success[j]),
                    "subtask_success": {name: bool(v[j]) for name, v in sub.items()},
                    "terminated": bool(terminated[j]),
                    "extra": extra,
                }
            active &= ~ended
        obs = next_obs
        hist = {k: np.concatenate([hist[k][:, 1:], obs[k][:, None]], axis=1) for k in hist}
        t += 1

    episodes: list[Episode] = []
    if record:
        stacked_obs = {k: np.stack(v) for k, v in obs_log.items()}  # [t, n, ...]
        stacked_act = np.stack(act_log)  # [t, n, A]
        stacked_rew = np.stack(rew_log)  # [t, n]
        for j in range(count):
            L = int(lengths[j])
            steps = {k: np.ascontiguousarray(v[:L, j]) for k, v in stacked_obs.items()}
            steps["action"] = np.ascontiguousarray(stacked_act[:L, j])
            steps["reward"] = np.ascontiguousarray(stacked_rew[:L, j])
            steps["timestamp"] = np.arange(L, dtype=np.float64) / hz
            episodes.append((steps, meta[j]))
    return [meta[j] for j in range(count)], episodes  # type: ignore[misc]


def _summarize(metadata: list[dict[str, Any]], episodes: list[Episode]) -> RolloutResult:
    names = sorted({k for m in metadata for k in m["subtask_success"]})
    past = [m["extra"].get("joints_past_range") for m in metadata]
    reported = all(p is not None for p in past)
    return RolloutResult(
        joints_past_range_rate=float(np.mean(past)) if reported else None,
        success_rate_if_held=float(np.mean([m["success"] and not p for m, p in zip(metadata, past, strict=True)]))
        if reported else None,
        success_rate=float(np.mean([m["success"] for m in metadata])),
        subtask_success_rates={
            k: float(np.mean([m["subtask_success"].get(k, False) for m in metadata])) for k in names
        },
        mean_return=float(np.mean([m["extra"]["return"] for m in metadata])),
        mean_length=float(np.mean([m["extra"]["length"] for m in metadata])),
        metadata=metadata,
        episodes=episodes,
    )


def _require_attr(env: Any, name: str) -> Any:
    if not hasattr(env, name):
        raise AttributeError(f"{type(env).__name__} has no {name!r} (needed by rollout_chunked)")
    return getattr(env, name)


def _check_obs(obs: Any, n: int, where: str) -> dict[str, np.ndarray]:
    if not isinstance(obs, Mapping) or not obs:
        raise TypeError(f"env.{where} must return a non-empty dict of observations")
    out = {}
    for k, v in obs.items():
        if k in STEP_ARRAY_KEYS:
            raise ValueError(f"observation key {k!r} clashes with the recorded step keys")
        v = np.asarray(v)
        if v.ndim < 1 or v.shape[0] != n:
            raise ValueError(
                f"env.{where}: observation {k!r} has shape {v.shape}, expected [{n}, ...]"
            )
        out[k] = v
    return out


def _info_array(info: Mapping[str, Any], key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in info:
        raise KeyError(f'env.step info needs "{key}" (see sernf_sim.evaluation docstring)')
    arr = np.asarray(info[key])
    if arr.shape != shape:
        raise ValueError(f'env.step info["{key}"] has shape {arr.shape}, expected {shape}')
    return arr


def make_gif(
    frames: np.ndarray | Sequence[np.ndarray], path: str | Path, fps: float = 10.0
) -> Path:
    """Write RGB frames (``[L, h, w, 3]`` uint8) to an animated GIF at ``fps``; returns the path.

    The file is written under a temporary name and renamed, so a reader never sees half a GIF.
    """
    import imageio.v2 as imageio  # optional dependency: only needed for videos

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be [L, h, w, 3] with L >= 1, got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{time.monotonic_ns()}.gif")
    try:
        # GIF frame durations are in milliseconds in imageio's pillow plugin.
        imageio.mimsave(tmp, list(frames), duration=1000.0 / fps, loop=0)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
