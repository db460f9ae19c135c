"""Decision-step transitions from an EpisodeStore, cut by the chunk timing of docs/design.md §6 / Fig. 7.

Timing (step ``i`` stores observation ``o_i``, executed action ``a_i``, reward ``r_i`` received
after ``a_i``): at decision step ``t`` the policy sees ``o_{t-T+1..t}`` and the prefix
``a_{t..t+P-1}`` (queued, not yet executed) and outputs the chunk ``a_{t+P..t+P+H-1}``. The
next decision is at ``t+H``; its prefix ``a_{t+H..t+H+P-1}`` is the last ``P`` actions of this
chunk (so ``P <= H``). One transition is::

    (o_{t-T+1..t}, prefix, chunk) -> (o_{t+H-T+1..t+H}, next_prefix),
    reward = sum_{i<H} gamma^i r_{t+i},  discount = gamma^H,  done

Valid decision steps of an episode of length ``L`` are ``t = 0 .. L-1-P``: the prefix then
lies inside the episode and at least the first chunk action ``a_{t+P}`` exists. Episodes with
``L <= P`` contribute none. Edges, exactly as docs/architecture.md ("Transition batch"):

* histories before step 0 repeat ``o_0``; ``next_obs`` is taken at ``min(t+H, L-1)``;
* chunk and next-prefix actions past the end repeat ``a_{L-1}``; ``chunk_mask`` marks the
  real chunk actions;
* ``reward`` sums only the steps that exist; ``discount`` is ``gamma^H`` for every
  transition (the contract; a window cut short by a *truncation* therefore bootstraps from
  the last stored observation with ``gamma^H`` instead of ``gamma^{L-t}``, a small bias);
* ``done = 1`` iff the episode *terminated* (metadata ``terminated``, not a time-limit
  truncation) and its last step ``L-1`` lies in ``t .. t+H-1``.

Per-step critic (ablation, ``ChunkTiming.td_horizon = 1``): the critic scores only the
chunk's first action ``a_{t+P}`` (the next one to be executed after the queued prefix), so its
1-step TD fields follow that action: ``reward = r_{t+P}`` (the reward after ``a_{t+P}``),
``discount = gamma``, ``next_obs`` at ``t+1`` (the decision that proposes ``a_{t+P+1}``),
``next_prefix = a_{t+1..t+P}`` (the queue then: the rest of this prefix and ``a_{t+P}``), and
``done`` iff the episode terminated at step ``t+P``. This is the ordinary per-step Bellman
equation of a policy whose actions are delayed by P queued ones. Counting ``r_t`` instead (the
reward of the prefix action ``a_t``) would drop the final P rewards of every episode: the last
valid decision step is ``L-1-P``, so a sparse reward at ``L-1`` (the point task's +1 on success)
would never enter a target. ``obs``, ``prefix`` and the H-action ``chunk`` (the actor's
imitation target) are as above.

Batches are gathered with vectorized numpy indexing from the store's in-memory snapshot and
returned as torch tensors (images stay uint8). Sampler state (RNG, visible episode count)
exports to a JSON-serializable dict for exact resume. No rclpy.

Frozen-backbone features: given ``feature_caches`` (:mod:`sernf_learner.feature_cache`), the
observations of a batch carry ``"<key>:features"`` ``[B, T, n_tok, C]`` for every rgb key a
cache covers *instead of* the images (no pixels are gathered). The rows, and so the RNG stream,
are exactly those of the same sampler without caches. The caches are brought up to date with
the sampler's snapshot at construction, ``refresh()`` and ``load_state_dict()``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sernf_data.spec import CACHED_FEATURES_SUFFIX
from sernf_data.store import EPISODE_SOURCES, EpisodeStore, ReplaySnapshot

if TYPE_CHECKING:  # the cache imports the encoders (timm); samplers without one do not need them
    from sernf_learner.feature_cache import FeatureCache

__all__ = [
    "ChunkTiming",
    "EmptyReplayError",
    "MixedSampler",
    "SamplerConfig",
    "TransitionSampler",
    "batch_to_torch",
]


class EmptyReplayError(RuntimeError):
    """A sampler was asked for a batch but has no valid decision step to draw from."""


@dataclass(frozen=True)
class ChunkTiming:
    """Observation / prefix / chunk lengths and discount (docs/design.md §6, Fig. 7)."""

    T: int
    """Observation steps in the history (scissors 1, cube 4)."""
    P: int
    """Prefix actions: queued, not yet executed at a decision (scissors 3, cube 2)."""
    H: int
    """Chunk length = executed actions between decisions (scissors 10, cube 6)."""
    gamma: float = 0.997
    """Per-step discount; a transition bootstraps with ``gamma**td_steps``."""
    td_horizon: int | None = None
    """Steps the TD fields (reward, discount, next_obs, next_prefix, done) span: None = H (the
    paper's chunked critic, eq. 2) or 1 (the per-step critic of the ablation, whose reward is
    that of the chunk's first action, see the module doc). H is stored as None, so both
    spellings are the same timing (equality, JSON, sampler states)."""

    def __post_init__(self) -> None:
        for name, lo in (("T", 1), ("P", 0), ("H", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
                raise ValueError(f"ChunkTiming.{name} must be an int >= {lo}, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.P >= self.H:
            # The next prefix a_{t+H..t+H+P-1} must be the tail of this chunk a_{t+P..t+P+H-1},
            # and a chunk must add actions after it: with P == H the decision steps stop P steps
            # before the end and the episode's last reward and terminal flag reach no transition.
            raise ValueError(f"ChunkTiming needs P < H (next prefix = tail of the chunk), got P={self.P}, H={self.H}")
        if not (isinstance(self.gamma, int | float) and 0.0 < self.gamma <= 1.0):
            raise ValueError(f"ChunkTiming.gamma must be in (0, 1], got {self.gamma!r}")
        object.__setattr__(self, "gamma", float(self.gamma))
        h = self.td_horizon
        if h is not None:
            if isinstance(h, bool) or not isinstance(h, int | np.integer) or int(h) not in (1, self.H):
                raise ValueError(f"ChunkTiming.td_horizon must be None, 1 or H={self.H}, got {h!r}")
            object.__setattr__(self, "td_horizon", None if int(h) == self.H else int(h))

    @property
    def td_steps(self) -> int:
        """Steps between a transition and its bootstrap: ``td_horizon``, or H by default."""
        return self.H if self.td_horizon is None else self.td_horizon

    @property
    def reward_offset(self) -> int:
        """First reward of a transition relative to its decision step ``t``: 0 for the chunked
        critic (``r_t``), P for the per-step critic (``r_{t+P}``, after the action it scores)."""
        return 0 if self.td_horizon is None else self.P

    @property
    def discount(self) -> float:
        """Bootstrap factor ``gamma**td_steps`` (``gamma**H`` for the chunked critic)."""
        return self.gamma**self.td_steps

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"T": self.T, "P": self.P, "H": self.H, "gamma": self.gamma}
        if self.td_horizon is not None:  # the default keeps the JSON of existing checkpoints
            out["td_horizon"] = self.td_horizon
        return out


@dataclass(frozen=True)
class SamplerConfig:
    """Which episodes a TransitionSampler draws from and how."""

    batch_size: int
    """``B``: transitions per ``sample()`` call."""
    seed: int
    """Seed of the sampler's own RNG (numpy PCG64)."""
    success_only: bool = False
    """Keep only episodes whose metadata ``success`` is true (Stage I imitation)."""
    sources: tuple[str, ...] | None = None
    """Keep only episodes whose metadata ``source`` is listed (None: all sources)."""
    is_offline: bool = True
    """Value of ``is_offline`` in this sampler's own batches (False for the online store).
    MixedSampler sets the flag itself by which sampler a sample came from."""

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int | np.integer) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if self.sources is not None:
            sources = tuple(self.sources)
            bad = [s for s in sources if s not in EPISODE_SOURCES]
            if bad or not sources:
                raise ValueError(f"sources must be a non-empty subset of {EPISODE_SOURCES}, got {self.sources!r}")
            object.__setattr__(self, "sources", sources)
        object.__setattr__(self, "batch_size", int(self.batch_size))
        object.__setattr__(self, "seed", int(self.seed))


