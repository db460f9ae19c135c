"""Run a schedule of training stages, resumably (Alg. 3 end to end).

A :class:`Trainer` owns everything a run needs — the policy (actor + critic), the target
critics, the current stage's optimisers and samplers, the RNGs — and runs the stages of its
schedule in order (``il → critic_warmup → offline_rl [→ online_rl]``, or a single stage, or
``distill``). After every stage the policy is exported to ``<out>/policy_<stage>/``
(a deployable ``Policy`` checkpoint) and, if configured, evaluated.

Resumability: every ``checkpoint_every`` updates (online RL / distillation: every iteration;
every stage end) the trainer writes ``<out>/checkpoints/ckpt-<stage index>-<stage>-<step>/``:

    policy/                 Policy.save(): safetensors weights + config.json
    trainer.safetensors     every other tensor: target critics, optimiser moments, torch RNG,
                            the distillation buffer, numpy arrays in RNG states
    trainer.json            everything else: stage index and step, run id, optimiser
                            hyperparameters, sampler cursors / RNG states, python and numpy
                            RNG states (tensors appear as {"__tensor__": name} references)

No pickle anywhere: optimiser state dicts are flattened into named tensors plus JSON and
rebuilt on load. A checkpoint directory is written under a temporary name and renamed; then
``checkpoints/latest.json`` is replaced atomically to point at it. A run killed at any moment
resumes (``Trainer(..., resume=True)``) from the last complete checkpoint and produces
results bit-identical to an uninterrupted run on the same machine (tested).

Data-parallel runs (``torchrun --nproc_per_node N -m sernf_learner.cli ...`` or
``sernf-train ... --nproc N``, :mod:`sernf_learner.distributed`): each rank samples
``batch_size / N`` transitions per update with its own sampler seed from the same stores and
the gradients are averaged before every optimiser step; rank 0 alone exports policies, writes
checkpoints and metrics and evaluates. A checkpoint holds every rank's sampler and RNG state,
so a resumed run needs the same number of processes. Stages I-III run data-parallel; online RL
and distillation (which collect episodes into one store) refuse more than one process.

Determinism rests on one rule: building a stage (optimisers, samplers, target copies) consumes
no random numbers from the global RNGs, so restoring them once, after everything is built,
puts a resumed run exactly where the interrupted one was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sernf_data.store import EpisodeStore, StoreSpec
from sernf_learner import distributed
from sernf_learner.configs import SCHEDULES, STAGES, RunConfig
from sernf_learner.critic_warmup import CriticWarmup, train_critic_warmup
from sernf_learner.distill import Distillation, train_distill
from sernf_learner.feature_cache import FeatureCacheConfig, feature_caches_for, shared_backbones
from sernf_learner.il import ImitationLearning, train_il
from sernf_learner.metrics import MetricsLogger
from sernf_learner.offline_rl import OfflineRL, train_offline_rl
from sernf_learner.online_rl import OnlineRL, evaluate_policy, policy_act_fn, train_online_rl
from sernf_learner.td_targets import TargetCritic
from sernf_learner.transitions import ChunkTiming, MixedSampler, TransitionSampler
from sernf_learner.value_support import check_value_support, returns_to_go_range
from sernf_policy.act_actor import ACTActorConfig
from sernf_policy.checkpoint import CONFIG_FILE
from sernf_policy.critic import ChunkCriticConfig
from sernf_policy.encoders import EncoderConfig
from sernf_policy.fast_paths import reference_paths
from sernf_policy.flow import ChunkFlowConfig
from sernf_policy.flow_matching_actor import FlowMatchingActorConfig
from sernf_policy.gaussian_actor import GaussianActorConfig
from sernf_policy.policy import LIKELIHOOD_FREE_ACTORS, Policy, PolicyConfig

CHECKPOINT_FORMAT = 1
_log = logging.getLogger(__name__)
_STAGES_WITH_CRITIC = ("critic_warmup", "offline_rl", "online_rl")
#: Stages whose unit (progress, checkpoints) is an iteration of collect + updates, not an update.
_ITERATION_STAGES = ("online_rl", "distill")
#: Stages that run data-parallel over several processes (the others collect episodes).
_DATA_PARALLEL_STAGES = ("il", "critic_warmup", "offline_rl")


class _NullLogger:
    """The metrics logger of ranks > 0: rank 0 alone writes metrics (same interface)."""

    def start_stage(self, *args: Any, **kwargs: Any) -> None:
        return None

    def log(self, *args: Any, **kwargs: Any) -> None:
        return None

    def flush(self) -> None:
        return None

    def close_bar(self) -> None:
        return None

    def close(self, extra: dict | None = None) -> dict:
        return dict(extra or {})


class _Stopped(Exception):
    """Raised by ``Trainer.run(stop_after=...)`` to simulate a kill."""


# ------------------------------------------------------------------ state ↔ tensors + JSON


def flatten_state(tree: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Split a nested state (dicts, lists, tuples, tensors, ndarrays, JSON scalars) into
    ``tensors`` (named ``prefix/...``) and a JSON-able tree that references them.

    Dict keys that are not strings (optimiser states are keyed by parameter index) and tuples
    (RNG states) are encoded so :func:`unflatten_state` restores them exactly.
    """
    if isinstance(tree, torch.Tensor):
        tensors[prefix] = tree.detach().cpu().clone().contiguous()
        return {"__tensor__": prefix}
    if isinstance(tree, np.ndarray):
        tensors[prefix] = torch.from_numpy(np.ascontiguousarray(tree).copy())
        return {"__ndarray__": prefix}
    if isinstance(tree, dict):
        if all(isinstance(k, str) for k in tree) and not any(k.startswith("__") for k in tree):
            return {k: flatten_state(v, f"{prefix}/{k}", tensors) for k, v in tree.items()}
        return {"__items__": [[k, flatten_state(v, f"{prefix}/{i}", tensors)] for i, (k, v) in enumerate(tree.items())]}
    if isinstance(tree, tuple):
        return {"__tuple__": [flatten_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(tree)]}
    if isinstance(tree, list):
        return [flatten_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(tree)]
    if isinstance(tree, np.generic):
        return tree.item()
    if tree is None or isinstance(tree, bool | int | float | str):
        return tree
    raise TypeError(f"cannot checkpoint a {type(tree).__name__} at {prefix!r}")


