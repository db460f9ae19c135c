"""Bring your own task: any continuous-action ``gymnasium.Env`` as a vectorized SERNF task.

:class:`GymnasiumTask` runs ``num_envs`` gymnasium environments side by side and presents them
through the vectorized task interface that :func:`sernf_sim.evaluation.rollout_chunked` (and so
evaluation, online RL and distillation) drives with the chunk timing (docs/architecture.md,
"Simulated tasks"; docs/gymnasium.md is the user's guide):

* **Observations.** A ``Box`` observation space becomes the key ``"state"`` (float32, flattened
  to one vector); a ``Dict`` of ``Box`` spaces becomes one key per entry. A ``uint8`` ``Box`` of
  shape ``(h, w, 3)`` is a camera image (kind ``"rgb"``, key ``"image"`` at the top level);
  anything else is low-dim and flattened. Other spaces are refused. A non-finite low-dim value
  (NaN, inf) is an error naming the env and the key, never passed on to a policy.
* **Actions.** The action space must be a continuous ``Box`` (refused otherwise, with the reason).
  Policies act in the env's own units; a command outside the Box is clipped to it before it is
  executed, and the clipped command is what the task reports as executed (``executed_form``,
  ``info["executed_action"]``), so the prefix a policy sees is what the replay records.
* **Episodes.** gymnasium envs must be reset after their episode ends; the chunked rollout instead
  keeps stepping a batch until its last episode ended. So an env whose episode ended is *frozen*:
  it is no longer stepped, its last observation is repeated with reward 0 and its
  ``terminated`` / ``truncated`` flags stay set until the next :meth:`GymnasiumTask.reset`.
* **Seeds.** Every reset seeds every env (``env.reset(seed=...)``): from ``configs`` when given
  (one seed per env), else derived from the batch seed (or from the task's own seeded stream),
  so evaluation episodes are the same for every policy. ``episode_configs`` holds the seed of
  each env's current episode; the rollout records it in the episode metadata.
* **Success.** ``info["is_success"]`` (the gymnasium-robotics convention; another key with
  ``success_key``) or a user predicate ``success_fn(obs, reward, terminated, truncated, info)``;
  subtasks from an optional mapping name -> predicate. A predicate sees one env's step as
  gymnasium returned it. ``success_at="any"`` counts an episode as a success if it succeeded at
  any step, ``"end"`` only at its last step.

The control rate comes from ``env.metadata["render_fps"]`` (gymnasium's own envs set it to their
step rate) unless ``control_hz`` is given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from sernf_data.spec import KEY_PATTERN, STEP_ARRAY_KEYS, ObsKeySpec
from sernf_sim.evaluation import RolloutResult, rollout_chunked

StepPredicate = Callable[[Any, float, bool, bool, Mapping[str, Any]], bool]
"""``predicate(observation, reward, terminated, truncated, info) -> bool`` for one env's step, all
as the gymnasium env returned them."""

HoldFn = Callable[[dict[str, np.ndarray]], np.ndarray]
"""``hold_fn(observation) -> [A]``: the "do nothing" command for one env, given its observation in
this task's form (``{key: per-step array}``, e.g. ``{"state": [d]}``)."""

#: How ``success_at`` reads success over an episode.
SUCCESS_MODES = ("any", "end")


