"""Run configuration of ``sernf-train``: typed dataclasses built explicitly from YAML.

One YAML file (``config/point_offline.yaml``, ...) describes a whole run::

    seed: 0
    policy:      {...}   # model sizes (PolicySpec below; dims come from the env / data)
    data:        {...}   # offline store, online store, γ, optional generation of point demos
    env:         {...}   # simulated task for online RL / distillation / evaluation
    trainer:     {...}   # checkpointing, logging, evaluation after stages
    il: / critic_warmup: / offline_rl: / online_rl: / distill:   # the stages' own configs

Every section maps onto a dataclass with a docstring per field, validated in
``__post_init__``. Nested sections are built by naming their class explicitly
(:func:`sernf_policy.config_io.build_dataclass` with a table of builders): nothing is ever
looked up or constructed from a string in the file. Unknown keys are errors.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from sernf_learner.critic_warmup import CriticWarmupConfig
from sernf_learner.distill import DistillConfig
from sernf_learner.il import ILConfig, check_int
from sernf_learner.offline_rl import ActorConfig, OfflineRLConfig
from sernf_learner.online_rl import OnlineRLConfig
from sernf_learner.td_targets import CriticConfig
from sernf_policy.config_io import build_dataclass, to_jsonable
from sernf_policy.encoders import DinoV2EncoderConfig, ResNetEncoderConfig
from sernf_policy.mixed_precision import check_precision
from sernf_sim.gymnasium_task import GymnasiumEnvConfig

#: Stage names, in the order of the paper's pipeline (Alg. 3) plus distillation.
STAGES = ("il", "critic_warmup", "offline_rl", "online_rl", "distill")
#: Named schedules of several stages.
SCHEDULES = {
    "offline": ("il", "critic_warmup", "offline_rl"),
    "full": ("il", "critic_warmup", "offline_rl", "online_rl"),
}
#: Simulated tasks the trainer can build (an explicit table, not an import by name).
TASKS = ("point", "hand_pick_place", "gymnasium")
#: Teachers for distillation.
TEACHERS = ("point_expert", "checkpoint")
#: Actor families (sernf_policy.policy.ACTOR_KINDS).
ACTORS = ("flow", "gaussian", "flow_matching", "act")


@dataclass
class PolicySpec:
    """Model sizes; observation spec, A, T, P, H come from the data / env (docs/design.md §6 defaults)."""

    obs_history: int = 1
    """T: observation steps (scissors 1, cube 4)."""
    prefix_len: int = 3
    """P: queued prefix actions (scissors 3, cube 2)."""
    horizon: int = 10
    """H: chunk length (scissors 10, cube 6)."""
    token_dim: int = 512
    """D: observation / context token width."""
    flow_layers: int = 16
    """K: coupling layers (paper: 16)."""
    flow_hidden: int = 256
    """Conditioner width (paper: 256)."""
    flow_heads: int = 8
    """Conditioner attention heads (paper: 8)."""
    flow_base_components: int = 0
    """The flow's base distribution: 0 = the paper's fixed N(0, I); K >= 1 = learned from the
    context, a mixture of K Gaussians (our departure, docs/results.md)."""
    flow_components: int = 1
    """M: the actor as a mixture of M conditional flows that share their weights, each with its
    own learned context token, weighted by the context (1 = one flow, the paper; our departure
    for multimodal demonstrations, docs/results.md). Costs M flow passes per likelihood."""
    noise_std: float = 0.05
    """σ_noise on normalised training actions (0.05 sim, 0.01 real)."""
    action_margin: float = 0.05
    """Headroom of the action normalizer: the data's min/max range is widened by this fraction
    on each side, so the data spans ±1/(1 + 2·margin) of the flow's (-1, 1). Too little, and
    σ_noise pushes data near its extremes past ±1, where the clamp before atanh turns it into
    outliers of |u| ≈ 7 (docs/results.md, hand task)."""
    critic_d_model: int = 512
    """Critic transformer width (paper: 512)."""
    critic_heads: int = 8
    """Critic attention heads (paper: 8)."""
    critic_layers: int = 3
    """Critic encoder layers (paper: 3)."""
    critic_ff: int = 256
    """Critic feed-forward width (paper: 256)."""
    critic_dropout: float = 0.1
    """Critic dropout (paper: 0.1)."""
    num_critics: int = 2
    """M (paper: 2)."""
    v_min: float = 0.0
    """Lower end of the HL-Gauss value support (sparse 0/1 rewards: 0)."""
    v_max: float = 1.0
    """Upper end of the HL-Gauss value support."""
    num_samples: int = 128
    """N candidates for action selection by default (128 sim, 64 real, 24 online RL)."""
    sigma_sample: float = 0.7
    """σ_sample at inference (paper: 0.7)."""
    selection_top_k: int = 0
    """Best-of-N scores only the k most likely of the N candidates (0: all, the paper's Alg. 2);
    a guard against the argmax picking chunks the critic overvalues off the data."""
    selection_max_disagreement: float = 0.0
    """Fall back to the most likely candidate when the critics' values of the chosen chunk differ
    by more than this (value units; 0: never, the paper's Alg. 2)."""
    image_backbone: str = "resnet18"
    """Image encoder for rgb keys: "resnet18" (one per camera) or "dinov2" (one shared)."""
    resnet: ResNetEncoderConfig = field(default_factory=ResNetEncoderConfig)
    """ResNet-18 settings (image_backbone "resnet18"): timm variant, weights (``pretrained``:
    false, true = the hub, or a local file), resize, finetune mode."""
    dinov2: DinoV2EncoderConfig = field(default_factory=DinoV2EncoderConfig)
    """DINOv2 settings (image_backbone "dinov2"): timm model (default ViT-L/14 reg4, G1),
    weights (``pretrained``: false, true = the hub, or a local file), image size, projector
    width, finetune mode (G1: "norm"), which block's tokens."""
    actor: str = "flow"
    """Actor family: "flow" (the paper's conditional normalizing flow, §III-c / §IV-B) or
    "gaussian" (ablation: a tanh-squashed diagonal Gaussian over the whole chunk,
    ``sernf_policy.gaussian_actor``; its transformer decoder takes the flow_* sizes as its
    layers / width / heads, and every stage trains it with the same losses); or one of the
    paper's imitation-only baselines (Table I, G3), trained by the IL stage with their own
    losses and without a critic (they have no likelihood for the RL stages): "flow_matching"
    (DiT flow-matching policy, ``sernf_policy.flow_matching_actor``; width / heads from
    flow_hidden / flow_heads, depth fm_blocks) or "act" (ACT's CVAE, ``sernf_policy.act_actor``;
    width / heads from flow_hidden / flow_heads, act_* below)."""
    fm_blocks: int = 4
    """actor "flow_matching": DiT blocks (G3: 4)."""
    fm_steps: int = 8
    """actor "flow_matching": Euler integration steps when sampling (G3: 8)."""
    act_chunk_len: int = 20
    """actor "act": actions per ACT prediction, its own chunk length K >= horizon (G3: 20).
    Trained on K-action chunks at the same decision steps; evaluated with temporal ensembling."""
    act_layers: int = 3
    """actor "act": layers of its CVAE encoder and of its decoder (G3: 3)."""
    act_latent_dim: int = 32
    """actor "act": dimensions of the style variable z (G3: 32)."""
    act_kl_weight: float = 10.0
    """actor "act": weight of the KL term (G3: 10)."""
    act_ensemble_m: float = 0.01
    """actor "act": temporal ensembling weights exp(-m i), i = 0 the oldest prediction (G3: 0.01)."""
    critic_horizon: int | None = None
    """Chunk actions the critic scores, which is also its TD step: None (or H) = the paper's
    action-chunked critic Q(o_t, prefix, a_{t+P:t+P+H}) with the H-step target (§III-b eq. 2,
    §IV-C); 1 = a per-step critic Q(o_t, prefix, a_{t+P}) of the chunk's first action with the
    1-step target r_{t+P} + γ(1−d)·Q̄(o_{t+1}, a_{t+1..t+P}, â'), â' the first action of a chunk
    the actor samples at o_{t+1} (ablation; ``sernf_learner.transitions`` has the timing). The
    actor still outputs H-action chunks; its Q term and best-of-N selection score their first
    action."""

    def __post_init__(self) -> None:
        for name in ("obs_history", "horizon", "token_dim", "flow_layers", "flow_hidden", "flow_heads",
                     "critic_d_model", "critic_heads", "critic_layers", "critic_ff", "num_critics", "num_samples",
                     "fm_blocks", "fm_steps", "act_chunk_len", "act_layers", "act_latent_dim"):
            check_int(self, name)
        check_int(self, "prefix_len", allow_zero=True)
        check_int(self, "flow_base_components", allow_zero=True)
        check_int(self, "flow_components")
        if self.flow_components > 1 and self.flow_base_components > 1:
            raise ValueError(f"PolicySpec: flow_components {self.flow_components} needs flow_base_components "
                             f"0 or 1, got {self.flow_base_components}")
        if not (math.isfinite(self.sigma_sample) and self.sigma_sample > 0):
            raise ValueError(f"PolicySpec.sigma_sample must be > 0, got {self.sigma_sample}")
        if isinstance(self.action_margin, bool) or not isinstance(self.action_margin, int | float) or not (
            0.0 <= self.action_margin < 1.0
        ):
            raise ValueError(f"PolicySpec.action_margin must be in [0, 1), got {self.action_margin!r}")
        if not self.v_min < self.v_max:
            raise ValueError(f"PolicySpec needs v_min < v_max, got {self.v_min}, {self.v_max}")
        if self.image_backbone not in ("resnet18", "dinov2"):
            raise ValueError(f"PolicySpec.image_backbone must be resnet18 or dinov2, got {self.image_backbone!r}")
        if not isinstance(self.resnet, ResNetEncoderConfig) or not isinstance(self.dinov2, DinoV2EncoderConfig):
            raise ValueError("PolicySpec.resnet / .dinov2 must be ResNetEncoderConfig / DinoV2EncoderConfig")
        if self.actor not in ACTORS:
            raise ValueError(f"PolicySpec.actor must be one of {ACTORS}, got {self.actor!r}")
        for name in ("act_kl_weight", "act_ensemble_m"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value >= 0):
                raise ValueError(f"PolicySpec.{name} must be a finite number >= 0, got {value!r}")
        if self.actor == "act" and self.act_chunk_len < self.horizon:
            raise ValueError(f"PolicySpec.act_chunk_len ({self.act_chunk_len}) must be >= horizon ({self.horizon})")
        h = self.critic_horizon
        if h is not None and (isinstance(h, bool) or not isinstance(h, int) or h not in (1, self.horizon)):
            raise ValueError(f"PolicySpec.critic_horizon must be null, 1 or horizon={self.horizon}, got {h!r}")


@dataclass
class DataConfig:
    """Where the episodes come from and go to."""

    offline_uri: str = "offline_replay"
    """Offline episode store (demos, successes and failures); any path or fsspec URL. Relative
    paths are relative to the run directory. Must exist unless ``generate_point_demos`` > 0."""
    online_uri: str = "online_replay"
    """Online episode store of Stage IV (created if missing; relative to the run directory)."""
    gamma: float = 0.997
    """Per-step discount γ (G2: 0.997)."""
    generate_point_demos: int = 0
    """If > 0 and the offline store does not exist: fill it with this many mixed-quality
    point-task demonstrations (``sernf_sim.datasets.mixed_point_dataset``, ~55 % successes)."""
    demo_seed: int = 0
    """Seed of the generated demonstrations."""
    point_demo_upper_route_prob: float = 0.5
    """Probability that a generated point-task demonstration goes above the obstacle (per
    episode). 0.5: both routes, the multimodal data the task is made for; 0 or 1: one route, a
    control that separates a method's handling of two modes from the rest."""

    def __post_init__(self) -> None:
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"DataConfig.gamma must be in (0, 1], got {self.gamma}")
        self.point_demo_upper_route_prob = float(self.point_demo_upper_route_prob)
        if not 0.0 <= self.point_demo_upper_route_prob <= 1.0:
            raise ValueError("DataConfig.point_demo_upper_route_prob must be in [0, 1], "
                             f"got {self.point_demo_upper_route_prob}")
        check_int(self, "generate_point_demos", allow_zero=True)
        check_int(self, "demo_seed", allow_zero=True)
        if not self.offline_uri or not self.online_uri:
            raise ValueError("DataConfig.offline_uri and .online_uri must not be empty")


@dataclass
class EnvConfig:
    """Simulated task for online RL, distillation and evaluation."""

    task: str = "point"
    """Task name: "point" (sernf_sim.point_task.PointTask) or "hand_pick_place" (state-only
    sernf_sim.hand_pick_place.HandPickPlace; ``task_overrides`` may hold ``variant``:
    "nominal" / "shifted", and HandPickPlaceConfig fields) or "gymnasium" (any continuous-action
    gymnasium env, named in ``gymnasium``; docs/gymnasium.md)."""
    num_envs: int = 50
    """Parallel envs for collecting episodes."""
    seed: int = 0
    """Seed of the collection env."""
    task_overrides: dict[str, Any] = field(default_factory=dict)
    """Fields of the task's config dataclass to override (e.g. ``time_limit``), validated by it."""
    gymnasium: GymnasiumEnvConfig | None = None
    """For task "gymnasium" (and only then): the env's id in gymnasium's registry, the
    ``gymnasium.make`` kwargs, control rate and success key (sernf_sim.gymnasium_task)."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"EnvConfig.task must be one of {TASKS}, got {self.task!r}")
        check_int(self, "num_envs")
        if not isinstance(self.task_overrides, Mapping):
            raise ValueError("EnvConfig.task_overrides must be a mapping")
        if self.gymnasium is not None and not isinstance(self.gymnasium, GymnasiumEnvConfig):
            raise ValueError("EnvConfig.gymnasium must be a GymnasiumEnvConfig")
        if self.task == "gymnasium":
            if self.gymnasium is None:
                raise ValueError("EnvConfig.task 'gymnasium' needs env.gymnasium.id (e.g. Pendulum-v1)")
            if self.task_overrides:
                raise ValueError("EnvConfig.task_overrides is not used by task 'gymnasium'; put the env's "
                                 "arguments in env.gymnasium.kwargs")
        elif self.gymnasium is not None:
            raise ValueError(f"EnvConfig.gymnasium is only read by task 'gymnasium', not {self.task!r}")


@dataclass
class EvalConfig:
    """Evaluation of the policy after stages (on a separate env with fixed seeds)."""

    episodes: int = 0
    """Episodes per evaluation; 0 disables evaluation."""
    num_envs: int = 200
    """Parallel envs for evaluation."""
    num_samples: int = 16
    """N candidates per decision (Alg. 2)."""
    sigma: float = 0.7
    """σ_sample."""
    seed: int = 12345
    """Seed of the evaluation episodes (the same starts for every stage)."""
    selection_without_critic: str = "most_likely"
    """Selection after stages that did not train the critic (il, distill): "most_likely"
    (§IV-D a) or "single"; after critic stages the policy's "best_of_n" (Alg. 2) is used."""
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    """Stages after which to evaluate (when ``episodes`` > 0)."""
    torch_threads: int = 0
    """Torch intra-op threads while evaluating (0 = the run's ``trainer.torch_num_threads``).
    An evaluation scores ``num_envs`` × ``num_samples`` candidates per decision, large enough
    to split over 2 threads where a small model's training batches are not: on the 2-core
    machine, 100 hand-task episodes took 18-20 s with 2 threads against 24-25 s with 1."""

    def __post_init__(self) -> None:
        check_int(self, "torch_threads", allow_zero=True)
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise ValueError(f"EvalConfig.stages: unknown stage(s) {bad}; stages are {STAGES}")
        check_int(self, "episodes", allow_zero=True)
        check_int(self, "num_envs")
        check_int(self, "num_samples")
        if self.selection_without_critic not in ("most_likely", "single"):
            raise ValueError(f"EvalConfig.selection_without_critic must be most_likely or single, "
                             f"got {self.selection_without_critic!r}")


@dataclass
class TrainerConfig:
    """Checkpointing, logging, devices."""

    checkpoint_every: int = 1000
    """Write a resumable checkpoint every this many updates (and at every stage end; online
    RL and distillation checkpoint after every iteration)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (oldest deleted first)."""
    log_every: int = 10
    """Log metrics every this many updates."""
    device: str = "cpu"
    """Torch device ("cpu", "cuda", "cuda:1")."""
    torch_num_threads: int = 0
    """Torch intra-op CPU threads for the run (``torch.set_num_threads``); 0 keeps torch's
    default. Small models train fastest on 1 thread, and on a loaded machine more threads than
    free cores make OpenMP spin: measured 100x slower updates with 2 threads at load 5 on 2 cores."""
    tensorboard: bool = True
    """Write TensorBoard event files."""
    progress: bool = True
    """Show tqdm progress bars."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation after each stage."""
    reference_model_paths: bool = False
    """Run the model's reference implementations instead of the optimised ones
    (``sernf_policy.fast_paths``). Same model and distribution; the optimised paths draw their
    dropout masks over fewer rows, so only this setting reproduces, bit for bit, runs made
    before the optimisation (e.g. the figures of docs/results.md)."""

    precision: str = "fp32"
    """Arithmetic of the training stages: ``"fp32"`` (the default), or ``"bf16"``: every stage's
    forward passes and losses under torch's bf16 autocast, with float32 weights, gradients,
    optimiser state and densities (``sernf_policy.mixed_precision``). It pays where the matrix
    products dominate and the hardware has bf16 units (recent GPUs; CPUs with AMX): the
    paper-size offline-RL update on this project's 2-core AMX CPU runs 1.6x faster, the
    CPU-sized configs not at all (docs/performance.md). Acting and evaluation stay float32."""

    feature_cache_dir: str = ""
    """Directory of the on-disk cache of frozen image-backbone features ("" = off; relative paths
    are relative to the run directory; a local path). When set, a stage reads cached features
    instead of running the backbone for every sample wherever that gives the same result: every
    encoder the stage runs must have a fully frozen backbone (finetune "frozen", or the actor
    during critic_warmup) and, for each camera, the actor's and the critic's backbones the same
    weights. DINOv2 "norm" (the paper's mode) trains its LayerNorms, so its stages compute the
    features as before. ``sernf_learner.feature_cache`` has the layout and the checks."""

    def __post_init__(self) -> None:
        if not isinstance(self.feature_cache_dir, str) or "://" in self.feature_cache_dir:
            raise ValueError(f"TrainerConfig.feature_cache_dir must be a local path or '', got {self.feature_cache_dir!r}")
        check_precision(self.precision, "TrainerConfig.precision")
        if not isinstance(self.reference_model_paths, bool):
            raise ValueError(f"TrainerConfig.reference_model_paths must be a bool, got {self.reference_model_paths!r}")
        check_int(self, "checkpoint_every")
        check_int(self, "keep_checkpoints")
        check_int(self, "log_every")
        check_int(self, "torch_num_threads", allow_zero=True)
        if not (self.device == "cpu" or self.device.startswith("cuda") or self.device == "mps"):
            raise ValueError(f"TrainerConfig.device must be cpu, cuda[:i] or mps, got {self.device!r}")


@dataclass
class DistillTeacherConfig:
    """Which teacher distillation uses."""

    kind: str = "point_expert"
    """"point_expert" (scripted expert of the point task) or "checkpoint" (a Policy directory)."""
    checkpoint: str = ""
    """Policy checkpoint directory for ``kind="checkpoint"``."""
    expert_quality: float = 1.0
    """Quality of the scripted point expert (1 = clean)."""

    def __post_init__(self) -> None:
        if self.kind not in TEACHERS:
            raise ValueError(f"DistillTeacherConfig.kind must be one of {TEACHERS}, got {self.kind!r}")
        if self.kind == "checkpoint" and not self.checkpoint:
            raise ValueError("DistillTeacherConfig.checkpoint is required for kind='checkpoint'")
        if not 0.0 <= self.expert_quality <= 1.0:
            raise ValueError(f"DistillTeacherConfig.expert_quality must be in [0, 1], got {self.expert_quality}")


@dataclass
class RunConfig:
    """Everything a training run needs (one YAML file)."""

    seed: int = 0
    """Seed of torch / numpy / random and of the samplers."""
    policy: PolicySpec = field(default_factory=PolicySpec)
    data: DataConfig = field(default_factory=DataConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    il: ILConfig = field(default_factory=ILConfig)
    critic_warmup: CriticWarmupConfig = field(default_factory=CriticWarmupConfig)
    offline_rl: OfflineRLConfig = field(default_factory=OfflineRLConfig)
    online_rl: OnlineRLConfig = field(default_factory=OnlineRLConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    teacher: DistillTeacherConfig = field(default_factory=DistillTeacherConfig)

    def __post_init__(self) -> None:
        check_int(self, "seed", allow_zero=True)
        if self.data.generate_point_demos and self.env.task != "point":
            raise ValueError(f"data.generate_point_demos makes point-task demonstrations; task {self.env.task!r} "
                             "needs its own offline store (data.offline_uri)")

    # -- building from plain data (YAML / JSON) -----------------------------------------------
    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        def critic(d: Any) -> CriticConfig:
            return build_dataclass(CriticConfig, d)

        def actor(d: Any) -> ActorConfig:
            return build_dataclass(ActorConfig, d)

        def rl(kind: type) -> Any:
            return lambda d: build_dataclass(kind, d, {"critic": critic, "actor": actor})

        def trainer(d: Any) -> TrainerConfig:
            return build_dataclass(TrainerConfig, d, {"eval": lambda e: build_dataclass(EvalConfig, e)})

        return build_dataclass(cls, data, {
            "policy": lambda d: build_dataclass(PolicySpec, d, {
                "resnet": ResNetEncoderConfig.from_dict, "dinov2": DinoV2EncoderConfig.from_dict}),
            "data": lambda d: build_dataclass(DataConfig, d),
            "env": lambda d: build_dataclass(EnvConfig, d, {
                "gymnasium": lambda g: build_dataclass(GymnasiumEnvConfig, g)}),
            "trainer": trainer,
            "il": lambda d: build_dataclass(ILConfig, d),
            "critic_warmup": lambda d: build_dataclass(CriticWarmupConfig, d, {"critic": critic}),
            "offline_rl": rl(OfflineRLConfig),
            "online_rl": rl(OnlineRLConfig),
            "distill": lambda d: build_dataclass(DistillConfig, d),
            "teacher": lambda d: build_dataclass(DistillTeacherConfig, d),
        })

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


def load_config(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Read a YAML run config (``yaml.safe_load``: plain data only) and build a :class:`RunConfig`.

    ``overrides`` maps dotted keys (``"il.steps"``) to values applied before validation.
    """
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a run config must be a YAML mapping")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {dotted!r}: {key!r} is not a section")
        node[leaf] = value
    try:
        return RunConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