def unflatten_state(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"}:
            return tensors[tree["__tensor__"]]
        if set(tree) == {"__ndarray__"}:
            return tensors[tree["__ndarray__"]].numpy()
        if set(tree) == {"__items__"}:
            return {k: unflatten_state(v, tensors) for k, v in tree["__items__"]}
        if set(tree) == {"__tuple__"}:
            return tuple(unflatten_state(v, tensors) for v in tree["__tuple__"])
        return {k: unflatten_state(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [unflatten_state(v, tensors) for v in tree]
    return tree


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------- building blocks


def build_policy_config(config: RunConfig, observation_spec: dict, action_dim: int) -> PolicyConfig:
    """The model of ``config.policy`` for the data's observation spec and action size."""
    p = config.policy
    encoder = EncoderConfig(token_dim=p.token_dim, image_backbone=p.image_backbone, resnet=p.resnet, dinov2=p.dinov2)
    flow = gaussian = flow_matching = act = None
    dims = dict(action_dim=action_dim, horizon=p.horizon, context_dim=p.token_dim)
    if p.actor == "gaussian":  # ablation: same sizes, a Gaussian instead of the couplings
        gaussian = GaussianActorConfig(
            **dims, num_layers=p.flow_layers, hidden_dim=p.flow_hidden, num_heads=p.flow_heads, noise_std=p.noise_std,
        )
    elif p.actor == "flow_matching":  # Table I baseline (G3 b); dropout is the IL stage's
        flow_matching = FlowMatchingActorConfig(
            **dims, num_blocks=p.fm_blocks, hidden_dim=p.flow_hidden, num_heads=p.flow_heads, num_steps=p.fm_steps,
        )
    elif p.actor == "act":  # Table I baseline (G3 a)
        act = ACTActorConfig(
            **dims, chunk_len=p.act_chunk_len, latent_dim=p.act_latent_dim, hidden_dim=p.flow_hidden,
            num_heads=p.flow_heads, encoder_layers=p.act_layers, decoder_layers=p.act_layers,
            kl_weight=p.act_kl_weight, ensemble_m=p.act_ensemble_m,
        )
    else:
        flow = ChunkFlowConfig(
            action_dim=action_dim, horizon=p.horizon, context_dim=p.token_dim, num_layers=p.flow_layers,
            hidden_dim=p.flow_hidden, num_heads=p.flow_heads, noise_std=p.noise_std, seed=config.seed,
            base_components=p.flow_base_components, components=p.flow_components,
        )
    critic = None if p.actor in LIKELIHOOD_FREE_ACTORS else ChunkCriticConfig(  # baselines: IL only
        action_dim=action_dim, horizon=p.critic_horizon or p.horizon, prefix_len=p.prefix_len,
        obs_dim=p.token_dim, d_model=p.critic_d_model, num_heads=p.critic_heads, num_layers=p.critic_layers,
        ff_dim=p.critic_ff, dropout=p.critic_dropout, num_critics=p.num_critics, v_min=p.v_min, v_max=p.v_max,
    )
    likelihood_free = {"selection": "single"} if p.actor in LIKELIHOOD_FREE_ACTORS else {}
    return PolicyConfig(
        observation_spec=dict(observation_spec), action_dim=action_dim, obs_history=p.obs_history,
        prefix_len=p.prefix_len, horizon=p.horizon, flow=flow, critic=critic, encoder=encoder,
        num_samples=p.num_samples, sigma_sample=p.sigma_sample, actor=p.actor, gaussian=gaussian,
        flow_matching=flow_matching, act=act, **likelihood_free,
        selection_top_k=p.selection_top_k, selection_max_disagreement=p.selection_max_disagreement,
    )


def generate_point_demos(config: RunConfig, uri: str, n: int, seed: int) -> None:
    """Append ``n`` mixed-quality point-task demonstrations (``mixed_point_dataset``, seed
    ``seed``, the chunk timing and task of ``config``) to the episode store at ``uri``,
    creating it if missing."""
    from sernf_sim.datasets import mixed_point_dataset
    from sernf_sim.point_task import PointTaskConfig

    p = config.policy
    episodes = mixed_point_dataset(
        n=n, seed=seed, T=p.obs_history, P=p.prefix_len, H=p.horizon,
        task_config=PointTaskConfig(**dict(config.env.task_overrides)),
        upper_route_prob=config.data.point_demo_upper_route_prob,
    )
    env = make_env(config, 1, 0)
    spec = StoreSpec(obs=env.observation_spec, action_dim=env.action_dim, control_rate_hz=env.control_hz)
    store = EpisodeStore(uri, mode="a", spec=spec)
    for steps, meta in episodes:
        store.append_episode(steps, meta)


def make_env(config: RunConfig, num_envs: int, seed: int):
    """The configured simulated task (explicit table of tasks, no import by name)."""
    if config.env.task == "point":
        from sernf_sim.point_task import PointTask, PointTaskConfig

        task_config = PointTaskConfig(**dict(config.env.task_overrides))
        return PointTask(num_envs=num_envs, seed=seed, config=task_config)
    if config.env.task == "hand_pick_place":
        from sernf_sim.hand_pick_place.env import make_env as make_hand_env

        overrides = dict(config.env.task_overrides)
        variant = overrides.pop("variant", "nominal")
        return make_hand_env(variant, num_envs=num_envs, render_images=False, seed=seed, **overrides)
    if config.env.task == "gymnasium":  # the id goes through gymnasium's own registry
        return config.env.gymnasium.make_task(num_envs, seed)
    raise ValueError(f"unknown task {config.env.task!r}")


def make_teacher_factory(config: RunConfig) -> Callable[[int], Callable]:
    """``seed -> act_fn`` of the configured distillation teacher."""
    teacher = config.teacher
    p = config.policy
    if teacher.kind == "point_expert":
        if config.env.task != "point":
            raise ValueError(f"teacher kind 'point_expert' drives the point task only, not {config.env.task!r}; "
                             "use teacher kind 'checkpoint'")
        from sernf_sim.point_expert import ExpertConfig, PointExpert
        from sernf_sim.point_task import PointTaskConfig

        task_config = PointTaskConfig(**dict(config.env.task_overrides))
        expert_config = ExpertConfig.from_quality(teacher.expert_quality)
        return lambda seed: PointExpert(task_config, expert_config, seed=seed).chunk_act_fn(p.horizon)
    with torch.random.fork_rng(devices=[]):  # building a model must not move the global RNG
        policy = Policy.load(teacher.checkpoint, device=config.trainer.device)
    act = policy_act_fn(policy, policy.config.num_samples, policy.config.sigma_sample)
    return lambda seed: act


def _exported_with_best_of_n(policy_dir: str | os.PathLike[str]) -> bool:
    """Whether a policy export selects by its critic (read from its config, not its weights)."""
    header = json.loads((Path(policy_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
    config = header.get("config") or {}
    return bool(config.get("critic")) and config.get("selection") == "best_of_n"


def parse_schedule(schedule: str | Sequence[str]) -> list[str]:
    """A named schedule ("offline", "full"), one stage, "a,b" or a list of stages -> stage list."""
    if isinstance(schedule, str):
        stages = list(SCHEDULES[schedule]) if schedule in SCHEDULES else schedule.split(",")
    else:
        stages = list(schedule)
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise ValueError(f"unknown stage(s) {bad}; stages are {STAGES}, schedules {sorted(SCHEDULES)}")
    return stages


def _resolve(out_dir: Path, uri: str) -> str:
    """Relative local paths live in the run directory; absolute paths and URLs stay."""
    if "://" in uri or os.path.isabs(uri):
        return uri
    return str(out_dir / uri)


# -------------------------------------------------------------------------------- trainer


@dataclass
class _Stage:
    """The live objects of the running stage (what a checkpoint must capture)."""

    name: str
    learner: Any
    sampler: Any = None


class Trainer:
    """Runs ``schedule`` (stage names or a named schedule) for ``config`` into ``out_dir``."""

    def __init__(
        self,
        config: RunConfig,
        out_dir: str | os.PathLike[str],
        schedule: str | Sequence[str],
        *,
        resume: bool = False,
        init_policy: str | os.PathLike[str] | None = None,
        env_factory: Callable[[int, int], Any] | None = None,
    ) -> None:
        """``env_factory(num_envs, seed)``, when given, makes every task the run steps (online RL,
        distillation, evaluation) instead of ``config.env``'s: a user's own vectorized task, e.g. a
        ``sernf_sim.gymnasium_task.GymnasiumTask`` with success predicates (docs/gymnasium.md)."""
        if env_factory is not None and not callable(env_factory):
            raise ValueError("Trainer: env_factory must be callable (num_envs, seed) -> task")
        self.env_factory = env_factory
        self.config = config
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.schedule = parse_schedule(schedule)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        if self.world_size > 1:
            serial = [s for s in self.schedule if s not in _DATA_PARALLEL_STAGES]
            if serial:
                raise ValueError(f"stages {serial} collect episodes and run in one process only; "
                                 f"data-parallel runs support {list(_DATA_PARALLEL_STAGES)}")
        self.device = torch.device(config.trainer.device)
        if self.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
        if config.trainer.torch_num_threads:
            torch.set_num_threads(config.trainer.torch_num_threads)
        self.ckpt_root = self.out / "checkpoints"
        checkpoint = self.latest_checkpoint() if resume else None

        seed_everything(config.seed)
        self.offline_store = self._open_offline_store()
        if checkpoint is not None:
            self.policy = Policy.load(checkpoint / "policy", device=self.device)
        elif init_policy is not None:
            self.policy = Policy.load(init_policy, device=self.device)
        else:
            self.policy = self._new_policy()
        self._initial_critic_trained = init_policy is not None and _exported_with_best_of_n(init_policy)
        # TD fields span as many steps as the critic scores actions (H, or 1 for the per-step
        # ablation): the policy's own critic decides, as it does for a loaded policy.
        self.timing = ChunkTiming(T=config.policy.obs_history, P=config.policy.prefix_len,
                                  H=config.policy.horizon, gamma=config.data.gamma,
                                  td_horizon=self.policy.config.critic_horizon)
        # Identical replicas on every rank (they are already: same seed, same data; this makes
        # it a guarantee), then each rank its own random stream (dropout, noise, sampling).
        distributed.broadcast_module(self.policy)
        if self.world_size > 1:
            seed_everything(int(np.random.SeedSequence([config.seed, 1 + self.rank]).generate_state(1)[0]))
        self.target = TargetCritic(self.policy) if self.policy.critic is not None else None
        if self.target is not None and any(s in _STAGES_WITH_CRITIC for s in self.schedule):
            self._check_value_support()
        self.stage_index, self.step, self.global_step = 0, 0, 0
        self.run_id = uuid.uuid4().hex[:8]  # names online episodes; from os entropy, not the seeded RNGs
        self.results: dict[str, Any] = {}
        self.timings: dict[str, dict[str, float]] = {}
        self._stage: _Stage | None = None
        self._pending: dict[str, Any] | None = None
        #: Per stage built: whether its samplers read cached backbone features, and why (not).
        self.feature_cache_status: dict[str, str] = {}
        if checkpoint is not None:
            self._load_checkpoint(checkpoint)
        self.logger: MetricsLogger | _NullLogger = _NullLogger()
        if self.rank == 0:
            self.logger = MetricsLogger(
                self.out, tensorboard=config.trainer.tensorboard, progress=config.trainer.progress,
                resume_from_step=self.global_step if checkpoint is not None else None,
            )

    # -- data and model ---------------------------------------------------------------------
    def _open_offline_store(self) -> EpisodeStore:
        uri = _resolve(self.out, self.config.data.offline_uri)
        n = self.config.data.generate_point_demos
        exists = (Path(uri) / "zarr.json").exists() if "://" not in uri else True
        if not exists and n > 0 and self.rank == 0:  # one writer; the other ranks wait for it
            generate_point_demos(self.config, uri, n, self.config.data.demo_seed)
        distributed.barrier()
        return EpisodeStore(uri, mode="r")

    def _new_policy(self) -> Policy:
        spec = self.offline_store.spec
        obs_spec = {k: {"shape": list(v.shape), "kind": v.kind} for k, v in spec.obs.items()}
        policy = Policy(build_policy_config(self.config, obs_spec, spec.action_dim)).to(self.device)
        snap = self.offline_store.load_arrays()
        # Dataset statistics of all offline data (§IV-B); they travel in the checkpoint.
        lowdim = {k: snap.arrays[k] for k, v in spec.obs.items() if v.kind == "lowdim"}
        policy.fit_normalizers(snap.arrays["action"], lowdim, action_margin=self.config.policy.action_margin)
        return policy

    def _check_value_support(self) -> None:
        """Refuse critic stages whose HL-Gauss support cannot hold the offline data's returns
        (``sernf_learner.value_support``)."""
        snap = self.offline_store.load_arrays()
        returns = returns_to_go_range(snap.arrays["reward"], snap.episode_ends, self.config.data.gamma)
        critic = self.policy.config.critic
        check_value_support(critic.v_min, critic.v_max, returns, f"the offline store {self.offline_store.uri}")

    def make_env(self, num_envs: int, seed: int):
        """A task for online RL, distillation or evaluation: the ``env_factory``'s when the trainer
        has one, else the configured one (:func:`make_env`)."""
        if self.env_factory is not None:
            return self.env_factory(num_envs, seed)
        return make_env(self.config, num_envs, seed)

    # -- stages -----------------------------------------------------------------------------
    def _stage_seed(self, index: int) -> int:
        return int(np.random.SeedSequence([self.config.seed, index]).generate_state(1)[0])

    def _sampler(self, store: EpisodeStore, batch_size: int, seed: int, timing: ChunkTiming | None = None,
                 *, stage: str, **kwargs) -> TransitionSampler:
        if self.world_size > 1:  # this rank's shard of every batch, from its own stream
            batch_size = distributed.shard_batch_size(batch_size)
            seed = int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0])
        caches = self._feature_caches(stage, store)
        return TransitionSampler(store, timing or self.timing, batch_size, seed, feature_caches=caches, **kwargs)

    def _feature_caches(self, stage: str, store: EpisodeStore) -> list | None:
        """Feature caches for ``stage``'s batches from ``store``, or None (cache off or not valid).

        One batch feeds every encoder the stage runs: the actor's (IL; â' in the TD target), the
        critic's and the target critic's (critic stages). Cached features stand in for the images
        only if each of them has a fully frozen backbone computing the same function, so the
        decision is made here, after the stage froze what it freezes (critic warm-up: the actor),
        and a trainable backbone never gets a cache built (the encoder would refuse it anyway).
        """
        cache_dir = self.config.trainer.feature_cache_dir
        if not cache_dir:
            return None
        encoders = [self.policy.actor_encoder]
        if stage != "il":
            encoders += [self.policy.critic_encoder, self.target.encoder]
        backbones, reason = shared_backbones(encoders)
        if backbones is None:
            self.feature_cache_status[stage] = f"off: {reason}"
            _log.warning("feature cache not used in stage %s: %s", stage, reason)
            return None
        config = FeatureCacheConfig(progress=self.config.trainer.progress and self.rank == 0)
        caches = feature_caches_for(backbones, store, _resolve(self.out, cache_dir), config)
        self.feature_cache_status[stage] = f"on: {sorted(backbones)} from {[c.root for c in caches]}"
        _log.info("stage %s reads cached backbone features of %s", stage, sorted(backbones))
        return caches

    def _imitation_timing(self) -> ChunkTiming:
        """The IL sampler's timing: the run's, with chunks of the actor's imitation length (ACT
        imitates its own ``chunk_len`` actions from the same decision steps; the others H)."""
        h = self.policy.config.imitation_horizon
        return self.timing if h == self.timing.H else dataclasses.replace(self.timing, H=h, td_horizon=None)

    def _acting_selection(self, stage_name: str) -> str:
        """How the policy picks chunks after ``stage_name``: best-of-N once the critic is trained,
        else the configured choice; one sample for actors without a likelihood."""
        if not self.policy.config.has_likelihood:
            return "single"
        return "best_of_n" if self._critic_trained(stage_name) else self.config.trainer.eval.selection_without_critic

    def _build_stage(self, name: str, index: int) -> _Stage:
        """Objects of stage ``name``; consumes no global random numbers (see module doc)."""
        cfg, seed = self.config, self._stage_seed(index)
        precision = cfg.trainer.precision
        if name == "il":
            return _Stage(name, ImitationLearning(self.policy, cfg.il, precision),
                          self._sampler(self.offline_store, cfg.il.batch_size, seed, timing=self._imitation_timing(),
                                        success_only=cfg.il.success_only, stage=name))
        if name in (*_STAGES_WITH_CRITIC, "distill") and not self.policy.config.has_likelihood:
            raise ValueError(f"stage {name} needs the actor's log-likelihood; actor {self.policy.config.actor!r} is an "
                             "imitation-only baseline (run the 'il' stage only)")
        if name in _STAGES_WITH_CRITIC and self.target is None:
            raise ValueError(f"stage {name} needs a policy with a critic")
        if name == "critic_warmup":  # the learner first: it freezes the actor (which makes it cacheable)
            learner = CriticWarmup(self.policy, self.target, cfg.critic_warmup, precision)
            return _Stage(name, learner, self._sampler(self.offline_store, cfg.critic_warmup.batch_size, seed, stage=name))
        if name == "offline_rl":
            learner = OfflineRL(self.policy, self.target, cfg.offline_rl, precision)
            return _Stage(name, learner, self._sampler(self.offline_store, cfg.offline_rl.batch_size, seed, stage=name))
        if name == "online_rl":
            o = cfg.online_rl
            online_store = EpisodeStore(_resolve(self.out, cfg.data.online_uri), mode="a", spec=self.offline_store.spec)
            sampler = MixedSampler(
                self._sampler(self.offline_store, o.batch_size, seed + 1, stage=name),
                self._sampler(online_store, o.batch_size, seed + 2, is_offline=False, stage=name),
                rho=o.rho, seed=seed + 3, batch_size=o.batch_size,
            )
            stage = _Stage(name, OnlineRL(self.policy, self.target, o, precision), sampler)
            stage.online_store = online_store  # type: ignore[attr-defined]
            return stage
        if name == "distill":
            return _Stage(name, Distillation(self.policy, cfg.distill, precision))
        raise ValueError(f"unknown stage {name!r}")

    def _units(self, name: str) -> int:
        """Checkpointable units of a stage: updates, or iterations for online RL / distill."""
        cfg = self.config
        return {
            "il": cfg.il.steps, "critic_warmup": cfg.critic_warmup.steps, "offline_rl": cfg.offline_rl.steps,
            "online_rl": cfg.online_rl.iterations, "distill": cfg.distill.iterations,
        }[name]

    def _updates_per_unit(self, name: str) -> int:
        if name == "online_rl":
            return self.config.online_rl.updates_per_iteration
        if name == "distill":
            return self.config.distill.updates_per_iteration
        return 1

    def run(self, stop_after: int | None = None) -> dict[str, Any]:
        """Run the remaining schedule; returns the summary (also in ``<out>/summary.json``).

        ``stop_after``: stop (as if killed) once this many units of this call are done, right
        after the checkpoint logic of that unit (for tests of resumption).
        """
        self._stop_after, self._units_done = stop_after, 0
        with reference_paths() if self.config.trainer.reference_model_paths else contextlib.nullcontext():
            return self._run()

    def _run(self) -> dict[str, Any]:
        try:
            while self.stage_index < len(self.schedule):
                name = self.schedule[self.stage_index]
                if self._stage is None:
                    self._stage = self._build_stage(name, self.stage_index)
                if self._pending is not None:  # resuming inside this stage
                    self._restore_stage(self._stage, self._pending)
                    self._pending = None
                base_step = self.global_step - self.step * self._updates_per_unit(name)
                self.logger.start_stage(name, total=self._units(name), initial=self.step,
                                        unit="it" if name in _ITERATION_STAGES else "upd")
                t0 = time.perf_counter()
                self._run_stage(self._stage, base_step, functools.partial(self._on_unit, name, base_step))
                t1 = time.perf_counter()
                self._finish_stage(self._stage)
                # Wall time of this process only (a resumed stage counts from the resume).
                self.timings[name] = {"train_s": t1 - t0, "export_eval_s": time.perf_counter() - t1}
        except _Stopped:
            self.logger.close_bar()
            self.logger.flush()
            return {"stopped_at": {"stage": self.schedule[self.stage_index], "step": self.step}}
        return self.logger.close(extra={"results": self.results, "schedule": self.schedule,
                                        "stage_time_s": self.timings})

    def _on_unit(self, name: str, base_step: int, step: int) -> None:
        """After unit ``step`` of stage ``name``: count, checkpoint when due, maybe stop."""
        self.step = step
        self.global_step = base_step + step * self._updates_per_unit(name)
        due = name in _ITERATION_STAGES or step % self.config.trainer.checkpoint_every == 0
        if due and step < self._units(name):  # the stage's last unit: _finish_stage saves
            self.save_checkpoint()
        self._units_done += 1
        if self._stop_after is not None and self._units_done >= self._stop_after:
            raise _Stopped

    def _run_stage(self, stage: _Stage, base_step: int, on_unit: Callable[[int], None]) -> None:
        cfg, log_every = self.config, self.config.trainer.log_every
        common = dict(start_step=self.step, logger=self.logger, global_step=base_step, log_every=log_every, on_step=on_unit)
        if stage.name == "il":
            train_il(stage.learner, stage.sampler, **common)
        elif stage.name == "critic_warmup":
            train_critic_warmup(stage.learner, stage.sampler, **common)
        elif stage.name == "offline_rl":
            train_offline_rl(stage.learner, stage.sampler, **common)
        elif stage.name == "online_rl":
            e = cfg.env
            env = self.make_env(e.num_envs, e.seed)
            eval_env = self.make_env(cfg.trainer.eval.num_envs, cfg.trainer.eval.seed) if cfg.online_rl.eval_every else None
            train_online_rl(stage.learner, env, stage.online_store, stage.sampler, run_id=self.run_id,
                            seed=self._stage_seed(self.stage_index), eval_env=eval_env,
                            eval_seed=cfg.trainer.eval.seed, eval_num_samples=cfg.trainer.eval.num_samples,
                            eval_sigma=cfg.trainer.eval.sigma, eval_threads=cfg.trainer.eval.torch_threads,
                            start_iteration=self.step,
                            logger=self.logger, global_step=base_step, on_iteration=on_unit)
        elif stage.name == "distill":
            env = self.make_env(cfg.env.num_envs, cfg.env.seed)
            train_distill(stage.learner, env, make_teacher_factory(cfg), start_iteration=self.step,
                          logger=self.logger, global_step=base_step, on_iteration=on_unit)

    def _finish_stage(self, stage: _Stage) -> None:
        name = stage.name
        if self.rank == 0:
            # The exported policy selects chunks the way its critic allows: best-of-N only once a
            # critic stage has trained the critic; an IL-only export carries a random critic, so
            # it acts by its most likely candidate (Policy.load(...).act() must not pick chunks
            # with an untrained critic).
            original = self.policy.config.selection
            self.policy.config.selection = self._acting_selection(name)
            try:
                self.policy.save(self.out / f"policy_{name}", metadata={"stage": name, "step": self.global_step})
            finally:
                self.policy.config.selection = original
            result = self.evaluate(name)
            if result is not None:
                self.results[name] = result
                self.logger.log(self.global_step, {"eval/success": result["success_rate"],
                                                   "eval/return": result["mean_return"]})
        distributed.barrier()  # the other ranks wait for the export and the evaluation
        self.stage_index += 1
        self.step = 0
        self._stage = None
        self.save_checkpoint()
        self.logger.flush()

    def _critic_trained(self, stage_name: str) -> bool:
        """Whether the critic has been trained by the end of ``stage_name``: by a critic stage of
        this schedule so far, or before (a policy given to start from that selects best-of-N)."""
        done = self.schedule[: self.schedule.index(stage_name) + 1]
        return any(s in _STAGES_WITH_CRITIC for s in done) or self._initial_critic_trained

    def evaluate(self, stage_name: str) -> dict[str, Any] | None:
        """Success etc. over ``trainer.eval.episodes`` episodes; None when disabled."""
        ev = self.config.trainer.eval
        if ev.episodes == 0 or stage_name not in ev.stages:
            return None
        policy = self.policy
        original = policy.config.selection
        selection = "best_of_n" if stage_name in _STAGES_WITH_CRITIC else ev.selection_without_critic
        if not policy.config.has_likelihood:  # imitation-only baselines act by one sample
            selection = "single"
        policy.config.selection = selection
        try:
            env = self.make_env(ev.num_envs, ev.seed)
            result = evaluate_policy(policy, env, ev.episodes, num_samples=ev.num_samples, sigma=ev.sigma,
                                     seed=ev.seed, threads=ev.torch_threads)
        finally:
            policy.config.selection = original
        # Per-episode outcomes in episode order (the same fixed-seed episodes for every run), so
        # benchmarks can pair methods episode by episode (bench/learning.py's McNemar tests).
        return {**result.summary(), "selection": selection, "episode_success": result.episode_success}

    # -- checkpoints ------------------------------------------------------------------------
    def latest_checkpoint(self) -> Path | None:
        pointer = self.ckpt_root / "latest.json"
        if not pointer.exists():
            return None
        name = json.loads(pointer.read_text(encoding="utf-8"))["checkpoint"]
        if "/" in name or name.startswith("."):
            raise ValueError(f"{pointer}: bad checkpoint name {name!r}")
        return self.ckpt_root / name

    def save_checkpoint(self) -> Path:
        """Write the full trainer state atomically; returns the checkpoint directory.

        In a data-parallel run every rank calls this (its sampler and RNG states are gathered);
        rank 0 writes, the others wait for it.
        """
        path = self._write_checkpoint()
        distributed.barrier()
        return path

    def _write_checkpoint(self) -> Path:
        tensors: dict[str, torch.Tensor] = {}
        stage = self._stage
        sampler_states = rng_states = None
        if self.world_size > 1:
            with_sampler = stage is not None and self.step > 0 and stage.sampler is not None
            sampler_states = distributed.all_gather_objects(stage.sampler.state_dict() if with_sampler else None)
            rng_states = distributed.all_gather_objects(rng_state())
        name = f"ckpt-{self.stage_index:02d}-{self._stage_name()}-{self.step:08d}"
        if self.rank != 0:
            return self.ckpt_root / name
        state: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "schedule": self.schedule,
            "stage_index": self.stage_index,
            "step": self.step,
            "global_step": self.global_step,
            "run_id": self.run_id,
            "results": self.results,
            "config": self.config.to_dict(),
            "world_size": self.world_size,
        }
        if self.target is not None:
            for k, v in self.target.tensors().items():
                tensors[f"target/{k}"] = v.detach().cpu().clone().contiguous()
        if stage is not None and self.step > 0:
            stage_state: dict[str, Any] = {"learner": stage.learner.state_dict()}
            if stage.sampler is not None:
                stage_state["sampler"] = stage.sampler.state_dict()
                if sampler_states is not None:
                    stage_state["sampler_ranks"] = list(sampler_states)
            if stage.name == "distill":
                buf_tensors, buf_meta = stage.learner.buffer.state()
                stage_state["buffer"] = {"tensors": buf_tensors, "meta": buf_meta}
            state["stage"] = flatten_state(stage_state, "stage", tensors)
        state["rng"] = flatten_state(rng_state(), "rng", tensors)
        if rng_states is not None:
            state["rng_ranks"] = flatten_state(list(rng_states), "rng_ranks", tensors)

        self.ckpt_root.mkdir(parents=True, exist_ok=True)
        final = self.ckpt_root / name
        tmp = self.ckpt_root / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            self.policy.save(tmp / "policy", metadata={"stage": self._stage_name(), "step": self.global_step})
            save_file(tensors, str(tmp / "trainer.safetensors"))
            (tmp / "trainer.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
            for f in (tmp / "trainer.safetensors", tmp / "trainer.json"):
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        pointer_tmp = self.ckpt_root / f".latest.json.tmp-{uuid.uuid4().hex[:8]}"
        pointer_tmp.write_text(json.dumps({"checkpoint": name}), encoding="utf-8")
        os.replace(pointer_tmp, self.ckpt_root / "latest.json")
        self._prune_checkpoints(keep=name)
        return final

    def _stage_name(self) -> str:
        return self.schedule[self.stage_index] if self.stage_index < len(self.schedule) else "done"

    def _prune_checkpoints(self, keep: str) -> None:
        ckpts = sorted(p for p in self.ckpt_root.iterdir() if p.is_dir() and p.name.startswith("ckpt-"))
        for p in ckpts[: max(len(ckpts) - self.config.trainer.keep_checkpoints, 0)]:
            if p.name != keep:
                shutil.rmtree(p, ignore_errors=True)

    def _load_checkpoint(self, path: Path) -> None:
        state = json.loads((path / "trainer.json").read_text(encoding="utf-8"))
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: unsupported trainer checkpoint format {state.get('format')!r}")
        if state["schedule"] != self.schedule:
            raise ValueError(f"{path}: checkpoint schedule {state['schedule']} != requested {self.schedule}")
        if int(state.get("world_size", 1)) != self.world_size:
            raise ValueError(f"{path}: written by {state.get('world_size', 1)} process(es); resume it with "
                             f"as many (this run has {self.world_size})")
        tensors = load_file(str(path / "trainer.safetensors"))
        self.stage_index, self.step = int(state["stage_index"]), int(state["step"])
        self.global_step, self.run_id = int(state["global_step"]), state["run_id"]
        self.results = state["results"]
        if self.target is not None:
            self.target.load_tensors({k[len("target/"):]: v for k, v in tensors.items() if k.startswith("target/")})
        if "stage" in state:
            self._pending = unflatten_state(state["stage"], tensors)
            if "sampler_ranks" in self._pending:  # data-parallel: this rank's own sampler
                self._pending["sampler"] = self._pending.pop("sampler_ranks")[self.rank]
            # Build the stage now so every constructor runs before the RNGs are restored.
            self._stage = self._build_stage(self.schedule[self.stage_index], self.stage_index)
        if "rng_ranks" in state:
            set_rng_state(unflatten_state(state["rng_ranks"], tensors)[self.rank])
        else:
            set_rng_state(unflatten_state(state["rng"], tensors))

    def _restore_stage(self, stage: _Stage, state: dict[str, Any]) -> None:
        stage.learner.load_state_dict(state["learner"])
        if stage.sampler is not None:
            stage.sampler.load_state_dict(state["sampler"])
        if stage.name == "distill":
            stage.learner.buffer.load_state(state["buffer"]["tensors"], state["buffer"]["meta"])
