"""The SERNF policy: everything inference needs (docs/design.md §2 "policy vs algorithm").

:class:`Policy` holds

* the **actor**: an observation encoder, a :class:`PrefixTokenizer` and the chunk flow
  (:mod:`flow`). Prefix actions (queued, not yet executed, Fig. 7) enter the flow as extra
  context tokens appended after the observation tokens. ``PolicyConfig.actor = "gaussian"``
  swaps the flow for a tanh-squashed diagonal Gaussian over the chunk (:mod:`gaussian_actor`,
  an ablation) with the same interface; the module keeps the attribute name ``flow``. Two
  imitation-only baselines of the paper's Table I take the same place: ``"flow_matching"``
  (:mod:`flow_matching_actor`, a DiT flow-matching policy on the same context) and ``"act"``
  (:mod:`act_actor`, ACT's CVAE, which sees the observation tokens only and predicts its own
  ``chunk_len`` actions). Neither has an exact likelihood: :meth:`Policy.log_prob` and "most
  likely" selection refuse them, and they act by one sample (``selection="single"``);
* optionally the **critic**: its *own* observation encoder plus the chunk-critic ensemble
  (:mod:`critic`). It scores the first ``critic.horizon`` actions of a chunk: all ``H`` of
  them for the paper's chunked critic, only the first one for the per-step ablation
  (:meth:`Policy.critic_actions`). Actor and critic parameters are disjoint, which the
  training stages rely on (stage II trains the critic alone, stage III's actor loss must not
  move the critic);
* the **normalizers** (buffers only): actions (and prefix) to ``[-1, 1]`` and each low-dim
  observation key to ``[-1, 1]``, fitted on the dataset and saved in the checkpoint.

Public methods take *raw* observations (dict of ``[B, T, ...]`` tensors; images uint8) and
*normalised* actions (``*_norm``), except :meth:`Policy.act_batch` / :meth:`Policy.act`, which
take raw prefixes and return raw chunks for the robot.

Action selection (Alg. 2): sample N chunks, score them by the minimum over the critics and
take the argmax; without a critic (or with ``selection="most_likely"``) take the candidate the
flow finds most likely (§IV-D a); ``"single"`` draws one sample.

Dimension names: ``B`` batch, ``N`` candidates, ``T`` observation steps, ``P`` prefix actions,
``H`` chunk length, ``A`` action dim, ``L`` observation tokens, ``D`` token width.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from sernf_data.spec import CACHED_FEATURES_SUFFIX, ObsKeySpec, parse_observation_spec

from .act_actor import ACTActorConfig, ACTChunkActor
from .checkpoint import CheckpointError, load_state_strict, read_checkpoint, write_checkpoint
from .config_io import build_dataclass
from .critic import ChunkCritic, ChunkCriticConfig
from .encoders import EncoderConfig, ObservationEncoder
from .flow import ChunkFlow, ChunkFlowConfig
from .flow_matching_actor import FlowMatchingActorConfig, FlowMatchingChunkActor
from .gaussian_actor import GaussianActorConfig, GaussianChunkActor
from .normalizer import Normalizer

__all__ = ["Policy", "PolicyConfig", "PrefixTokenizer"]


def _to_host(chosen: Tensor, log_prob: Tensor, q: Tensor | None, index: Tensor,
             fallback: Tensor) -> tuple[np.ndarray, dict[str, np.ndarray | None]]:
    """:meth:`Policy._choose`'s tensors as :meth:`Policy.act_batch` returns them."""
    info: dict[str, np.ndarray | None] = {
        "log_prob": log_prob.float().cpu().numpy(),
        "q": None if q is None else q.float().cpu().numpy(),
        "index": index.cpu().numpy().astype(np.int64),
        "fallback": fallback.cpu().numpy(),
    }
    return chosen.float().cpu().numpy(), info

CHECKPOINT_KIND = "sernf_policy"
Selection = Literal["best_of_n", "most_likely", "single"]
ActorKind = Literal["flow", "gaussian", "flow_matching", "act"]
ACTOR_KINDS = ("flow", "gaussian", "flow_matching", "act")
#: Actors without an exact likelihood (imitation-only baselines): they act by one sample.
LIKELIHOOD_FREE_ACTORS = ("flow_matching", "act")


def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"PolicyConfig.{name} must be an int >= {minimum}, got {value!r}")
    return value