@dataclass(frozen=True)
class GymnasiumEpisodeConfig:
    """What fixes one episode of a gymnasium env: the arguments of its ``reset``."""

    seed: int
    """Seed passed to ``env.reset(seed=...)``."""
    options: dict[str, Any] | None = None
    """``options`` passed to ``env.reset`` (plain JSON data), or None."""

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer) or self.seed < 0:
            raise ValueError(f"GymnasiumEpisodeConfig.seed must be an int >= 0, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        if self.options is not None:
            if not isinstance(self.options, Mapping):
                raise ValueError(f"GymnasiumEpisodeConfig.options must be a mapping, got {self.options!r}")
            try:
                json.dumps(self.options)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"GymnasiumEpisodeConfig.options must be plain JSON data: {exc}") from exc
            object.__setattr__(self, "options", dict(self.options))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (for episode metadata)."""
        return {"seed": self.seed} if self.options is None else {"seed": self.seed, "options": self.options}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GymnasiumEpisodeConfig:
        return cls(seed=d["seed"], options=d.get("options"))


@dataclass
class GymnasiumEnvConfig:
    """A gymnasium task named in a run config (``env.gymnasium`` of ``sernf-train``'s YAML)."""

    id: str = ""
    """Environment id in gymnasium's registry, e.g. ``"Pendulum-v1"``. An env of your own: register
    it with ``gymnasium.register`` in a module of yours and write ``"your.module:YourEnv-v0"``;
    gymnasium imports the module before it looks the id up."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of ``gymnasium.make`` (e.g. ``max_episode_steps``, the env's own)."""
    control_hz: float | None = None
    """Control rate; None: the env's ``metadata["render_fps"]``."""
    success_key: str = "is_success"
    """``info`` key holding the step's success flag."""
    success_at: str = "any"
    """"any": an episode succeeded if ``info[success_key]`` was true at any step; "end": at its
    last step."""

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise ValueError("GymnasiumEnvConfig.id must name a registered gymnasium env, e.g. 'Pendulum-v1'")
        if not isinstance(self.kwargs, Mapping):
            raise ValueError(f"GymnasiumEnvConfig.kwargs must be a mapping, got {self.kwargs!r}")
        self.kwargs = dict(self.kwargs)
        if self.control_hz is not None:
            _check_rate(self.control_hz, "GymnasiumEnvConfig.control_hz")
        if not isinstance(self.success_key, str) or not self.success_key:
            raise ValueError("GymnasiumEnvConfig.success_key must be a non-empty string")
        if self.success_at not in SUCCESS_MODES:
            raise ValueError(f"GymnasiumEnvConfig.success_at must be one of {SUCCESS_MODES}, got {self.success_at!r}")

    def make_task(self, num_envs: int, seed: int | None = None) -> GymnasiumTask:
        """``num_envs`` envs made by ``gymnasium.make(id, **kwargs)``."""
        return GymnasiumTask.make(self.id, num_envs, env_kwargs=self.kwargs, seed=seed, control_hz=self.control_hz,
                                  success_key=self.success_key, success_at=self.success_at)


def _check_rate(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not (
        math.isfinite(float(value)) and float(value) > 0
    ):
        raise ValueError(f"{what} must be a positive number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class _ObsKey:
    """How one task observation key is read from a gymnasium observation."""

    name: str
    path: str | None  # entry of a Dict observation; None: the whole (Box) observation
    space: spaces.Box
    spec: ObsKeySpec


def _observation_keys(space: spaces.Space) -> list[_ObsKey]:
    """Task observation keys of a gymnasium observation space (see the module docstring)."""
    if isinstance(space, spaces.Box):
        image = _is_image(space)
        return [_obs_key("image" if image else "state", None, space)]
    if isinstance(space, spaces.Dict):
        if not space.spaces:
            raise ValueError("GymnasiumTask: the env's Dict observation space is empty")
        keys = []
        for name, sub in space.spaces.items():
            if not isinstance(sub, spaces.Box):
                raise ValueError(
                    f"GymnasiumTask: observation entry {name!r} is a {type(sub).__name__}; only Box entries "
                    "are supported (wrap the env, e.g. gymnasium.wrappers.FlattenObservation)"
                )
            if not isinstance(name, str) or not KEY_PATTERN.match(name) or name in STEP_ARRAY_KEYS:
                raise ValueError(
                    f"GymnasiumTask: observation entry {name!r} cannot be a key: keys match "
                    f"{KEY_PATTERN.pattern} and are not one of {STEP_ARRAY_KEYS}"
                )
            keys.append(_obs_key(name, name, sub))
        return keys
    raise ValueError(
        f"GymnasiumTask: observation space {space} is not supported; use a Box or a Dict of Box spaces"
    )


def _is_image(space: spaces.Box) -> bool:
    return space.dtype == np.uint8 and len(space.shape) == 3 and space.shape[2] == 3


def _obs_key(name: str, path: str | None, space: spaces.Box) -> _ObsKey:
    if _is_image(space):
        return _ObsKey(name, path, space, ObsKeySpec(shape=tuple(space.shape), kind="rgb"))
    if not np.issubdtype(space.dtype, np.number):
        raise ValueError(f"GymnasiumTask: observation {name!r} has dtype {space.dtype}, not a number")
    return _ObsKey(name, path, space, ObsKeySpec(shape=(int(np.prod(space.shape)),), kind="lowdim"))


class GymnasiumTask:
    """``num_envs`` gymnasium envs as one vectorized task (see the module docstring).

    Interface (docs/architecture.md, "Simulated tasks"): ``num_envs``, ``observation_spec``,
    ``action_dim``, ``control_hz``, ``hold_action(obs)``, ``executed_form(actions)``,
    ``reset(seed, configs)``, ``step(actions)``, ``episode_configs``.
    """

    def __init__(
        self,
        env_fn: Callable[[], gymnasium.Env],
        num_envs: int = 1,
        *,
        seed: int | None = None,
        control_hz: float | None = None,
        success_fn: StepPredicate | None = None,
        success_key: str = "is_success",
        success_at: str = "any",
        subtask_fns: Mapping[str, StepPredicate] | None = None,
        hold_action: np.ndarray | Sequence[float] | HoldFn | None = None,
    ) -> None:
        """
        Args:
            env_fn: makes one env (called ``num_envs`` times; every env gets its own instance).
            num_envs: envs stepped side by side.
            seed: seeds the stream of reset seeds when ``reset`` gets no seed.
            control_hz: control rate; None: the env's ``metadata["render_fps"]``.
            success_fn: step predicate for success; None: ``info[success_key]``.
            success_key: ``info`` key of the success flag (without ``success_fn``).
            success_at: ``"any"`` step or the ``"end"`` of the episode (see the module docstring).
            subtask_fns: subtask name -> step predicate (read like success).
            hold_action: the "do nothing" command: None = zeros (clipped into the action Box),
                a constant ``[A]`` command, or a :data:`HoldFn` of each env's observation.
        """
        if not callable(env_fn):
            raise TypeError(f"GymnasiumTask: env_fn must be callable, got {env_fn!r}")
        if isinstance(num_envs, bool) or int(num_envs) != num_envs or num_envs < 1:
            raise ValueError(f"GymnasiumTask: num_envs must be a positive int, got {num_envs!r}")
        if success_at not in SUCCESS_MODES:
            raise ValueError(f"GymnasiumTask: success_at must be one of {SUCCESS_MODES}, got {success_at!r}")
        if success_fn is not None and not callable(success_fn):
            raise TypeError("GymnasiumTask: success_fn must be callable")
        subtask_fns = dict(subtask_fns or {})
        for name, fn in subtask_fns.items():
            if not isinstance(name, str) or not name or not callable(fn):
                raise TypeError(f"GymnasiumTask: subtask_fns needs name -> predicate, got {name!r}: {fn!r}")
        self.num_envs = int(num_envs)
        self._envs: list[gymnasium.Env] = []
        try:
            for _ in range(self.num_envs):
                env = env_fn()
                if not isinstance(env, gymnasium.Env):
                    raise TypeError(f"GymnasiumTask: env_fn returned a {type(env).__name__}, not a gymnasium.Env")
                self._envs.append(env)
            self._setup(control_hz, hold_action)
        except BaseException:
            self.close()
            raise
        self._success_fn = success_fn
        self._success_key = success_key
        self._success_at = success_at
        self._subtask_fns = subtask_fns
        self._seeds = np.random.SeedSequence(seed)
        self._reset_count = 0
        n = self.num_envs
        self._done = np.zeros(n, dtype=bool)
        self._terminated = np.zeros(n, dtype=bool)
        self._truncated = np.zeros(n, dtype=bool)
        self._success = np.zeros(n, dtype=bool)
        self._subtasks = {name: np.zeros(n, dtype=bool) for name in subtask_fns}
        self._obs: dict[str, np.ndarray] = {}
        self._was_reset = False
        self.episode_configs: list[GymnasiumEpisodeConfig] = []
        """Reset seed (and options) of each env's current episode (set by :meth:`reset`)."""

    @classmethod
    def make(
        cls, env_id: str, num_envs: int = 1, *, env_kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> GymnasiumTask:
        """``num_envs`` envs from gymnasium's registry: ``gymnasium.make(env_id, **env_kwargs)``;
        ``options`` are the other arguments of :class:`GymnasiumTask`."""
        if not isinstance(env_id, str) or not env_id:
            raise ValueError(f"GymnasiumTask.make: env_id must be a registered id, got {env_id!r}")
        kwargs = dict(env_kwargs or {})
        return cls(lambda: gymnasium.make(env_id, **kwargs), num_envs, **options)

    def _setup(self, control_hz: float | None, hold_action: Any) -> None:
        first = self._envs[0]
        for env in self._envs[1:]:
            if env.observation_space != first.observation_space or env.action_space != first.action_space:
                raise ValueError("GymnasiumTask: env_fn made envs with different observation or action spaces")
        act = first.action_space
        if not isinstance(act, spaces.Box) or not np.issubdtype(act.dtype, np.floating):
            raise ValueError(
                f"GymnasiumTask: the action space must be a continuous Box (SERNF's flow policy outputs "
                f"real-valued action chunks); this env has {act}"
            )
        self._action_space = act
        self._action_shape = tuple(act.shape)
        self._action_dim = int(np.prod(act.shape))
        self._low = np.asarray(act.low, dtype=np.float64).reshape(self._action_dim)
        self._high = np.asarray(act.high, dtype=np.float64).reshape(self._action_dim)
        self._keys = _observation_keys(first.observation_space)
        if control_hz is None:
            fps = (first.metadata or {}).get("render_fps")
            if fps is None:
                raise ValueError(
                    "GymnasiumTask: the env's metadata has no 'render_fps'; pass control_hz (its steps per second)"
                )
            self._control_hz = _check_rate(fps, "the env's metadata['render_fps']")
        else:
            self._control_hz = _check_rate(control_hz, "GymnasiumTask: control_hz")
        self._hold_fn: HoldFn | None = None
        if callable(hold_action):
            self._hold_fn = hold_action
            self._hold_const = None
        else:
            hold = np.zeros(self._action_dim) if hold_action is None else np.asarray(hold_action, dtype=np.float64)
            if hold.shape != (self._action_dim,) or not np.all(np.isfinite(hold)):
                raise ValueError(
                    f"GymnasiumTask: hold_action must be {self._action_dim} finite numbers, got {hold_action!r}"
                )
            self._hold_const = self._clip(hold).astype(np.float32)

    # -- interface -----------------------------------------------------------------------------

    @property
    def observation_spec(self) -> dict[str, ObsKeySpec]:
        return {k.name: k.spec for k in self._keys}

    @property
    def action_dim(self) -> int:
        return self._action_dim

    @property
    def action_space(self) -> spaces.Box:
        """The envs' gymnasium action space (commands are flattened to ``action_dim``)."""
        return self._action_space

    @property
    def control_hz(self) -> float:
        return self._control_hz

    def executed_form(self, actions: np.ndarray) -> np.ndarray:
        """Commands ``[..., A]`` as executed: clipped to the action Box (float32, as recorded)."""
        return self._clip(np.asarray(actions, dtype=np.float64)).astype(np.float32)

    def hold_action(self, obs: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """The "do nothing" command ``[n, A]`` (see the constructor's ``hold_action``)."""
        n = self.num_envs
        if self._hold_fn is None:
            return np.repeat(self._hold_const[None], n, axis=0)
        obs = self._obs if obs is None else obs
        if not obs:
            raise RuntimeError("GymnasiumTask.hold_action: no observation yet (call reset first)")
        out = np.empty((n, self._action_dim), dtype=np.float32)
        for j in range(n):
            hold = np.asarray(self._hold_fn({k: np.asarray(v[j]) for k, v in obs.items()}), dtype=np.float64)
            if hold.shape != (self._action_dim,) or not np.all(np.isfinite(hold)):
                raise ValueError(
                    f"GymnasiumTask: hold_action({j}) returned {hold!r}; expected {self._action_dim} finite numbers"
                )
            out[j] = self._clip(hold)
        return out

    def reset(
        self,
        seed: int | None = None,
        configs: Sequence[GymnasiumEpisodeConfig | Mapping[str, Any] | int | None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Start a new episode in every env.

        Args:
            seed: derives one reset seed per env (reproducible batches); None: the next seeds of
                the task's own stream (seeded by the constructor's ``seed``).
            configs: ``num_envs`` entries fixing an env's episode: a :class:`GymnasiumEpisodeConfig`,
                its dict form, or a plain int seed; ``None`` entries use the derived seed.

        Returns:
            The first observation, ``{key: [n, ...]}``.
        """
        n = self.num_envs
        if seed is not None:
            if isinstance(seed, bool) or int(seed) != seed or seed < 0:
                raise ValueError(f"GymnasiumTask.reset: seed must be an int >= 0, got {seed!r}")
            derived = np.random.SeedSequence(int(seed)).generate_state(n)
        else:
            derived = np.random.SeedSequence(self._seeds.entropy, spawn_key=(self._reset_count,)).generate_state(n)
        self._reset_count += 1
        chosen = [GymnasiumEpisodeConfig(seed=int(s)) for s in derived]
        if configs is not None:
            if len(configs) != n:
                raise ValueError(f"GymnasiumTask.reset: expected {n} configs (one per env), got {len(configs)}")
            for j, c in enumerate(configs):
                if c is None:
                    continue
                if isinstance(c, GymnasiumEpisodeConfig):
                    chosen[j] = c
                elif isinstance(c, Mapping):
                    chosen[j] = GymnasiumEpisodeConfig.from_dict(c)
                elif isinstance(c, int | np.integer) and not isinstance(c, bool):
                    chosen[j] = GymnasiumEpisodeConfig(seed=int(c))
                else:
                    raise TypeError(f"GymnasiumTask.reset: config {j} has unsupported type {type(c).__name__}")
        raw = []
        for j, (env, c) in enumerate(zip(self._envs, chosen, strict=True)):
            obs, _info = env.reset(seed=c.seed, options=c.options)
            raw.append(self._convert(obs, j, "reset"))
        self.episode_configs = chosen
        self._obs = {k.name: np.stack([r[k.name] for r in raw]) for k in self._keys}
        self._done[:] = False
        self._terminated[:] = False
        self._truncated[:] = False
        self._success[:] = False
        for flags in self._subtasks.values():
            flags[:] = False
        self._was_reset = True
        return {k: v.copy() for k, v in self._obs.items()}

    def step(
        self, actions: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every env whose episode is running by one control step.

        Args:
            actions: ``[n, A]`` commands in the env's units (clipped to the action Box).

        Returns:
            ``(obs, reward [n] float32, terminated [n] bool, truncated [n] bool, info)`` with
            ``info`` keys ``"success"`` (bool[n]), ``"subtask_success"`` (name -> bool[n]),
            ``"executed_action"`` (``[n, A]`` float32, the clipped commands) and ``"infos"`` (the
            envs' own info dicts of this step; None for frozen envs). Envs whose episode already
            ended are not stepped: same observation, reward 0, their flags stay set.
        """
        if not self._was_reset:
            raise RuntimeError("GymnasiumTask.step called before reset()")
        n, A = self.num_envs, self._action_dim
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (n, A):
            raise ValueError(f"GymnasiumTask.step: actions must be [{n}, {A}], got {actions.shape}")
        if not np.all(np.isfinite(actions)):
            raise ValueError("GymnasiumTask.step: actions contain NaN or inf")
        executed = self.executed_form(actions)
        reward = np.zeros(n, dtype=np.float32)
        infos: list[Mapping[str, Any] | None] = [None] * n
        for j in np.flatnonzero(~self._done):
            env = self._envs[j]
            command = executed[j].astype(self._action_space.dtype).reshape(self._action_shape)
            obs, r, terminated, truncated, info = env.step(command)
            if not (isinstance(r, int | float | np.number) and math.isfinite(float(r))):
                raise ValueError(f"GymnasiumTask: env {j} returned the reward {r!r}, not a finite number")
            converted = self._convert(obs, j, "step")
            for key, value in converted.items():
                self._obs[key][j] = value
            reward[j] = float(r)
            terminated, truncated = bool(terminated), bool(truncated)
            ended = terminated or truncated
            success = self._predicate(self._success_fn, obs, r, terminated, truncated, info, j, "success")
            self._success[j] = (self._success[j] or success) if self._success_at == "any" else success
            for name, fn in self._subtask_fns.items():
                flag = self._predicate(fn, obs, r, terminated, truncated, info, j, name)
                flags = self._subtasks[name]
                flags[j] = (flags[j] or flag) if self._success_at == "any" else flag
            self._terminated[j], self._truncated[j] = terminated, truncated and not terminated
            self._done[j] = ended
            infos[j] = info
        out_info = {
            "success": self._success.copy(),
            "subtask_success": {name: flags.copy() for name, flags in self._subtasks.items()},
            "executed_action": executed,
            "infos": infos,
        }
        obs_out = {k: v.copy() for k, v in self._obs.items()}
        return obs_out, reward, self._terminated.copy(), self._truncated.copy(), out_info

    def close(self) -> None:
        """Close every env (their renderers, simulators, files)."""
        envs, self._envs = self._envs, []
        for env in envs:
            env.close()

    def __enter__(self) -> GymnasiumTask:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- conversions -----------------------------------------------------------------------

    def native_observation(self, obs: Mapping[str, np.ndarray]) -> Any:
        """One env's observation in this task's form (``{key: per-step array}``) back in the
        gymnasium env's own form (the Box's shape and dtype, or a dict for a Dict space)."""
        out = {}
        for k in self._keys:
            value = np.asarray(obs[k.name]).reshape(k.space.shape).astype(k.space.dtype, copy=False)
            if k.path is None:
                return value
            out[k.path] = value
        return out

    def _convert(self, obs: Any, j: int, where: str) -> dict[str, np.ndarray]:
        out = {}
        for k in self._keys:
            if k.path is None:
                value = obs
            else:
                if not isinstance(obs, Mapping) or k.path not in obs:
                    raise ValueError(f"GymnasiumTask: env {j} {where} returned no observation entry {k.path!r}")
                value = obs[k.path]
            value = np.asarray(value)
            if value.shape != k.space.shape:
                raise ValueError(
                    f"GymnasiumTask: env {j} {where} returned observation {k.name!r} of shape {value.shape}, "
                    f"its space says {k.space.shape}"
                )
            if k.spec.kind == "rgb":
                if value.dtype != np.uint8:
                    raise ValueError(f"GymnasiumTask: env {j} {where}: image {k.name!r} is {value.dtype}, not uint8")
                out[k.name] = value
                continue
            flat = value.reshape(-1).astype(np.float32)
            if not np.all(np.isfinite(flat)):
                bad = np.flatnonzero(~np.isfinite(flat)).tolist()
                raise ValueError(
                    f"GymnasiumTask: env {j} {where} returned a non-finite observation {k.name!r} "
                    f"(entries {bad}: {flat[bad].tolist()}); refusing to pass it to a policy"
                )
            out[k.name] = flat
        return out

    def _clip(self, actions: np.ndarray) -> np.ndarray:
        return np.clip(actions, self._low, self._high)

    def _predicate(
        self, fn: StepPredicate | None, obs: Any, reward: Any, terminated: bool, truncated: bool,
        info: Mapping[str, Any], j: int, what: str,
    ) -> bool:
        if fn is not None:
            return bool(fn(obs, float(reward), terminated, truncated, info))
        if self._success_key not in info:
            raise KeyError(
                f"GymnasiumTask: env {j}'s step info has no {self._success_key!r} for {what}; pass "
                "success_fn=(obs, reward, terminated, truncated, info) -> bool or success_key="
            )
        return bool(np.asarray(info[self._success_key]).item())


def record_demonstrations(
    task: GymnasiumTask,
    policy_fn: Callable[[Any], np.ndarray],
    store: Any,
    num_episodes: int,
    *,
    seed: int = 0,
    source: str = "demo",
    progress: bool = False,
) -> RolloutResult:
    """Record ``num_episodes`` episodes of a per-step controller into an episode store.

    ``policy_fn(observation) -> action`` acts on one env's observation in the gymnasium env's own
    form (a scripted expert, a teleoperation replay, another library's agent); it is called at
    every step (``T=1, P=0, H=1``: a demonstration needs no chunk timing, the learner cuts its
    chunks from the recorded steps). The actions are recorded as executed (clipped to the Box).
    ``store`` is an ``EpisodeStore`` opened for appending, or a path / URL (created with the task's
    spec if missing). Returns the rollout's result (success rate, per-episode metadata).
    """
    from sernf_data.store import EpisodeStore, StoreSpec

    if not callable(policy_fn):
        raise TypeError("record_demonstrations: policy_fn must be callable")
    if not isinstance(store, EpisodeStore):
        spec = StoreSpec(obs=task.observation_spec, action_dim=task.action_dim, control_rate_hz=task.control_hz)
        store = EpisodeStore(str(store), mode="a", spec=spec)
    A = task.action_dim

    def act(obs_history: dict[str, np.ndarray], prefix: np.ndarray) -> np.ndarray:
        n = prefix.shape[0]
        chunk = np.empty((n, 1, A), dtype=np.float32)
        for j in range(n):
            native = task.native_observation({k: v[j, -1] for k, v in obs_history.items()})
            action = np.asarray(policy_fn(native), dtype=np.float64).reshape(-1)
            if action.shape != (A,):
                raise ValueError(f"record_demonstrations: policy_fn returned {action.shape[0]} numbers, expected {A}")
            chunk[j, 0] = action
        return chunk

    result = rollout_chunked(task, act, T=1, P=0, H=1, num_episodes=num_episodes, seed=seed, record=True,
                             source=source, progress=progress)
    for steps, meta in result.episodes:
        store.append_episode(steps, meta)
    return result