def batch_to_torch(batch: Mapping[str, Any]) -> dict[str, Any]:
    """numpy batch -> torch tensors, zero-copy (the gathered arrays are fresh and contiguous)."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, Mapping):
            out[key] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in value.items()}
        else:
            out[key] = torch.from_numpy(np.ascontiguousarray(value))
    return out


class TransitionSampler:
    """Uniform decision-step transitions ``(episode, t)`` from one EpisodeStore.

    Draws ``t`` uniformly over all valid ``(episode, t)`` pairs of the eligible episodes (so
    longer episodes are drawn proportionally more often). Works on the store's in-memory
    snapshot as of construction / ``refresh()``.
    """

    def __init__(
        self,
        store: EpisodeStore,
        timing: ChunkTiming,
        batch_size: int,
        seed: int,
        success_only: bool = False,
        *,
        sources: Sequence[str] | None = None,
        is_offline: bool = True,
        feature_caches: Sequence[FeatureCache] | None = None,
    ) -> None:
        """``feature_caches``: caches of this store's rgb keys; their keys' batches carry cached
        features instead of images (module doc)."""
        if not isinstance(timing, ChunkTiming):
            raise TypeError(f"timing must be a ChunkTiming, got {type(timing).__name__}")
        self.store = store
        self.timing = timing
        self.config = SamplerConfig(
            batch_size=batch_size,
            seed=seed,
            success_only=success_only,
            sources=None if sources is None else tuple(sources),
            is_offline=is_offline,
        )
        self._rng = np.random.default_rng(self.config.seed)
        self._caches = self._check_caches(feature_caches or ())
        self._snapshot = store.load_arrays()
        self._sync_caches()
        self._rebuild_index(self._snapshot.num_episodes)

    @property
    def cached_keys(self) -> tuple[str, ...]:
        """rgb keys whose batches carry cached features instead of images."""
        return tuple(self._caches)

    def _check_caches(self, caches: Sequence[FeatureCache]) -> dict[str, FeatureCache]:
        by_key: dict[str, FeatureCache] = {}
        if not caches:
            return by_key
        from sernf_learner.feature_cache import FeatureCache, store_fingerprint

        mine = store_fingerprint(self.store)
        for cache in caches:
            if not isinstance(cache, FeatureCache):
                raise TypeError(f"feature_caches must hold FeatureCache objects, got {type(cache).__name__}")
            if cache.store_hash != mine:
                raise ValueError(f"a feature cache of store {cache.store.uri!r} cannot serve store {self.store.uri!r}")
            for key in cache.keys:
                if key in by_key:
                    raise ValueError(f"two feature caches cover rgb key {key!r}")
                by_key[key] = cache
        return by_key

    def _sync_caches(self) -> None:
        """Compute the features of episodes the caches lack (each cache once)."""
        for cache in {id(c): c for c in self._caches.values()}.values():
            cache.sync(self._snapshot)

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def num_transitions(self) -> int:
        """Valid decision steps over the eligible episodes."""
        return int(self._cum[-1]) if self._cum.size else 0

    @property
    def num_episodes(self) -> int:
        """Episodes visible to the sampler (eligible or not)."""
        return self._num_visible

    @property
    def eligible_episodes(self) -> np.ndarray:
        """``[E]`` snapshot indices of the episodes passing the filters."""
        return self._eligible.copy()

    def refresh(self) -> int:
        """Pick up episodes newly committed to the store; returns how many appeared."""
        before = self._num_visible
        self.store.refresh()
        self._snapshot = self.store.load_arrays()
        self._sync_caches()
        self._rebuild_index(self._snapshot.num_episodes)
        return self._num_visible - before

    def sample_numpy(self, batch_size: int | None = None) -> dict[str, Any]:
        """One batch as numpy arrays (same keys/shapes as ``sample``)."""
        n = self.batch_size if batch_size is None else int(batch_size)
        episode, t = self._draw(n)
        return self.build_batch(episode, t)

    def sample(self, batch_size: int | None = None) -> dict[str, Any]:
        """One batch of ``B`` transitions as torch tensors (docs/architecture.md format)."""
        return batch_to_torch(self.sample_numpy(batch_size))

    def decision_steps(self, episode: int) -> np.ndarray:
        """Valid decision steps ``t`` of snapshot episode ``episode``, ascending."""
        length = int(self._lengths[episode])
        return np.arange(max(length - self.timing.P, 0), dtype=np.int64)

    def iter_episode(self, episode: int | str, batch_size: int | None = None) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        """All transitions of one episode in order of ``t``: yields ``(t [b], torch batch)``.

        ``episode`` is a snapshot index or an episode id; filters do not apply (evaluation
        may look at failures too). ``batch_size`` None yields one batch with every step.
        """
        if isinstance(episode, str):
            ids = [m["id"] for m in self._snapshot.episodes[: self._num_visible]]
            if episode not in ids:
                raise KeyError(f"episode {episode!r} is not visible to this sampler")
            episode = ids.index(episode)
        if not 0 <= episode < self._num_visible:
            raise IndexError(f"episode index {episode} out of range [0, {self._num_visible})")
        steps = self.decision_steps(episode)
        size = max(len(steps), 1) if batch_size is None else int(batch_size)
        for lo in range(0, len(steps), size):
            t = steps[lo : lo + size]
            yield t, batch_to_torch(self.build_batch(np.full_like(t, episode), t))

    def build_batch(self, episode: np.ndarray, t: np.ndarray) -> dict[str, Any]:
        """numpy batch for explicit ``(episode [B], t [B])`` pairs (t must be valid)."""
        T, P, H, gamma = self.timing.T, self.timing.P, self.timing.H, self.timing.gamma
        K = self.timing.td_steps  # TD step: H (chunked critic) or 1 (per-step critic, module doc)
        R = self.timing.reward_offset  # rewards r_{t+R..t+R+K-1}: R = 0, or P for the per-step critic
        episode = np.asarray(episode, dtype=np.int64)
        t = np.asarray(t, dtype=np.int64)
        if episode.shape != t.shape or episode.ndim != 1:
            raise ValueError(f"episode and t must be 1-D of equal length, got {episode.shape}, {t.shape}")
        if episode.size and (episode.min() < 0 or episode.max() >= self._num_visible):
            raise IndexError(f"episode index out of range [0, {self._num_visible})")
        start = self._starts[episode][:, None]  # [B, 1] first row of the episode
        length = self._lengths[episode][:, None]  # [B, 1]
        last = length - 1  # [B, 1] relative index of the last step
        tt = t[:, None]  # [B, 1]
        if np.any(t < 0) or np.any(tt > last - P):
            raise IndexError("t outside the valid decision steps 0 .. L-1-P")
        hist = np.arange(T, dtype=np.int64) - (T - 1)  # [T] offsets -T+1 .. 0, oldest first
        obs_idx = start + np.maximum(tt + hist, 0)  # [B, T] pad by repeating o_0
        t_next = np.minimum(tt + K, last)  # [B, 1] next decision, clamped to the last step
        next_obs_idx = start + np.maximum(t_next + hist, 0)  # [B, T]
        prefix_idx = start + tt + np.arange(P)  # [B, P] always inside the episode
        chunk_rel = tt + P + np.arange(H)  # [B, H]
        chunk_mask = chunk_rel <= last  # [B, H]
        chunk_idx = start + np.minimum(chunk_rel, last)  # [B, H] pad with a_{L-1}
        next_prefix_idx = start + np.minimum(tt + K + np.arange(P), last)  # [B, P]
        reward_rel = tt + R + np.arange(K)  # [B, K] rewards r_{t+R..t+R+K-1}
        reward_idx = start + np.minimum(reward_rel, last)
        weights = (gamma ** np.arange(K, dtype=np.float64)) * (reward_rel <= last)  # [B, K]

        arrays = self._snapshot.arrays
        action, reward = arrays["action"], arrays["reward"]
        rewards = (reward[reward_idx].astype(np.float64) * weights).sum(axis=1)  # [B]
        done = self._terminated[episode] & (last[:, 0] <= t + R + K - 1)  # [B] ended within the reward window
        return {
            "obs": self._observations(obs_idx),  # [B, T, ...]
            "prefix": action[prefix_idx],  # [B, P, A]
            "chunk": action[chunk_idx],  # [B, H, A]
            "chunk_mask": chunk_mask.astype(np.float32),  # [B, H]
            "next_obs": self._observations(next_obs_idx),  # [B, T, ...]
            "next_prefix": action[next_prefix_idx],  # [B, P, A]
            "reward": rewards.astype(np.float32),  # [B]
            "discount": np.full(t.shape, self.timing.discount, dtype=np.float32),  # [B]
            "done": done.astype(np.float32),  # [B]
            "is_offline": np.full(t.shape, self.config.is_offline, dtype=bool),  # [B]
            "episode_success": self._success[episode],  # [B] bool: the episode succeeded
            "episode": episode,  # [B] int64: the episode's index in this sampler's store
            "step": t,  # [B] int64: the decision step t within that episode
        }

    def _observations(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Observations ``{key: [B, T, ...]}`` at snapshot rows ``rows [B, T]``; cached rgb keys as
        ``"<key>:features"`` ``[B, T, n_tok, C]`` instead of their images."""
        arrays = self._snapshot.arrays
        out = {}
        for key in self.store.spec.obs:
            cache = self._caches.get(key)
            if cache is None:
                out[key] = arrays[key][rows]
            else:
                out[f"{key}{CACHED_FEATURES_SUFFIX}"] = cache.gather(key, rows)
        return out

    # ----------------------------------------------------------------- checkpointing

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state: RNG plus the episodes visible (for exact resume)."""
        n = self._num_visible
        return {
            "kind": "TransitionSampler",
            "timing": self.timing.to_json(),
            "batch_size": self.batch_size,
            "success_only": self.config.success_only,
            "sources": None if self.config.sources is None else list(self.config.sources),
            "rng": copy.deepcopy(self._rng.bit_generator.state),
            "num_episodes": n,
            "last_episode_id": self._snapshot.episodes[n - 1]["id"] if n else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``: the next batches equal those the saved sampler would draw.

        The sampler then sees exactly the episodes it saw when saved (the store is append-only,
        so they are its first ``num_episodes``) until the next ``refresh()``.
        """
        if state.get("kind") != "TransitionSampler":
            raise ValueError(f"not a TransitionSampler state (kind={state.get('kind')!r})")
        mine = self.state_dict()
        for key in ("timing", "batch_size", "success_only", "sources"):
            if state[key] != mine[key]:
                raise ValueError(f"sampler state has {key}={state[key]!r}, this sampler {mine[key]!r}")
        n = int(state["num_episodes"])
        if n > self._snapshot.num_episodes:
            self.store.refresh()
            self._snapshot = self.store.load_arrays()
            self._sync_caches()
        if n > self._snapshot.num_episodes:
            raise ValueError(
                f"sampler state saw {n} episodes but store {self.store.uri!r} has {self._snapshot.num_episodes}"
            )
        if n and self._snapshot.episodes[n - 1]["id"] != state["last_episode_id"]:
            raise ValueError(
                f"store {self.store.uri!r} episode {n - 1} is {self._snapshot.episodes[n - 1]['id']!r}, "
                f"the sampler state expects {state['last_episode_id']!r} (different store?)"
            )
        self._rebuild_index(n)
        self._rng.bit_generator.state = copy.deepcopy(state["rng"])

    # --------------------------------------------------------------------- internals

    def _rebuild_index(self, num_visible: int) -> None:
        snap: ReplaySnapshot = self._snapshot
        self._num_visible = num_visible
        self._starts = snap.episode_starts[:num_visible]  # [N]
        self._lengths = snap.episode_lengths[:num_visible]  # [N]
        episodes = snap.episodes[:num_visible]
        self._terminated = np.array([bool(m["terminated"]) for m in episodes], dtype=bool)  # [N]
        self._success = np.array([bool(m["success"]) for m in episodes], dtype=bool)  # [N]
        keep = np.ones(num_visible, dtype=bool)
        if self.config.success_only:
            keep &= self._success
        if self.config.sources is not None:
            keep &= np.array([m["source"] in self.config.sources for m in episodes], dtype=bool)
        # Episodes whose source the store's label settings require labels for wait for a label
        # set (sernf_data.labels); the key is absent when labels are not in use.
        keep &= np.array([not m.get("awaiting_labels", False) for m in episodes], dtype=bool)
        counts = np.maximum(self._lengths - self.timing.P, 0)  # valid decision steps per episode
        keep &= counts > 0
        self._eligible = np.flatnonzero(keep).astype(np.int64)  # [E]
        self._cum = np.cumsum(counts[self._eligible])  # [E] cumulative valid steps

    def _draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self.num_transitions == 0:
            raise EmptyReplayError(
                f"no valid decision steps in store {self.store.uri!r} "
                f"({self._num_visible} episodes, success_only={self.config.success_only}, "
                f"sources={self.config.sources}, P={self.timing.P})"
            )
        flat = self._rng.integers(0, self.num_transitions, size=n)  # uniform over (episode, t)
        pos = np.searchsorted(self._cum, flat, side="right")  # [B] position among eligible
        before = np.concatenate([[0], self._cum])[pos]  # valid steps of earlier eligible episodes
        return self._eligible[pos], (flat - before).astype(np.int64)