@dataclass
class PolicyConfig:
    """Everything needed to rebuild a :class:`Policy` (saved as ``config.json``)."""

    #: Observation keys -> ObsKeySpec (or {"kind", "shape"} dicts; normalised on init).
    observation_spec: dict[str, ObsKeySpec]
    #: A: action dimensions.
    action_dim: int
    #: T: observation steps the policy sees (scissors 1, cube 4).
    obs_history: int
    #: P: prefix actions (queued, not yet executed; scissors 3, cube 2). May be 0.
    prefix_len: int
    #: H: actions per predicted chunk (scissors 10, cube 6).
    horizon: int
    #: The flow actor; its action_dim / horizon / context_dim must equal A / H / token_dim.
    #: Set exactly when ``actor == "flow"`` (each actor kind has its own sub-config field).
    flow: ChunkFlowConfig | None
    #: The critic ensemble, or None for an imitation-only policy. Its horizon is the number of
    #: leading chunk actions it scores: H (the paper's chunked critic) or 1 (ablation: a
    #: per-step critic); see :meth:`Policy.critic_actions`.
    critic: ChunkCriticConfig | None = None
    #: Observation encoder settings (used for the actor's and the critic's own encoder).
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    #: N: candidate chunks sampled per decision (paper: 128 sim, 64 real, 24 online RL).
    num_samples: int = 128
    #: sigma_sample of the latent at inference (paper: 0.7).
    sigma_sample: float = 0.7
    #: "best_of_n" (critic argmax; falls back to most likely without a critic),
    #: "most_likely" (flow log-prob argmax) or "single" (one sample).
    selection: Selection = "best_of_n"
    #: best_of_n scores only the k candidates the actor finds most likely (0: all N). The critic
    #: then ranks chunks the data supports instead of picking one it overvalues off the data's
    #: support (its errors are largest exactly there, and an argmax seeks them out).
    selection_top_k: int = 0
    #: > 0: when the M critics' values of the chosen chunk differ by more than this (max − min,
    #: value units), take the most likely candidate instead: the critics do not agree that it
    #: is better. 0 disables.
    selection_max_disagreement: float = 0.0
    #: Actor family: "flow" (the paper's normalizing flow, §IV-B) or "gaussian" (ablation:
    #: tanh-squashed diagonal Gaussian over the chunk, :mod:`gaussian_actor`).
    actor: ActorKind = "flow"
    #: The Gaussian actor; set exactly when ``actor == "gaussian"`` (then ``flow`` is None).
    gaussian: GaussianActorConfig | None = None
    #: The flow-matching baseline; set exactly when ``actor == "flow_matching"``.
    flow_matching: FlowMatchingActorConfig | None = None
    #: The ACT baseline; set exactly when ``actor == "act"``.
    act: ACTActorConfig | None = None

    def __post_init__(self) -> None:
        self.observation_spec = parse_observation_spec(self.observation_spec)
        _positive_int(self.action_dim, "action_dim")
        _positive_int(self.obs_history, "obs_history")
        _positive_int(self.prefix_len, "prefix_len", minimum=0)
        _positive_int(self.horizon, "horizon")
        _positive_int(self.num_samples, "num_samples")
        self.sigma_sample = float(self.sigma_sample)
        if not (math.isfinite(self.sigma_sample) and self.sigma_sample > 0):
            raise ValueError(f"PolicyConfig.sigma_sample must be > 0, got {self.sigma_sample}")
        if self.selection not in ("best_of_n", "most_likely", "single"):
            raise ValueError(f"PolicyConfig.selection must be best_of_n/most_likely/single, got {self.selection!r}")
        _positive_int(self.selection_top_k, "selection_top_k", minimum=0)
        self.selection_max_disagreement = float(self.selection_max_disagreement)
        if not (math.isfinite(self.selection_max_disagreement) and self.selection_max_disagreement >= 0):
            raise ValueError(f"PolicyConfig.selection_max_disagreement must be >= 0, got {self.selection_max_disagreement}")
        if not isinstance(self.encoder, EncoderConfig):
            raise ValueError("PolicyConfig.encoder must be an EncoderConfig")
        if self.actor not in ACTOR_KINDS:
            raise ValueError(f"PolicyConfig.actor must be one of {ACTOR_KINDS}, got {self.actor!r}")
        # Exactly the chosen actor's sub-config is set (the field is named like the actor kind).
        actor_types = {"flow": ChunkFlowConfig, "gaussian": GaussianActorConfig,
                       "flow_matching": FlowMatchingActorConfig, "act": ACTActorConfig}
        for kind, cls in actor_types.items():
            value = getattr(self, kind)
            if kind == self.actor and not isinstance(value, cls):
                raise ValueError(f"PolicyConfig.{kind} must be a {cls.__name__} with actor={kind!r}")
            if kind != self.actor and value is not None:
                raise ValueError(f"PolicyConfig.{kind} must be None with actor={self.actor!r}")
        actor_cfg, actor_name = getattr(self, self.actor), self.actor
        if self.actor in LIKELIHOOD_FREE_ACTORS:
            if self.selection != "single":
                raise ValueError(f'PolicyConfig.selection must be "single" with actor={self.actor!r}: it has no '
                                 "likelihood to pick the most likely candidate by, and acts by one sample")
            if self.critic is not None:
                raise ValueError(f"PolicyConfig.critic must be None with actor={self.actor!r} (an imitation-only "
                                 "baseline: the RL stages need the actor's log-likelihood)")
        d = self.encoder.token_dim
        got = (actor_cfg.action_dim, actor_cfg.horizon, actor_cfg.context_dim)
        if got != (self.action_dim, self.horizon, d):
            raise ValueError(
                f"PolicyConfig.{actor_name} (action_dim, horizon, context_dim) = {got} must equal "
                f"(action_dim, horizon, encoder.token_dim) = {(self.action_dim, self.horizon, d)}"
            )
        if self.critic is not None:
            if not isinstance(self.critic, ChunkCriticConfig):
                raise ValueError("PolicyConfig.critic must be a ChunkCriticConfig or None")
            c = self.critic
            got = (c.action_dim, c.prefix_len, c.obs_dim)
            want = (self.action_dim, self.prefix_len, d)
            if got != want:
                raise ValueError(
                    f"PolicyConfig.critic (action_dim, prefix_len, obs_dim) = {got} must "
                    f"equal (action_dim, prefix_len, encoder.token_dim) = {want}"
                )
            if c.horizon not in (1, self.horizon):
                raise ValueError(
                    f"PolicyConfig.critic.horizon must be horizon={self.horizon} (chunked critic) or 1 "
                    f"(per-step critic of the chunk's first action), got {c.horizon}"
                )

    @property
    def imitation_horizon(self) -> int:
        """Actions per imitation target chunk: ACT's own ``chunk_len``, else H."""
        return self.act.chunk_len if self.act is not None else self.horizon

    @property
    def has_likelihood(self) -> bool:
        """Whether the actor has an exact ``log pi`` (False for the imitation-only baselines)."""
        return self.actor not in LIKELIHOOD_FREE_ACTORS

    @property
    def critic_horizon(self) -> int:
        """Leading chunk actions the critic scores and its TD step (H = the chunked critic)."""
        return self.horizon if self.critic is None else self.critic.horizon

    @classmethod
    def create(
        cls,
        observation_spec: Mapping[str, Any],
        action_dim: int,
        obs_history: int,
        prefix_len: int,
        horizon: int,
        *,
        encoder: EncoderConfig | None = None,
        flow: Mapping[str, Any] | None = None,
        critic: bool | Mapping[str, Any] = True,
        actor: ActorKind = "flow",
        gaussian: Mapping[str, Any] | None = None,
        flow_matching: Mapping[str, Any] | None = None,
        act: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> PolicyConfig:
        """Build a consistent config: ``flow`` / ``gaussian`` / ``flow_matching`` / ``act`` /
        ``critic`` are keyword overrides of the sub-configs (their shared dimensions are filled
        in; the critic's ``horizon`` may be overridden for the per-step ablation);
        ``critic=False`` gives no critic; ``actor`` picks which actor sub-config is built."""
        encoder = encoder or EncoderConfig()
        d = encoder.token_dim
        flow_cfg = gauss_cfg = fm_cfg = act_cfg = None
        dims = dict(action_dim=action_dim, horizon=horizon, context_dim=d)
        if actor == "gaussian":
            gauss_cfg = GaussianActorConfig(**dims, **dict(gaussian or {}))
        elif actor == "flow_matching":
            fm_cfg = FlowMatchingActorConfig(**dims, **dict(flow_matching or {}))
        elif actor == "act":
            act_cfg = ACTActorConfig(**dims, **dict(act or {}))
        else:
            flow_cfg = ChunkFlowConfig(**dims, **dict(flow or {}))
        if actor in LIKELIHOOD_FREE_ACTORS:  # imitation-only: one sample, no critic
            kwargs.setdefault("selection", "single")
            critic = False
        critic_cfg = None
        if critic is not False:
            overrides = {"horizon": horizon, **({} if critic is True else dict(critic))}
            critic_cfg = ChunkCriticConfig(action_dim=action_dim, prefix_len=prefix_len, obs_dim=d, **overrides)
        return cls(
            observation_spec=dict(observation_spec), action_dim=action_dim, obs_history=obs_history,
            prefix_len=prefix_len, horizon=horizon, flow=flow_cfg, critic=critic_cfg, encoder=encoder,
            actor=actor, gaussian=gauss_cfg, flow_matching=fm_cfg, act=act_cfg, **kwargs,
        )

    @classmethod
    def from_dict(cls, data: Any) -> PolicyConfig:
        """Rebuild from the plain dict written by ``config_io.to_jsonable`` (explicit classes)."""

        def spec(value: Any) -> dict[str, ObsKeySpec]:
            if not isinstance(value, Mapping):
                raise ValueError("observation_spec must be a JSON object")
            return {k: ObsKeySpec.from_dict(v) for k, v in value.items()}

        return build_dataclass(
            cls, data,
            {
                "observation_spec": spec,
                "flow": ChunkFlowConfig.from_dict,
                "gaussian": GaussianActorConfig.from_dict,
                "flow_matching": FlowMatchingActorConfig.from_dict,
                "act": ACTActorConfig.from_dict,
                "critic": ChunkCriticConfig.from_dict,
                "encoder": EncoderConfig.from_dict,
            },
        )


class PrefixTokenizer(nn.Module):
    """Normalised prefix ``[B, P, A]`` -> ``P`` context tokens ``[B, P, D]``.

    ``Linear(A, D)`` plus a learned embedding per prefix position, so the flow knows which
    queued action (Fig. 7: ``a_t .. a_{t+P-1}``) each token is.
    """

    def __init__(self, action_dim: int, prefix_len: int, token_dim: int) -> None:
        super().__init__()
        self.action_dim, self.prefix_len = action_dim, prefix_len
        self.proj = nn.Linear(action_dim, token_dim)
        self.pos = nn.Parameter(torch.randn(prefix_len, token_dim) * 0.02)  # [P, D]

    def forward(self, prefix_norm: Tensor) -> Tensor:
        if prefix_norm.ndim != 3 or tuple(prefix_norm.shape[1:]) != (self.prefix_len, self.action_dim):
            raise ValueError(
                f"prefix must be [B, {self.prefix_len}, {self.action_dim}], got {tuple(prefix_norm.shape)}"
            )
        return self.proj(prefix_norm.to(self.pos.dtype)) + self.pos


class Policy(nn.Module):
    """Flow (or Gaussian) actor + optional chunk critic + normalizers (see module docstring)."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        if not isinstance(config, PolicyConfig):
            raise ValueError(f"Policy needs a PolicyConfig, got {type(config).__name__}")
        self.config = config
        spec, t, d = config.observation_spec, config.obs_history, config.encoder.token_dim
        self.action_normalizer = Normalizer(config.action_dim)
        self.obs_normalizers = nn.ModuleDict(
            {k: Normalizer(s.shape[0]) for k, s in spec.items() if s.kind == "lowdim"}
        )
        self.actor_encoder = ObservationEncoder(config.encoder, spec, t)
        self.prefix_tokenizer = PrefixTokenizer(config.action_dim, config.prefix_len, d)
        # The actor keeps the attribute name "flow" whatever its family: the stages call
        # policy.flow.{log_prob, sample, set_dropout} and flow checkpoints name it "flow.*".
        self.flow: ChunkFlow | GaussianChunkActor | FlowMatchingChunkActor | ACTChunkActor
        if config.actor == "gaussian":
            self.flow = GaussianChunkActor(config.gaussian)
        elif config.actor == "flow_matching":
            self.flow = FlowMatchingChunkActor(config.flow_matching)
        elif config.actor == "act":
            self.flow = ACTChunkActor(config.act)
        else:
            self.flow = ChunkFlow(config.flow)
        self.critic_encoder: ObservationEncoder | None = None
        self.critic: ChunkCritic | None = None
        if config.critic is not None:
            self.critic_encoder = ObservationEncoder(config.encoder, spec, t)
            self.critic = ChunkCritic(config.critic)
        #: :meth:`capture_cuda_graph`'s captured act_batch (None: act eagerly).
        self._acting_graph: Any = None

    # -- parameter groups -------------------------------------------------------------------
    def actor_parameters(self) -> Iterator[nn.Parameter]:
        """Actor encoder, prefix tokenizer and flow (includes frozen ones; filter requires_grad)."""
        return itertools.chain(
            self.actor_encoder.parameters(), self.prefix_tokenizer.parameters(), self.flow.parameters()
        )

    def critic_parameters(self) -> Iterator[nn.Parameter]:
        """Critic encoder and critic ensemble (empty without a critic); disjoint from the actor's."""
        if self.critic is None or self.critic_encoder is None:
            return iter(())
        return itertools.chain(self.critic_encoder.parameters(), self.critic.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- normalisation ----------------------------------------------------------------------
    def fit_normalizers(
        self,
        actions: Any,
        observations: Mapping[str, Any] | None = None,
        margin: float = 0.05,
        min_range: float = 1e-4,
        action_margin: float | None = None,
    ) -> None:
        """Fit the action normalizer on raw actions ``[..., A]`` and, if given, the low-dim
        observation normalizers on ``{key: [..., d]}`` (dataset statistics, §IV-B).

        ``action_margin`` (default: ``margin``) is the actions' own headroom: they pass through
        the flow's atanh, where data pushed past ±1 by the training noise becomes outliers."""
        self.action_normalizer.fit_(
            actions, margin=margin if action_margin is None else action_margin, min_range=min_range
        )
        for key, values in (observations or {}).items():
            if key not in self.obs_normalizers:
                raise ValueError(f"no low-dim observation key {key!r} to fit a normalizer for")
            self.obs_normalizers[key].fit_(values, margin=margin, min_range=min_range)

    def normalize_obs(self, obs: Mapping[str, Any]) -> dict[str, Tensor]:
        """Raw observation dict -> tensors on the policy's device, low-dim keys normalised."""
        out: dict[str, Tensor] = {}
        device = self.device
        spec = self.config.observation_spec
        for key, value in obs.items():
            if key not in spec and key.removesuffix(CACHED_FEATURES_SUFFIX) not in spec:
                continue  # e.g. timestamps riding along in the observation dict
            tensor = torch.as_tensor(value, device=device)
            if key in self.obs_normalizers:
                norm = self.obs_normalizers[key]
                tensor = norm.normalize(tensor.to(norm.low.dtype))
            out[key] = tensor
        return out

    # -- learner-facing pieces --------------------------------------------------------------
    def actor_context(self, obs: Mapping[str, Any], prefix_norm: Tensor) -> Tensor:
        """Flow context ``[B, L+P, D]``: actor-encoded observation tokens, then prefix tokens.

        ACT conditions on no prefix (its temporal ensembling keeps consecutive queries
        consistent instead): for ``actor="act"`` the prefix is checked and the context is the
        ``L`` observation tokens alone."""
        tokens = self.actor_encoder(self.normalize_obs(obs))  # [B, L, D]
        prefix_tokens = self.prefix_tokenizer(prefix_norm.to(tokens.device))  # [B, P, D]
        if prefix_tokens.shape[0] != tokens.shape[0]:
            raise ValueError(f"batch mismatch: observation B={tokens.shape[0]}, prefix B={prefix_tokens.shape[0]}")
        if self.config.actor == "act":
            return tokens
        return torch.cat([tokens, prefix_tokens.to(tokens.dtype)], dim=1)

    def state_tokens(self, context: Tensor) -> Tensor:
        """The low-dim observation tokens ``[B, S, D]`` of an actor context (ACT's CVAE encoder
        input): the encoder puts them right after the image tokens (S = 0 without low-dim keys)."""
        lowdim = self.actor_encoder.lowdim
        if lowdim is None:
            return context[:, :0]
        end = self.actor_encoder.num_tokens
        return context[:, end - lowdim.num_tokens : end]

    def critic_tokens(self, obs: Mapping[str, Any]) -> Tensor:
        """Observation tokens ``[B, L, D]`` from the critic's own encoder."""
        self._require_critic()
        return self.critic_encoder(self.normalize_obs(obs))

    def log_prob(
        self, obs: Mapping[str, Any], prefix_norm: Tensor, chunk_norm: Tensor, add_noise: bool = False
    ) -> Tensor:
        """``log pi(chunk | obs, prefix)`` ``[B]`` of a normalised chunk ``[B, H, A]``."""
        self._require_likelihood("log_prob")
        return self.flow.log_prob(chunk_norm, self.actor_context(obs, prefix_norm), add_noise=add_noise)

    def sample(
        self,
        obs: Mapping[str, Any],
        prefix_norm: Tensor,
        num_samples: int,
        sigma: float,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Reparameterised samples: ``(chunks_norm [B, N, H, A], log_prob [B, N])`` (model density).

        Actors without a likelihood (``flow_matching``, ``act``) report ``log_prob`` as NaN."""
        context = self.actor_context(obs, prefix_norm)
        if self.config.has_likelihood:
            return self.flow.sample(context, num_samples, sigma, generator=generator)
        chunks = self.flow.sample(context, num_samples, sigma, generator=generator)
        return chunks, chunks.new_full(chunks.shape[:2], math.nan)

    @torch.inference_mode()
    def predict_full_chunk_batch(self, obs: Mapping[str, Any], prefix_raw: Any) -> np.ndarray:
        """ACT's whole prediction in raw units, ``[B, K, A]`` (K = ``act.chunk_len``), in eval
        mode at ``z = 0``: what temporal ensembling averages (``sernf_sim.temporal_ensembling``).
        ``obs`` / ``prefix_raw`` as for :meth:`act_batch` (the prefix is checked, not used)."""
        if self.config.actor != "act":
            raise ValueError(f"predict_full_chunk_batch needs actor='act', this policy has {self.config.actor!r}")
        checked, prefix = self._validate_batch(obs, prefix_raw)
        was_training = self.training
        self.eval()
        try:
            prefix_norm = self.action_normalizer.normalize(torch.as_tensor(prefix, device=self.device))
            chunk = self.flow.predict(self.actor_context(checked, prefix_norm))
            return self.action_normalizer.unnormalize(chunk).float().cpu().numpy()
        finally:
            self.train(was_training)

    def _require_likelihood(self, what: str) -> None:
        if not self.config.has_likelihood:
            raise ValueError(f"{what} needs an exact likelihood, which actor={self.config.actor!r} does not have "
                             "(an imitation-only baseline; it acts by one sample, selection='single')")

    def critic_actions(self, chunks_norm: Tensor) -> Tensor:
        """The part of chunks ``[..., H, A]`` the critic scores: their first ``critic.horizon``
        actions (all H for the chunked critic, returned as is; the first one for the per-step
        ablation, which values a chunk by ``Q(o_t, prefix, a_{t+P})``)."""
        h = self._require_critic().config.horizon
        return chunks_norm if chunks_norm.shape[-2] == h else chunks_norm[..., :h, :]

    def min_q(self, obs: Mapping[str, Any], prefix_norm: Tensor, chunks_norm: Tensor) -> Tensor:
        """``min_j Q_j(obs, prefix, chunk)`` ``[B, N]`` for ``chunks_norm [B, N, H, A]``
        (scored on :meth:`critic_actions`)."""
        critic = self._require_critic()
        tokens = self.critic_tokens(obs)
        chunks = self.critic_actions(chunks_norm)
        return critic.min_value(tokens, prefix_norm.to(tokens.dtype), chunks.to(tokens.dtype))

    def q_values(self, obs: Mapping[str, Any], prefix_norm: Tensor, chunks_norm: Tensor) -> Tensor:
        """Every critic's value ``[M, B, N]`` of ``chunks_norm [B, N, H, A]``."""
        critic = self._require_critic()
        tokens = self.critic_tokens(obs)
        chunks = self.critic_actions(chunks_norm)
        return critic.values(critic.score(tokens, prefix_norm.to(tokens.dtype), chunks.to(tokens.dtype)))

    def _require_critic(self) -> ChunkCritic:
        if self.critic is None:
            raise ValueError("this policy has no critic (PolicyConfig.critic is None)")
        return self.critic

    # -- acting (Alg. 2) --------------------------------------------------------------------
    def _validate_batch(self, obs: Any, prefix_raw: Any) -> tuple[dict[str, Any], np.ndarray]:
        cfg = self.config
        if not isinstance(obs, Mapping):
            raise ValueError(f"observation must be a dict, got {type(obs).__name__}")
        checked: dict[str, Any] = {}
        batch: int | None = None
        for key, spec in cfg.observation_spec.items():
            feat_key = f"{key}{CACHED_FEATURES_SUFFIX}"
            if key not in obs:
                if spec.kind == "rgb" and feat_key in obs:
                    checked[feat_key] = obs[feat_key]
                    continue
                raise ValueError(f"observation is missing key {key!r}")
            arr = _to_numpy(obs[key], key)
            want = (cfg.obs_history, *spec.shape)
            if arr.ndim != len(want) + 1 or tuple(arr.shape[1:]) != want:
                raise ValueError(f"observation {key!r} must have shape [B, {', '.join(map(str, want))}], got {arr.shape}")
            if batch is None:
                batch = arr.shape[0]
            elif arr.shape[0] != batch:
                raise ValueError(f"observation {key!r} has batch {arr.shape[0]}, others have {batch}")
            if spec.kind == "rgb":
                if arr.dtype != np.uint8:
                    raise ValueError(f"rgb observation {key!r} must be uint8, got {arr.dtype}")
            else:
                if not np.issubdtype(arr.dtype, np.number):
                    raise ValueError(f"observation {key!r} must be numeric, got {arr.dtype}")
                arr = arr.astype(np.float32)
                if not np.isfinite(arr).all():
                    raise ValueError(f"observation {key!r} contains NaN or inf")
            checked[key] = arr
        prefix = _to_numpy(prefix_raw, "prefix")
        if not np.issubdtype(prefix.dtype, np.number):
            raise ValueError(f"prefix must be numeric, got {prefix.dtype}")
        want_p = (cfg.prefix_len, cfg.action_dim)
        if prefix.ndim != 3 or tuple(prefix.shape[1:]) != want_p or (batch is not None and prefix.shape[0] != batch):
            raise ValueError(f"prefix must have shape [B={batch}, {want_p[0]}, {want_p[1]}], got {prefix.shape}")
        prefix = prefix.astype(np.float32)
        if not np.isfinite(prefix).all():
            raise ValueError("prefix contains NaN or inf")
        return checked, prefix

    @torch.inference_mode()
    def act_batch(
        self,
        obs: Mapping[str, Any],
        prefix_raw: Any,
        *,
        num_samples: int | None = None,
        sigma: float | None = None,
        generator: torch.Generator | None = None,
        selection: Selection | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray | None]]:
        """Choose one raw chunk per observation (Alg. 2), in eval mode without gradients.

        ``selection`` overrides ``config.selection`` for this call ("best_of_n": argmax of the
        critics' minimum; "most_likely": the candidate with the highest model density;
        "single": one sample).

        ``obs``: dict of ``[B, T, ...]`` arrays / tensors (raw units; images uint8);
        ``prefix_raw [B, P, A]``. Returns ``chunks_raw`` float32 ``[B, H, A]`` and ``info`` with
        ``"log_prob" [B]`` (model log-density of the chosen normalised chunk; NaN for the
        imitation-only baselines, which have none and act by ``"single"`` only), ``"q" [B]`` (its
        min-over-critics value, or None without critic scoring) and ``"index" [B]`` (which of
        the N candidates was chosen).
        """
        cfg = self.config
        selection = cfg.selection if selection is None else selection
        if selection not in ("best_of_n", "most_likely", "single"):
            raise ValueError(f"selection must be best_of_n/most_likely/single, got {selection!r}")
        if selection != "single" and not cfg.has_likelihood:
            self._require_likelihood(f"selection={selection!r}")
        checked, prefix = self._validate_batch(obs, prefix_raw)
        n = 1 if selection == "single" else int(num_samples or cfg.num_samples)
        sigma = cfg.sigma_sample if sigma is None else float(sigma)
        was_training = self.training
        self.eval()
        try:
            graph = self._acting_graph
            if graph is not None and graph.serves(checked, n, sigma, selection):
                return _to_host(*graph.act(checked, prefix, generator))
            prefix_norm = self.action_normalizer.normalize(torch.as_tensor(prefix, device=self.device))
            if self._choice_needs_one_density(selection, n):
                return _to_host(*self._best_of_n_deferring_clamped(checked, prefix_norm, n, sigma, generator))
            chunks, log_prob = self.sample(checked, prefix_norm, n, sigma, generator=generator)  # [B,N,H,A], [B,N]
            return _to_host(*self._choose(checked, prefix_norm, chunks, log_prob, selection))
        finally:
            self.train(was_training)

    def _choice_needs_one_density(self, selection: str, n: int) -> bool:
        """True when :meth:`_choose` picks by the critics alone (plain best-of-N: no top-k
        restriction, no disagreement fallback), so only the chosen candidate's density is
        ever read."""
        cfg = self.config
        return (selection == "best_of_n" and isinstance(self.flow, ChunkFlow) and self.critic is not None and n > 1
                and not 0 < cfg.selection_top_k < n and cfg.selection_max_disagreement <= 0)

    def _best_of_n_deferring_clamped(self, obs: Mapping[str, Any], prefix_norm: Tensor, n: int, sigma: float,
                                     generator: torch.Generator | None) -> tuple[Tensor, ...]:
        """:meth:`sample` then :meth:`_choose` with the same draws and outputs, where a candidate
        on the action clamp gets its density recomputed (a forward pass through the couplings)
        only if it is the one chosen, not whenever any candidate is clamped: on the bench's
        untrained flow that redo set the p99 of a chunk (docs/performance.md)."""
        context = self.actor_context(obs, prefix_norm)
        chunks, log_prob, clamped = self.flow.sample_deferring_clamped(context, n, sigma, generator=generator)
        chosen, chosen_log_prob, q, index, fallback = self._choose(obs, prefix_norm, chunks, log_prob, "best_of_n")
        redo = clamped[torch.arange(chunks.shape[0], device=chunks.device), index]
        if bool(redo.any()):
            rows = redo.nonzero().flatten()
            fixed = self.flow.clamped_log_prob(chunks[rows, index[rows]], context[rows])
            chosen_log_prob = chosen_log_prob.index_put((rows,), fixed)
        return chosen, chosen_log_prob, q, index, fallback

    def _choose(
        self, obs: Mapping[str, Any], prefix_norm: Tensor, chunks: Tensor, log_prob: Tensor, selection: str
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
        """Alg. 2's choice among candidates ``chunks [B, N, H, A]`` (normalised) with model
        densities ``log_prob [B, N]``: ``(chosen raw chunk [B, H, A], its log_prob [B], its
        min-Q [B] or None, index [B], fallback [B])``. Device tensors only, no host sync: the
        CUDA-graph acting path captures this too."""
        cfg = self.config
        n = chunks.shape[1]
        q = None
        rows = torch.arange(chunks.shape[0], device=chunks.device)
        fallback = torch.zeros(chunks.shape[0], dtype=torch.bool, device=chunks.device)
        if selection == "best_of_n" and self.critic is not None and n > 1:
            guarded = cfg.selection_max_disagreement > 0
            qs = self.q_values(obs, prefix_norm, chunks) if guarded else None  # [M, B, N]
            q = qs.min(dim=0).values if qs is not None else self.min_q(obs, prefix_norm, chunks)  # [B, N]
            scores = q
            k = cfg.selection_top_k
            if 0 < k < n:  # only the k most likely candidates compete
                top = log_prob.topk(k, dim=1).indices
                scores = torch.full_like(q, -math.inf).scatter(1, top, q.gather(1, top))
            index = scores.argmax(dim=1)
            if guarded:
                spread = (qs.max(dim=0).values - qs.min(dim=0).values)[rows, index]
                fallback = spread > cfg.selection_max_disagreement
                index = torch.where(fallback, log_prob.argmax(dim=1), index)
        else:
            index = log_prob.argmax(dim=1)
        chosen = self.action_normalizer.unnormalize(chunks[rows, index])  # [B, H, A]
        return chosen, log_prob[rows, index], None if q is None else q[rows, index], index, fallback

    def capture_cuda_graph(self, batch_size: int = 1, num_samples: int | None = None,
                           sigma: float | None = None, selection: Selection | None = None) -> None:
        """Capture :meth:`act_batch` for these shapes as one CUDA graph (:mod:`cuda_graph_acting`):
        later calls with the same batch size, N, sigma and selection replay it instead of
        launching each of its many small kernels from Python, with the same outputs. Needs the
        flow actor on a CUDA device; replaces an earlier capture. :meth:`release_cuda_graph`
        drops it. Weights and normalizers changed in place (optimiser steps,
        ``load_state_dict``, ``fit_normalizers``) are used by the next replay; ``.to()`` or
        ``load_state_dict(assign=True)`` replace tensors and need a new capture (the graph
        notices, warns and the call runs eagerly meanwhile)."""
        from .cuda_graph_acting import ActingGraph

        cfg = self.config
        self._acting_graph = None
        self._acting_graph = ActingGraph(
            self, batch_size, int(num_samples or cfg.num_samples),
            cfg.sigma_sample if sigma is None else float(sigma), cfg.selection if selection is None else selection)

    def release_cuda_graph(self) -> None:
        """Drop the captured acting graph (and its memory pool); acting runs eagerly."""
        self._acting_graph = None

    def compile_for_acting(self, **compile_kwargs: Any) -> None:
        """Opt in to ``torch.compile`` of the flow's sampling and the critics' candidate scoring
        for :meth:`act_batch` (:meth:`ChunkFlow.compile_for_acting`,
        :meth:`ChunkCritic.compile_for_acting`). Warm it up with one :meth:`act_batch` call
        before acting in real time."""
        if not isinstance(self.flow, ChunkFlow):
            raise ValueError("compile_for_acting needs the flow actor")
        self.flow.compile_for_acting(**compile_kwargs)
        if self.critic is not None:
            self.critic.compile_for_acting(**compile_kwargs)

    def warm_up(self, batch_size: int = 1, num_samples: int | None = None,
                sigma: float | None = None) -> np.ndarray:
        """One :meth:`act_batch` on zero observations and a zero prefix at these shapes: a
        dry run before a checkpoint goes live, and, after :meth:`compile_for_acting`, the
        compilation for exactly the shapes the robot will act with (compiled graphs are
        shape-specialised). Returns the chunks ``[batch_size, H, A]``; ValueError if any is
        not finite."""
        cfg = self.config
        obs = {
            key: np.zeros((batch_size, cfg.obs_history, *spec.shape), np.uint8 if spec.kind == "rgb" else np.float32)
            for key, spec in cfg.observation_spec.items()
        }
        prefix = np.zeros((batch_size, cfg.prefix_len, cfg.action_dim), np.float32)
        chunks, _ = self.act_batch(obs, prefix, num_samples=num_samples, sigma=sigma)
        if chunks.shape != (batch_size, cfg.horizon, cfg.action_dim) or not np.isfinite(chunks).all():
            raise ValueError(f"warm-up inference gave shape {chunks.shape} or non-finite actions")
        return chunks

    def act(
        self,
        observation: Mapping[str, Any],
        prefix_raw: Any,
        *,
        num_samples: int | None = None,
        sigma: float | None = None,
        generator: torch.Generator | None = None,
        selection: Selection | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Single observation (dict of ``[T, ...]``) and ``prefix_raw [P, A]`` -> ``chunk_raw [H, A]``
        (``selection`` as in :meth:`act_batch`)."""
        if not isinstance(observation, Mapping):
            raise ValueError(f"observation must be a dict, got {type(observation).__name__}")
        batched = {}
        for key, value in observation.items():
            spec = self.config.observation_spec.get(key)
            if spec is not None:
                arr = _to_numpy(value, key)
                want = (self.config.obs_history, *spec.shape)
                if tuple(arr.shape) != want:
                    raise ValueError(f"observation {key!r} must have shape {list(want)}, got {arr.shape}")
                batched[key] = arr[None]
            elif key.endswith(CACHED_FEATURES_SUFFIX):
                batched[key] = torch.as_tensor(value)[None]
        prefix = _to_numpy(prefix_raw, "prefix")
        if prefix.shape != (self.config.prefix_len, self.config.action_dim):
            raise ValueError(
                f"prefix must have shape [{self.config.prefix_len}, {self.config.action_dim}], got {prefix.shape}"
            )
        chunks, info = self.act_batch(batched, prefix[None], num_samples=num_samples, sigma=sigma, generator=generator,
                                      selection=selection)
        single = {k: (None if v is None else v[0]) for k, v in info.items()}
        return chunks[0], single

    # -- checkpoints ------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None) -> str:
        """Write an atomic safetensors + JSON checkpoint; returns the weights' sha256."""
        return write_checkpoint(directory, self.state_dict(), self.config, CHECKPOINT_KIND, metadata)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> Policy:
        """Rebuild a policy from :meth:`save` output; raises :class:`CheckpointError` on any problem.

        Encoders are built with ``pretrained=False``: the checkpoint holds their weights.
        """
        header, tensors = read_checkpoint(directory, CHECKPOINT_KIND)
        source = os.fspath(directory)
        try:
            config = PolicyConfig.from_dict(header["config"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid policy config in {source}/config.json: {exc}") from exc
        enc = config.encoder
        config.encoder = dataclasses.replace(
            enc,
            resnet=dataclasses.replace(enc.resnet, pretrained=False),
            dinov2=dataclasses.replace(enc.dinov2, pretrained=False),
        )
        try:
            with torch.random.fork_rng(devices=[]):  # the throw-away init must not move the global RNG
                policy = cls(config)
        except ValueError as exc:
            raise CheckpointError(f"cannot build the policy described by {source}/config.json: {exc}") from exc
        load_state_strict(policy, tensors, source)
        # The saved config keeps the original weight source (for the record).
        policy.config.encoder = enc
        return policy.to(device)


def _to_numpy(value: Any, key: str) -> np.ndarray:
    if torch.is_tensor(value):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"observation {key!r} is not array-like: {exc}") from exc
