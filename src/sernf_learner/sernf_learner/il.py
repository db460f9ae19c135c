"""Stage I: imitation learning of the flow actor on successful demonstrations.

Paper §IV-D a (eq. 8), Alg. 3 Stage I: minimise ``-E[log π_θ(a*_{t:t+H} | o_t, prefix)]`` over
chunks cut from *successful* episodes only (``success_only`` sampler). The exact flow
likelihood comes from :meth:`Policy.log_prob`; with ``add_noise=True`` the normalised data
chunks are perturbed by ``N(0, σ_noise²)`` first (§IV-B, σ_noise = 0.05 sim / 0.01 real, set in
the policy config), which the paper calls crucial for stable action modelling.

Only actor parameters are optimised (the critic, with its own encoder, stays bit-identical:
tested). Optimiser: AdamW, lr 1e-4, weight decay 1e-4, default betas/eps (G2). Dropout of the
actor: 0.5 in simulation, 0.2 on the real robot (G2).

The imitation-only baselines of Table I train here too, with their own losses on the same
sampler, encoders and optimiser (appendix G3: "the dataset, optimizer settings, data
augmentation strategies, and image encoders are kept identical"): :func:`imitation_loss`
dispatches on the actor kind — the flow-matching actor regresses the linear path's velocity,
ACT minimises L1 reconstruction + KL on its own ``chunk_len``-action chunks (the trainer's IL
sampler cuts chunks of ``PolicyConfig.imitation_horizon`` actions).

Departure from the paper: the chunk mask is ignored — chunks running past an episode's end are
padded with its last action (docs/architecture.md), which is what a chunked policy should
predict there anyway (hold still), so the padded chunk is a valid target.

Departure for a mixture of flows (``policy.flow_components`` M >= 2, not in the paper): each
demonstration is imitated by one flow, chosen by :class:`FlowAssignment` (hard EM over whole
demonstrations), instead of maximising the mixture's likelihood chunk by chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sernf_learner.distributed import gradient_step, make_adamw, world_size
from sernf_learner.metrics import MetricsLogger, RateMeter
from sernf_policy.mixed_precision import autocast, check_precision


@dataclass
class ILConfig:
    """Stage I hyperparameters (defaults: paper G2, simulation)."""

    steps: int = 30_000
    """Gradient updates (G2: 30k for the simulated tasks, 200k for scissors)."""
    batch_size: int = 256
    """Transitions per update (G2: 256 for scissors)."""
    lr: float = 1e-4
    """AdamW learning rate (G2: 1e-4 during policy initialisation)."""
    weight_decay: float = 1e-4
    """AdamW weight decay (G2)."""
    dropout: float = 0.5
    """Actor dropout during this stage (G2: 0.5 simulation, 0.2 real)."""
    grad_clip_norm: float = 0.0
    """Clip the actor gradient to this global norm; 0 disables (the paper does not clip)."""
    success_only: bool = True
    """Train on successful episodes only (§IV-D a: "a filtered dataset of successful
    trajectories"). False = behaviour cloning on everything."""

    def __post_init__(self) -> None:
        check_int(self, "steps", allow_zero=True)
        check_int(self, "batch_size")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"ILConfig.lr must be > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"ILConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ILConfig.dropout must be in [0, 1), got {self.dropout}")
        if not (math.isfinite(self.grad_clip_norm) and self.grad_clip_norm >= 0):
            raise ValueError(f"ILConfig.grad_clip_norm must be >= 0, got {self.grad_clip_norm}")
        if not isinstance(self.success_only, bool):
            raise ValueError(f"ILConfig.success_only must be a bool, got {self.success_only!r}")


#: The share of a demonstration's running score per flow that one batch's chunks of it replace.
ASSIGNMENT_RATE = 0.1


class FlowAssignment:
    """Which flow of a mixture of M flows imitates each demonstration.

    Why whole demonstrations: the M flows share their weights and differ only in a context
    token. Trained on the mixture's likelihood, or each chunk on the flow that explains it
    best, every flow learned both strategies of a two-strategy task, in a toy with two
    sign-symmetric modes (6 of 6 runs) as on the hand benchmark's mixed demonstrations. A
    demonstration follows one strategy from start to end, so assigning it as a whole (as
    k-means assigns points to centres) lets each flow specialise on the strategy its
    demonstrations share; in the toy the assignment then matched the strategies exactly and
    each flow sampled one of them (docs/results.md, hand task).

    The evidence is the log-likelihood under each flow of the demonstration's chunks that start
    within its first chunk (decision steps ``t < H``): that is where a demonstration chooses its
    strategy and the context does not yet show which. Later chunks are explained by their
    context whichever the strategy, and averaging them in drowned the choice: on the hand
    benchmark the two strategies' first chunks differed by 6 nats in their preference between
    the flows, later chunks by 0.1-0.3 (with a spread of 0.7-2.5), and the assignment that used
    every chunk ignored the strategies. Each demonstration's score per flow is a running mean
    of that evidence (:data:`ASSIGNMENT_RATE` per batch it appears in); it is imitated by the
    flow whose score, relative to the mean score of all demonstrations seen, is highest (so a
    flow that fits everything a little better does not take every demonstration, as k-means
    compares distances, not likelihoods). Scores start as small random values (a random
    assignment), which training then sorts. The mixture weights learn to predict the
    assignment from the context, so the exact mixture likelihood stays what the policy reports.

    What it does not do (measured, docs/results.md): on the hand benchmark's demonstrations the
    assignment settled on a split that is not the strategies' (box 9 / 23, cylinder 18 / 21
    demonstrations on the two flows): the flows' difference in the first chunks' likelihood
    varies between demonstrations (standard deviation ~20 nats) more than between the two
    strategies (~12 nats), and imitation did not improve. Nor did it with each demonstration put
    on the flow of its true strategy (an oracle run: the flows then split the strategies, and
    imitation scored 0.140 against one flow's 0.160), so on that task the strategies are not
    what limits imitation. It does what it should where the strategy dominates the chunks (the
    toy of ``test_flow_assignment.py``).
    """

    def __init__(self, components: int, seed: int, horizon: int) -> None:
        if components < 2:
            raise ValueError(f"FlowAssignment needs >= 2 flows, got {components}")
        if horizon < 1:
            raise ValueError(f"FlowAssignment needs a horizon >= 1, got {horizon}")
        self.components = components
        self.horizon = horizon
        self.scores = torch.empty(0, components)  # [E, M], grown as episodes appear
        self.seen = torch.zeros(0, dtype=torch.bool)  # [E]: episodes a batch has held
        self._generator = torch.Generator().manual_seed(seed)

    def _grow(self, size: int) -> None:
        if size > self.scores.shape[0]:
            start = 0.01 * torch.randn(size - self.scores.shape[0], self.components, generator=self._generator)
            self.scores = torch.cat([self.scores, start])
            self.seen = torch.cat([self.seen, torch.zeros(start.shape[0], dtype=torch.bool)])

    def observe(self, episode: torch.Tensor, step: torch.Tensor, per_flow: torch.Tensor) -> torch.Tensor:
        """Update the scores of the batch's episodes ``[B]`` from the log-likelihoods ``[B, M]``
        under each flow of their chunks at decision steps ``step [B]`` (those with ``step < H``
        count); returns the flow ``[B]`` each chunk is imitated by."""
        episode, step = episode.to("cpu", torch.int64), step.to("cpu", torch.int64)
        if episode.ndim != 1 or step.shape != episode.shape or per_flow.shape != (episode.shape[0], self.components):
            raise ValueError(f"FlowAssignment.observe: episode [B], step [B] and per-flow log-likelihoods "
                             f"[B, {self.components}] expected, got {tuple(episode.shape)}, {tuple(step.shape)} "
                             f"and {tuple(per_flow.shape)}")
        if episode.numel() and (int(episode.min()) < 0 or int(step.min()) < 0):
            raise ValueError("FlowAssignment.observe: negative episode index or step")
        self._grow(int(episode.max()) + 1 if episode.numel() else 0)
        first = step < self.horizon
        values = per_flow.detach().to("cpu", torch.float32)[first]
        centred = values - values.mean(dim=1, keepdim=True)
        sums = torch.zeros_like(self.scores).index_add_(0, episode[first], centred)
        counts = torch.zeros(self.scores.shape[0]).index_add_(0, episode[first], torch.ones(values.shape[0]))
        seen = counts > 0
        self.scores[seen] = (1 - ASSIGNMENT_RATE) * self.scores[seen] + ASSIGNMENT_RATE * sums[seen] / counts[seen, None]
        self.seen |= seen
        return self.assigned()[episode]

    def assigned(self) -> torch.Tensor:
        """``[E]``: the flow each demonstration is imitated by (score relative to the mean score
        of the demonstrations seen)."""
        mean = self.scores[self.seen].mean(dim=0) if self.seen.any() else torch.zeros(self.components)
        return (self.scores - mean).argmax(dim=1)

    def shares(self) -> torch.Tensor:
        """``[M]``: the fraction of the demonstrations seen so far that each flow imitates."""
        if not self.seen.any():
            return torch.zeros(self.components)
        chosen = self.assigned()[self.seen]
        return torch.bincount(chosen, minlength=self.components).float() / chosen.shape[0]

    def state_dict(self) -> dict:
        return {"scores": self.scores.clone(), "seen": self.seen.clone(), "generator": self._generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        scores, seen = state["scores"], state["seen"]
        if scores.ndim != 2 or scores.shape[1] != self.components or seen.shape != scores.shape[:1]:
            raise ValueError(f"FlowAssignment state has scores {tuple(scores.shape)} and seen {tuple(seen.shape)}, "
                             f"expected [E, {self.components}] and [E]")
        self.scores = scores.clone().float()
        self.seen = seen.clone().bool()
        self._generator.set_state(state["generator"])


class ImitationLearning:
    """One NLL update of the actor per call of :meth:`update`.

    ``precision``: ``"fp32"`` or ``"bf16"`` (the forward pass and the loss under bf16 autocast;
    :mod:`sernf_policy.mixed_precision`)."""

    def __init__(self, policy, config: ILConfig, precision: str = "fp32") -> None:
        self.policy = policy
        self.config = config
        self.precision = check_precision(precision)
        self.params = [p for p in policy.actor_parameters() if p.requires_grad]
        self.optimizer = make_adamw(self.params, config.lr, config.weight_decay)
        policy.flow.set_dropout(config.dropout)
        components = policy.config.flow.components if policy.config.actor == "flow" else 1
        self.assignment = None
        if components > 1 and world_size() > 1:
            # Each process would keep its own assignment from its own batches, and the averaged
            # gradient would train a demonstration's chunks on different flows.
            raise ValueError("imitating a mixture of flows (policy.flow_components > 1) runs in one process; "
                             f"this run has {world_size()}")
        if components > 1:
            self.assignment = FlowAssignment(components, policy.config.flow.seed, policy.config.flow.horizon)

    def update(self, batch: dict) -> dict[str, float]:
        self.policy.train()
        with autocast(self.precision, self.policy.device):
            loss, metrics = imitation_loss(self.policy, batch, self.assignment)
        grad_norm = gradient_step(self.optimizer, loss, self.config.grad_clip_norm)
        return {**metrics, "il/grad_norm": grad_norm}

    def state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict()}
        if self.assignment is not None:
            state["flow_assignment"] = self.assignment.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.assignment is not None:
            if "flow_assignment" not in state:
                raise ValueError("IL state lacks the mixture of flows' per-demonstration assignment")
            self.assignment.load_state_dict(state["flow_assignment"])


def imitation_loss(
    policy, batch: dict, assignment: FlowAssignment | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Stage I loss of ``policy``'s actor on a sampler batch, and its metrics.

    * ``flow`` / ``gaussian``: the NLL of eq. (8), training chunks perturbed by σ_noise; for a
      mixture of flows (with its ``assignment``) ``-(log pi_m(c) + log p(a | c, m))`` with m the
      flow that imitates the chunk's demonstration, the exact mixture NLL in the metrics;
    * ``flow_matching``: the conditional flow-matching loss on the same context (observation +
      prefix tokens);
    * ``act``: ACT's L1 + KL loss of its ``chunk_len``-action chunk, from the observation tokens.
    """
    kind = policy.config.actor
    norm = policy.action_normalizer
    prefix = norm.normalize(batch["prefix"])  # [B, P, A]
    chunk = norm.normalize(batch["chunk"])  # [B, H, A] (ACT: [B, K, A])
    if chunk.shape[-2] != policy.config.imitation_horizon:
        raise ValueError(f"IL batch chunks have {chunk.shape[-2]} actions; actor {kind!r} imitates "
                         f"{policy.config.imitation_horizon} (sample with that chunk length)")
    if kind == "flow" and assignment is not None:
        if "episode" not in batch or "step" not in batch:
            raise ValueError("imitating a mixture of flows needs the batch's 'episode' and 'step' indices "
                             "(TransitionSampler batches)")
        log_w, per_flow = policy.flow.component_log_likelihoods(
            chunk, policy.actor_context(batch["obs"], prefix), add_noise=True)
        flow = assignment.observe(batch["episode"], batch["step"], per_flow).to(per_flow.device)[:, None]
        loss = -(log_w.gather(1, flow) + per_flow.gather(1, flow)).mean()
        nll = -torch.logsumexp(log_w + per_flow, dim=1).mean().item()
        h, a = chunk.shape[-2:]
        return loss, {"il/nll": nll, "il/nll_per_dim": nll / (h * a), "il/assigned_nll": loss.item(),
                      "il/largest_flow_share": float(assignment.shares().max())}
    if kind in ("flow", "gaussian"):
        loss = -policy.log_prob(batch["obs"], prefix, chunk, add_noise=True).mean()
        h, a = chunk.shape[-2:]
        return loss, {"il/nll": loss.item(), "il/nll_per_dim": loss.item() / (h * a)}
    if kind == "flow_matching":
        loss = policy.flow.flow_matching_loss(chunk, policy.actor_context(batch["obs"], prefix))
        return loss, {"il/loss": loss.item(), "il/fm_mse": loss.item()}
    if kind == "act":
        context = policy.actor_context(batch["obs"], prefix)  # observation tokens only
        loss, parts = policy.flow.loss(chunk, context, policy.state_tokens(context))
        return loss, {"il/loss": loss.item(), **parts}
    raise ValueError(f"no imitation loss for actor kind {kind!r}")


def train_il(
    learner: ImitationLearning,
    sampler,
    *,
    start_step: int = 0,
    logger: MetricsLogger | None = None,
    global_step: int = 0,
    log_every: int = 1,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Run ``learner.config.steps`` updates (from ``start_step``) on batches of ``sampler``.

    ``on_step(step)`` is called after each update with the number of updates done (the
    trainer checkpoints there). Returns the last metrics.
    """
    metrics: dict[str, float] = {}
    rate = RateMeter()
    for step in range(start_step, learner.config.steps):
        metrics = learner.update(sampler.sample())
        metrics["time/updates_per_s"] = rate.tick()
        if logger is not None and (step + 1) % log_every == 0:
            logger.log(global_step + step + 1, metrics, stage_step=step + 1)
        if on_step is not None:
            on_step(step + 1)
    return metrics


def check_int(cfg: object, name: str, allow_zero: bool = False) -> None:
    """Config validation: ``cfg.<name>`` must be an int >= 1 (>= 0 with ``allow_zero``)."""
    value = getattr(cfg, name)
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{type(cfg).__name__}.{name} must be an int >= {low}, got {value!r}")