class MixedSampler:
    """Batches mixing an offline and an online TransitionSampler (Stage IV, ratio ``rho``).

    Per batch the offline count is ``floor(rho*B)`` plus one with probability
    ``frac(rho*B)`` (stochastic rounding): every batch is within one sample of ``rho*B`` and
    the long-run fraction is exactly ``rho``. Offline samples come first in the batch;
    ``is_offline`` marks them. If the online sampler has no valid transitions (nothing
    collected yet) the whole batch is offline, and vice versa; both empty raises
    ``EmptyReplayError``.
    """

    def __init__(
        self,
        offline_sampler: TransitionSampler,
        online_sampler: TransitionSampler,
        rho: float = 0.5,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> None:
        if not (isinstance(rho, int | float) and 0.0 <= rho <= 1.0 and math.isfinite(rho)):
            raise ValueError(f"rho must be in [0, 1], got {rho!r}")
        if offline_sampler.timing != online_sampler.timing:
            raise ValueError(
                f"offline and online samplers use different chunk timings: "
                f"{offline_sampler.timing} vs {online_sampler.timing}"
            )
        if offline_sampler.store.spec != online_sampler.store.spec:
            raise ValueError(
                f"stores {offline_sampler.store.uri!r} and {online_sampler.store.uri!r} have different specs"
            )
        if set(offline_sampler.cached_keys) != set(online_sampler.cached_keys):
            # One batch holds both samplers' rows: a key must be features in both or images in both.
            raise ValueError(
                f"offline and online samplers cache different rgb keys: {sorted(offline_sampler.cached_keys)} vs "
                f"{sorted(online_sampler.cached_keys)}"
            )
        self.offline = offline_sampler
        self.online = online_sampler
        self.rho = float(rho)
        self.batch_size = offline_sampler.batch_size if batch_size is None else int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)

    @property
    def timing(self) -> ChunkTiming:
        return self.offline.timing

    def refresh(self) -> int:
        """Refresh both samplers; returns how many episodes appeared in total."""
        return self.offline.refresh() + self.online.refresh()

    def offline_count(self, batch_size: int | None = None) -> int:
        """Draw this batch's offline count (advances the mixer's RNG)."""
        n = self.batch_size if batch_size is None else int(batch_size)
        have_off, have_on = self.offline.num_transitions > 0, self.online.num_transitions > 0
        if not (have_off or have_on):
            raise EmptyReplayError("both offline and online samplers are empty")
        exact = self.rho * n
        count = int(math.floor(exact)) + int(self._rng.random() < exact - math.floor(exact))
        if not have_on:
            return n
        if not have_off:
            return 0
        return count

    def sample_numpy(self, batch_size: int | None = None) -> dict[str, Any]:
        n = self.batch_size if batch_size is None else int(batch_size)
        n_off = self.offline_count(n)
        parts = []
        if n_off:
            parts.append((self.offline.sample_numpy(n_off), True))
        if n - n_off:
            parts.append((self.online.sample_numpy(n - n_off), False))
        out: dict[str, Any] = {}
        for key in parts[0][0]:
            if key == "is_offline":
                out[key] = np.concatenate([np.full(len(p["reward"]), off, dtype=bool) for p, off in parts])
            elif isinstance(parts[0][0][key], Mapping):
                out[key] = {k: np.concatenate([p[key][k] for p, _ in parts]) for k in parts[0][0][key]}
            else:
                out[key] = np.concatenate([p[key] for p, _ in parts])
        return out

    def sample(self, batch_size: int | None = None) -> dict[str, Any]:
        """One mixed batch of torch tensors; ``is_offline`` marks the offline samples."""
        return batch_to_torch(self.sample_numpy(batch_size))

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "MixedSampler",
            "rho": self.rho,
            "batch_size": self.batch_size,
            "rng": copy.deepcopy(self._rng.bit_generator.state),
            "offline": self.offline.state_dict(),
            "online": self.online.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != "MixedSampler":
            raise ValueError(f"not a MixedSampler state (kind={state.get('kind')!r})")
        if state["rho"] != self.rho or state["batch_size"] != self.batch_size:
            raise ValueError(
                f"sampler state has rho={state['rho']}, batch_size={state['batch_size']}; "
                f"this sampler rho={self.rho}, batch_size={self.batch_size}"
            )
        self.offline.load_state_dict(state["offline"])
        self.online.load_state_dict(state["online"])
        self._rng.bit_generator.state = copy.deepcopy(state["rng"])
