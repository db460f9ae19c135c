"""DAgger-style distillation of a teacher into the flow policy (cube task, paper G2).

The cube policy is distilled from a teacher that acts on privileged / clean observations into
a student that sees what the robot sees (docs/design.md §6 "Distillation"). Each iteration:

1. **Collect** ``episodes_per_iteration`` episodes with mixed control: at every decision, per
   env, the executed chunk is the teacher's with probability ``p_teacher`` and the student's
   otherwise (DAgger, Ross et al.). ``p_teacher`` starts at 1.0 and is multiplied by 0.999 per
   iteration: ``p_teacher(i) = p0 · decay^i`` (derived from the iteration, never accumulated,
   so a resumed run has exactly the same schedule).
2. **Label** every visited decision with the *teacher's* chunk for it (whoever acted), and
   store ``(student observation history, prefix, teacher chunk)`` in an aggregated buffer.
3. **Train** the student by NLL of the teacher chunks (Stage I's objective) on batches from the
   buffer.

The student's observations are corrupted the way a sim-to-real student must tolerate: each
low-dim key gets additive Gaussian noise per step (``obs_noise_std``) plus a constant offset
per episode (``obs_offset_std``, drawn at every episode start) — calibration errors stay fixed
within an episode, sensor noise does not. The teacher sees the clean observations.

The teacher is any ``act_fn(obs_history, prefix) -> chunk [n, H, A]`` (raw units, optional
``reset(obs)``), built per iteration by ``teacher_factory(seed)`` so that scripted teachers with
their own RNG are reproducible on resume; e.g. the point task's scripted expert, or a
``Policy`` checkpoint through :func:`sernf_learner.online_rl.policy_act_fn`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from sernf_learner.distributed import gradient_step, make_adamw
from sernf_learner.il import check_int
from sernf_learner.metrics import MetricsLogger
from sernf_policy.mixed_precision import autocast, check_precision
from sernf_sim.evaluation import rollout_chunked


@dataclass
class DistillConfig:
    """Distillation hyperparameters (defaults: paper G2 where it gives them)."""

    iterations: int = 1_000
    """Collect → label → train rounds."""
    episodes_per_iteration: int = 16
    """Episodes collected per round (in batches of the env's ``num_envs``)."""
    updates_per_iteration: int = 50
    """Student NLL updates per round."""
    batch_size: int = 1024
    """Samples per update (G2: 1024 for cube distillation)."""
    lr: float = 1e-4
    """AdamW learning rate (as imitation learning, G2)."""
    weight_decay: float = 1e-4
    """AdamW weight decay (G2)."""
    dropout: float = 0.2
    """Student actor dropout."""
    p_teacher_start: float = 1.0
    """Probability that the teacher's chunk is executed, at iteration 0."""
    p_teacher_decay: float = 0.999
    """Multiplier of ``p_teacher`` per iteration."""
    obs_noise_std: float = 0.01
    """Std of the per-step additive Gaussian noise on the student's low-dim observations (raw units)."""
    obs_offset_std: float = 0.01
    """Std of the per-episode constant offset on the student's low-dim observations (raw units)."""
    buffer_capacity: int = 200_000
    """Labelled decisions kept (oldest dropped first)."""
    student_num_samples: int = 1
    """N for the student when it acts (Alg. 2 selection of the policy; 1 = one sample)."""
    student_sigma: float = 0.7
    """σ_sample for the student when it acts."""
    seed: int = 0
    """Seed of the mixing / noise RNG and the teacher factory."""

    def __post_init__(self) -> None:
        for name in ("episodes_per_iteration", "batch_size", "buffer_capacity", "student_num_samples"):
            check_int(self, name)
        for name in ("iterations", "updates_per_iteration", "seed"):
            check_int(self, name, allow_zero=True)
        for name in ("lr", "student_sigma"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"DistillConfig.{name} must be > 0, got {v!r}")
        for name in ("weight_decay", "obs_noise_std", "obs_offset_std"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"DistillConfig.{name} must be >= 0, got {v!r}")
        if not 0.0 <= self.p_teacher_start <= 1.0 or not 0.0 < self.p_teacher_decay <= 1.0:
            raise ValueError("DistillConfig needs p_teacher_start in [0, 1] and p_teacher_decay in (0, 1]")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DistillConfig.dropout must be in [0, 1), got {self.dropout}")

    def p_teacher(self, iteration: int) -> float:
        """``p0 · decay^iteration``: the teacher's share of executed chunks in that round."""
        return self.p_teacher_start * self.p_teacher_decay**iteration


class DistillBuffer:
    """Ring buffer of labelled decisions: ``obs`` dict ``[C, T, ...]``, ``prefix [C, P, A]``,
    ``chunk [C, H, A]`` (raw units). Its tensors and cursor go into trainer checkpoints."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.size = 0
        self.cursor = 0
        self.data: dict[str, torch.Tensor] = {}

    def add(self, obs: Mapping[str, np.ndarray], prefix: np.ndarray, chunk: np.ndarray) -> None:
        items = {f"obs.{k}": np.asarray(v) for k, v in obs.items()}
        items["prefix"], items["chunk"] = np.asarray(prefix, np.float32), np.asarray(chunk, np.float32)
        n = len(items["chunk"])
        if not self.data:
            self.data = {k: torch.zeros((self.capacity, *v.shape[1:]), dtype=torch.from_numpy(v).dtype)
                         for k, v in items.items()}
        idx = torch.as_tensor((self.cursor + np.arange(n)) % self.capacity)
        for k, v in items.items():
            self.data[k][idx] = torch.from_numpy(np.ascontiguousarray(v))
        self.cursor = (self.cursor + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict:
        if self.size == 0:
            raise RuntimeError("DistillBuffer is empty")
        idx = torch.as_tensor(rng.integers(0, self.size, size=batch_size))
        obs = {k[4:]: v[idx] for k, v in self.data.items() if k.startswith("obs.")}
        return {"obs": obs, "prefix": self.data["prefix"][idx], "chunk": self.data["chunk"][idx]}

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """``(tensors, json)`` for a checkpoint (only the filled rows are saved)."""
        n = self.size
        return {k: v[:n].clone() for k, v in self.data.items()}, {"size": n, "cursor": self.cursor}

    def load_state(self, tensors: Mapping[str, torch.Tensor], meta: Mapping) -> None:
        self.size, self.cursor = int(meta["size"]), int(meta["cursor"])
        self.data = {}
        for k, v in tensors.items():
            full = torch.zeros((self.capacity, *v.shape[1:]), dtype=v.dtype)
            full[: self.size] = v
            self.data[k] = full


class _MixedController:
    """The ``act_fn`` of a distillation rollout: labels with the teacher, executes a mix.

    Per decision: the teacher's chunk on clean observations, the student's chunk on noisy
    observations, then per env a Bernoulli(p_teacher) choice of which one runs. The
    ``(noisy history, prefix, teacher chunk)`` of active envs is recorded.
    """

    def __init__(self, policy, teacher, config: DistillConfig, p_teacher: float, rng: np.random.Generator) -> None:
        self.policy, self.teacher, self.config = policy, teacher, config
        self.p_teacher, self.rng = p_teacher, rng
        self.noisy_keys = [k for k, s in policy.config.observation_spec.items() if s.kind == "lowdim"]
        self.offsets: dict[str, np.ndarray] = {}
        self.records: list[tuple[dict, np.ndarray, np.ndarray]] = []
        self.teacher_fraction: list[float] = []

    def reset(self, obs: Mapping[str, np.ndarray]) -> None:
        # A new batch of episodes: new per-episode calibration offsets.
        self.offsets = {
            k: self.rng.normal(0.0, self.config.obs_offset_std, size=np.shape(obs[k])).astype(np.float32)
            for k in self.noisy_keys
        }
        if callable(getattr(self.teacher, "reset", None)):
            self.teacher.reset(obs)

    def student_view(self, obs_history: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        noisy = dict(obs_history)
        for k in self.noisy_keys:
            x = obs_history[k]  # [n, T, d]
            noise = self.rng.normal(0.0, self.config.obs_noise_std, size=x.shape).astype(np.float32)
            noisy[k] = (x + self.offsets[k][:, None] + noise).astype(np.float32)
        return noisy

    def __call__(self, obs_history: Mapping[str, np.ndarray], prefix: np.ndarray) -> np.ndarray:
        teacher_chunk = np.asarray(self.teacher(obs_history, prefix), dtype=np.float32)  # [n, H, A]
        student_obs = self.student_view(obs_history)
        student_chunk, _ = self.policy.act_batch(
            student_obs, prefix, num_samples=self.config.student_num_samples, sigma=self.config.student_sigma
        )
        use_teacher = self.rng.random(len(prefix)) < self.p_teacher  # [n]
        self.records.append((student_obs, np.asarray(prefix, np.float32), teacher_chunk))
        self.teacher_fraction.append(float(use_teacher.mean()))
        return np.where(use_teacher[:, None, None], teacher_chunk, student_chunk)


class Distillation:
    """Student NLL updates on teacher labels (the objective of Stage I); forward passes in
    ``precision`` (``"fp32"`` or ``"bf16"``, :mod:`sernf_policy.mixed_precision`)."""

    def __init__(self, policy, config: DistillConfig, precision: str = "fp32") -> None:
        self.policy = policy
        self.config = config
        self.precision = check_precision(precision)
        self.params = [p for p in policy.actor_parameters() if p.requires_grad]
        self.optimizer = make_adamw(self.params, config.lr, config.weight_decay)
        policy.flow.set_dropout(config.dropout)
        self.buffer = DistillBuffer(config.buffer_capacity)
        self.rng = np.random.default_rng(config.seed)

    def update(self, batch: dict) -> dict[str, float]:
        policy = self.policy
        policy.train()
        norm = policy.action_normalizer
        with autocast(self.precision, policy.device):
            log_prob = policy.log_prob(batch["obs"], norm.normalize(batch["prefix"]), norm.normalize(batch["chunk"]),
                                       add_noise=True)  # [B]
            loss = -log_prob.mean()
        grad_norm = gradient_step(self.optimizer, loss)  # one process (distillation collects episodes)
        return {"distill/nll": loss.item(), "distill/grad_norm": grad_norm}

    def collect(self, env, teacher, iteration: int) -> dict[str, float]:
        """One round of mixed-control episodes; labelled decisions go into the buffer."""
        cfg, pcfg = self.config, self.policy.config
        controller = _MixedController(self.policy, teacher, cfg, cfg.p_teacher(iteration), self.rng)
        result = rollout_chunked(
            env, controller, pcfg.obs_history, pcfg.prefix_len, pcfg.horizon, cfg.episodes_per_iteration,
            seed=int(np.random.SeedSequence([cfg.seed, iteration]).generate_state(1)[0]), record=False,
        )
        for obs, prefix, chunk in controller.records:
            self.buffer.add(obs, prefix, chunk)
        return {
            "distill/p_teacher": controller.p_teacher,
            "distill/teacher_fraction": float(np.mean(controller.teacher_fraction)),
            "distill/success": result.success_rate,
            "distill/buffer_size": float(self.buffer.size),
        }

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]


def train_distill(
    learner: Distillation,
    env,
    teacher_factory: Callable[[int], Callable],
    *,
    start_iteration: int = 0,
    logger: MetricsLogger | None = None,
    global_step: int = 0,
    on_iteration: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Run ``config.iterations`` rounds of collect (mixed control) → label → NLL updates."""
    cfg = learner.config
    metrics: dict[str, float] = {}
    for it in range(start_iteration, cfg.iterations):
        teacher = teacher_factory(int(np.random.SeedSequence([cfg.seed, it, 1]).generate_state(1)[0]))
        collected = learner.collect(env, teacher, it)
        nll = []
        for _ in range(cfg.updates_per_iteration):
            metrics = learner.update(learner.buffer.sample(cfg.batch_size, learner.rng))
            nll.append(metrics["distill/nll"])
        metrics.update(collected)
        if nll:
            metrics["distill/nll"] = float(np.mean(nll))
        if logger is not None:
            logger.log(global_step + (it + 1) * cfg.updates_per_iteration, metrics, stage_step=it + 1)
        if on_iteration is not None:
            on_iteration(it + 1)
    return metrics
