"""learner_node: Stage IV online RL on the episodes the robot announces (paper §IV-D d, Alg. 3).

Data flow (docs/design.md §4)::

    /sernf/replay (ReplayEpisode) --> cheap checks (fields, location) --> journal "accepted"
                                        | queue (never dropped)
    ingest thread:  validate against the store, copy into <output_dir>/online_replay.zarr
                                        | ready episodes
    train thread:   every K episodes: U updates of OnlineRL on MixedSampler batches
                    (offline demos : online episodes = rho : 1-rho, BC term on offline only)
                    -> resumable checkpoint <output_dir>/checkpoints/step-N/ (atomic)
                    -> /sernf/checkpoint (CheckpointAvailable: policy dir, step, stage, sha256)

Why these pieces:

* **Rounds of K episodes → U updates.** The paper's online iterations collect 10 rollouts and
  then train 500 steps (§V-B 3, G2); ``episodes_per_update`` (K) and ``updates_per_round`` (U)
  are those two numbers. Rounds are cut strictly in arrival order, K episodes each.
* **Threads.** Ingestion (disk / network of unknown speed) and training (seconds to minutes)
  run on worker threads, so the node keeps answering: announcements that arrive while a round
  trains are validated and ingested at once and wait for the next round. A rejected
  announcement is logged with its reason, counted on /diagnostics, and leaves the online store
  unchanged (see :mod:`sernf_learner.replay_ingest`).
* **Crash safety.** An announcement is journaled (fsynced) before it is queued; a round's
  checkpoint records which journal entries it trained on. A learner killed at any moment
  restarts from its last checkpoint — policy, target critics, optimiser moments, sampler and
  RNG states, update count — and re-validates and re-processes every journal entry that no
  checkpoint covers (the copy into the online store is idempotent). The step count continues.
* **Start-up.** Either resume from ``output_dir`` (a learner checkpoint exists), or run the
  trainer's offline stages first (``run_offline_stages_on_start``: e.g. critic warm-up and
  offline RL from ``initial_checkpoint``, Alg. 3 Stages II–III, resumable by themselves), or
  start directly from ``initial_checkpoint`` — which must have a critic: Stage IV trains actor
  and critic. The target critics of a fresh start are copies of the checkpoint's critic (the
  Policy format does not carry targets), the optimisers start fresh.

The starting checkpoint is announced (``announce_initial_checkpoint``) so a policy node gets
its first model, and the current one is announced again whenever a new subscriber appears on
the checkpoint topic (a policy node started after the learner).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import queue
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import PublisherEventCallbacks
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from sernf_data.labels import LabelSettings
from sernf_data.ros.diagnostics import diagnostic_array
from sernf_data.ros.parameters import declare_config
from sernf_data.ros.spin import spin_node
from sernf_data.store import EpisodeStore, StoreSpec
from sernf_interfaces.msg import CheckpointAvailable, ReplayEpisode
from sernf_learner.configs import RunConfig, load_config
from sernf_learner.metrics import MetricsLogger
from sernf_learner.online_rl import OnlineRL, OnlineRLConfig
from sernf_learner.replay_ingest import (
    REJECT_REASONS,
    Announcement,
    IngestResult,
    Journal,
    ReplayIngestor,
    ReplayLocations,
    ReplayRejected,
    check_announcement_fields,
    spec_mismatch,
)
from sernf_learner.td_targets import TargetCritic
from sernf_learner.trainer import (
    flatten_state,
    rng_state,
    seed_everything,
    set_rng_state,
    unflatten_state,
)
from sernf_learner.transitions import ChunkTiming, MixedSampler, TransitionSampler
from sernf_learner.value_support import check_value_support, returns_to_go_range
from sernf_policy.announcement_auth import (
    CHECKPOINT_KIND,
    REPLAY_KIND,
    checkpoint_fields,
    load_optional_key,
    replay_fields,
)
from sernf_policy.checkpoint import recover_stale_temps

__all__ = ["LearnerNode", "LearnerNodeConfig", "OnlineLearner", "main"]

NODE_NAME = "learner"
STAGE = "online_rl"
#: Stages the learner may run before online RL (``offline_stages``), in Alg. 3 order.
OFFLINE_STAGES = ("il", "critic_warmup", "offline_rl")
ONLINE_STORE = "online_replay.zarr"
JOURNAL = "journal.jsonl"
CHECKPOINTS = "checkpoints"
STATE_FORMAT = 1
STATE_KIND = "sernf-learner-online"
_LOG_THROTTLE_S = 2.0
LOCK_FILE = ".learner.lock"
#: /sernf/checkpoint: reliable, transient local, the latest kept (the policy node's profile):
#: a policy node that starts, or restarts, after the announcement still gets it.
CHECKPOINT_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)


# ------------------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class LearnerNodeConfig:
    """Parameters of learner_node (declared as ROS parameters with these defaults).

    Relative paths are relative to the node's working directory.
    """

    output_dir: str = "results/learner"
    """Run directory: online store, journal, checkpoints, metrics (created if missing). A
    learner restarted with the same output_dir resumes from its last checkpoint."""

    run_config: str = ""
    """RunConfig YAML (the trainer's config type, e.g. config/point_offline.yaml): seed, γ,
    device, TensorBoard, the online_rl section (critic / actor lr, weight decay, BC weight λ,
    batch size, ρ, updates per iteration) and, for run_offline_stages_on_start, the model and
    offline stages. Empty: RunConfig defaults (paper G2)."""

    initial_checkpoint: str = ""
    """Policy directory online RL starts from (e.g. the output of offline RL,
    <run>/policy_offline_rl); it must have a critic. Ignored when the learner resumes from
    its own checkpoint; with run_offline_stages_on_start the offline stages start from it."""

    offline_store_uri: str = ""
    """Offline (demonstration) store mixed into every batch; a path or fsspec URL. Empty: the
    run config's data.offline_uri (relative to output_dir, the trainer's convention)."""

    replay_root: str = ""
    """Local replay stores announced on the replay topic must lie inside this directory (after
    resolving '..' and symlinks). Empty: no local store is accepted."""

    allowed_url_prefixes: tuple[str, ...] = ()
    """URL prefixes (e.g. s3://bucket/replay/) under which announced remote stores are accepted."""

    episodes_per_update: int = 0
    """K: one training round after every K ingested episodes (paper §V-B: 10 rollouts per
    online iteration). 0: the run config's online_rl.episodes_per_iteration."""

    updates_per_round: int = 0
    """U: gradient updates per round (paper §V-B: 500 per iteration). 0: the run config's
    online_rl.updates_per_iteration."""

    batch_size: int = 0
    """Transitions per update (G2: 48 scissors, 512 cube). 0: the run config's online_rl.batch_size."""

    rho: float = -1.0
    """Fraction of offline samples per batch (G2: 0.5, Ball et al.). Negative: the run config's
    online_rl.rho."""

    run_offline_stages_on_start: bool = False
    """On a fresh start (no learner checkpoint yet) first run offline_stages with the trainer
    (into <output_dir>/offline, resumable) and start online RL from their result. Needs run_config."""

    offline_stages: tuple[str, ...] = ("critic_warmup", "offline_rl")
    """Stages run by run_offline_stages_on_start, in order (subset of il, critic_warmup, offline_rl)."""

    announce_initial_checkpoint: bool = True
    """Announce the starting checkpoint (initial or offline-stage result) on the checkpoint
    topic so the policy node gets its first model. A resumed learner always re-announces its
    latest checkpoint (the policy node may have restarted too)."""

    keep_checkpoints: int = 3
    """Learner checkpoints kept on disk (older ones are deleted; the policy node may still be
    loading the previous one, so keep at least 2)."""

    device: str = ""
    """Torch device for training (cpu, cuda, cuda:1); empty: the run config's trainer.device."""

    torch_num_threads: int = 0
    """Torch intra-op threads for training; 0: torch's default."""

    replay_topic: str = "/sernf/replay"
    """sernf_interfaces/ReplayEpisode announcements of committed episodes (input)."""

    checkpoint_topic: str = "/sernf/checkpoint"
    """sernf_interfaces/CheckpointAvailable announcements of new checkpoints (output)."""

    diagnostics_period_s: float = 1.0
    """Period of the learner's /diagnostics status (also sent after rejections and checkpoints)."""

    watch_stores: tuple[str, ...] = ()
    """Replay stores (paths under replay_root or URLs under allowed_url_prefixes) the learner
    reconciles with at start and every reconcile_period_s: every committed episode it has not
    ingested yet is ingested, announced or not (announcements only cut the latency)."""

    reconcile_period_s: float = 5.0
    """Seconds between reconciliations with watch_stores."""

    announce_output_dir: str = ""
    """output_dir as the policy node's machine sees it, when the learner runs on another
    machine and shares output_dir over NFS / sshfs mounted at a different path there (e.g.
    /mnt/trainer/learner on the robot PC for /data/sernf/learner here): announcements name
    <announce_output_dir>/checkpoints/<checkpoint>/policy. Empty: the local path (the same
    path on both machines, or one machine). The policy node still checks the directory against
    its checkpoint_roots and the announced sha256, so a wrong mapping is refused, never loaded."""

    checkpoint_key_file: str = ""
    """Key (file, mode 0600, made by sernf-keys) to sign checkpoint announcements with (the
    policy node's checkpoint_key_file); empty: announcements go out unsigned."""

    replay_key_file: str = ""
    """Key replay announcements must be signed with (the policy node's replay_key_file); set:
    unsigned or wrongly signed announcements are refused. Episodes found by reconciliation
    need no signature: they come from the configured watch_stores."""

    reward_source: str = "recorded"
    """Rewards the learner trains on from its online store: recorded (as the episodes were
    recorded) or labels (each episode's newest label set from rqt_sernf_rewards / sernf-label).
    Written into the online store's label settings at start (sernf_data.labels)."""

    labels_required_for: tuple[str, ...] = ()
    """Episode sources (e.g. online) whose episodes are not trained on until a person saved a
    label set for them; /diagnostics reports how many wait (episodes_awaiting_labels)."""

    def __post_init__(self) -> None:
        LabelSettings(reward_source=self.reward_source, require_labels_for=tuple(self.labels_required_for))  # validates
        for name in ("allowed_url_prefixes", "offline_stages", "watch_stores", "labels_required_for"):
            object.__setattr__(self, name, tuple(str(v) for v in getattr(self, name)))
        if not self.output_dir:
            raise ValueError("output_dir must not be empty")
        if self.announce_output_dir and ("://" in self.announce_output_dir or not os.path.isabs(self.announce_output_dir)):
            raise ValueError(f"announce_output_dir must be an absolute path (the shared output_dir's mount point "
                             f"on the policy's machine), got {self.announce_output_dir!r}")
        for name in ("episodes_per_update", "updates_per_round", "batch_size", "torch_num_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0 (0: from the run config), got {value!r}")
        if not (isinstance(self.rho, int | float) and math.isfinite(self.rho) and self.rho <= 1.0):
            raise ValueError(f"rho must be in [0, 1] (negative: from the run config), got {self.rho!r}")
        if isinstance(self.keep_checkpoints, bool) or self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints!r}")
        if not (math.isfinite(self.reconcile_period_s) and self.reconcile_period_s > 0):
            raise ValueError(f"reconcile_period_s must be > 0, got {self.reconcile_period_s}")
        if not (math.isfinite(self.diagnostics_period_s) and self.diagnostics_period_s > 0):
            raise ValueError(f"diagnostics_period_s must be > 0, got {self.diagnostics_period_s}")
        bad = [s for s in self.offline_stages if s not in OFFLINE_STAGES]
        if bad or not self.offline_stages or list(self.offline_stages) != sorted(
                self.offline_stages, key=OFFLINE_STAGES.index) or len(set(self.offline_stages)) != len(self.offline_stages):
            raise ValueError(f"offline_stages must be a non-empty ordered subset of {list(OFFLINE_STAGES)}, "
                             f"got {list(self.offline_stages)}")
        if self.run_offline_stages_on_start and not self.run_config:
            raise ValueError("run_offline_stages_on_start needs run_config (the stages' settings)")
        if not self.replay_topic or not self.checkpoint_topic:
            raise ValueError("replay_topic and checkpoint_topic must not be empty")
        ReplayLocations(self.replay_root, self.allowed_url_prefixes)  # validates the prefixes

    def announced_location(self, policy_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str]) -> str:
        """What CheckpointAvailable.uri names for ``policy_dir`` (inside ``output_dir``): the
        path itself, or the same path under ``announce_output_dir``."""
        if not self.announce_output_dir:
            return str(policy_dir)
        relative = Path(os.path.abspath(policy_dir)).relative_to(os.path.abspath(output_dir))
        return str(Path(self.announce_output_dir) / relative)

    def online_config(self, run: RunConfig) -> OnlineRLConfig:
        """The run config's Stage IV settings with this node's overrides (validated)."""
        o = run.online_rl
        return dataclasses.replace(
            o,
            episodes_per_iteration=self.episodes_per_update or o.episodes_per_iteration,
            updates_per_iteration=self.updates_per_round or o.updates_per_iteration,
            batch_size=self.batch_size or o.batch_size,
            rho=float(self.rho) if self.rho >= 0 else o.rho,
        )


# ------------------------------------------------------------------- online learner (pure)


@dataclass(frozen=True)
class SavedCheckpoint:
    """A learner checkpoint on disk and what announces it."""

    name: str
    """Directory name under <output_dir>/checkpoints."""
    path: Path
    """The checkpoint directory."""
    policy_dir: Path
    """Its Policy directory: what CheckpointAvailable.uri names."""
    sha256: str
    """sha256 of the policy's weights file."""
    step: int
    """Total gradient updates behind the policy."""
    stage: str = STAGE
    """Stage that produced it."""

    @property
    def config_sha256(self) -> str:
        """sha256 of the policy's config.json (announced and signed with the weights' sha256)."""
        from sernf_policy.checkpoint import CONFIG_FILE, file_sha256

        return file_sha256(self.policy_dir / CONFIG_FILE)


def latest_checkpoint(out: Path) -> Path | None:
    """The learner checkpoint <out>/checkpoints/latest.json points to (None if there is none)."""
    pointer = out / CHECKPOINTS / "latest.json"
    if not pointer.exists():
        return None
    name = json.loads(pointer.read_text(encoding="utf-8"))["checkpoint"]
    if not isinstance(name, str) or "/" in name or name.startswith("."):
        raise ValueError(f"{pointer}: bad checkpoint name {name!r}")
    path = out / CHECKPOINTS / name
    if not (path / "learner.json").is_file():
        raise ValueError(f"{pointer} points to {path}, which is not a complete learner checkpoint")
    return path


def read_state(checkpoint: Path) -> dict[str, Any]:
    """The JSON part of a learner checkpoint (format-checked)."""
    state = json.loads((checkpoint / "learner.json").read_text(encoding="utf-8"))
    if state.get("kind") != STATE_KIND or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{checkpoint}: not a learner checkpoint of format {STATE_FORMAT} "
                         f"(kind {state.get('kind')!r}, format {state.get('format')!r})")
    return state


def checkpoint_step(policy_dir: str | os.PathLike[str]) -> tuple[int, str]:
    """(step, stage) from a Policy checkpoint's metadata; (0, "") when absent."""
    from sernf_policy.checkpoint import CONFIG_FILE

    metadata = json.loads((Path(policy_dir) / CONFIG_FILE).read_text(encoding="utf-8")).get("metadata") or {}
    step = metadata.get("step", 0) if isinstance(metadata, dict) else 0
    stage = metadata.get("stage", "") if isinstance(metadata, dict) else ""
    step = int(step) if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else 0
    return step, str(stage)


def policy_spec(policy: Any, control_rate_hz: float) -> StoreSpec:
    """The replay schema a policy consumes (observation spec, action dim) at a control rate."""
    cfg = policy.config
    obs = {k: {"shape": list(v.shape), "kind": v.kind} for k, v in cfg.observation_spec.items()}
    return StoreSpec(obs=obs, action_dim=cfg.action_dim, control_rate_hz=control_rate_hz)


class OnlineLearner:
    """Stage IV state and updates, without ROS: policy + target critics + OnlineRL optimisers
    + MixedSampler (offline store : the learner's online store = ρ : 1-ρ), resumable.

    ``step`` counts every gradient update behind the policy (the initial checkpoint's step,
    e.g. the offline stages', plus the online updates), as CheckpointAvailable.step does.
    """

    def __init__(
        self,
        policy: Any,
        config: OnlineRLConfig,
        offline_store: EpisodeStore,
        online_uri: str,
        out: Path,
        *,
        gamma: float,
        seed: int,
        step: int,
        keep_checkpoints: int = 3,
        origin: str = "",
        precision: str = "fp32",
    ) -> None:
        if policy.critic is None:
            raise ValueError("the policy has no critic: online RL (Stage IV) trains actor and critic; "
                             "start from the output of critic warm-up / offline RL")
        problem = spec_mismatch(policy_spec(policy, offline_store.spec.control_rate_hz), offline_store.spec)
        if problem:
            raise ValueError(f"the policy does not fit the offline store {offline_store.uri!r}: {problem}")
        snap = offline_store.load_arrays()
        check_value_support(policy.config.critic.v_min, policy.config.critic.v_max,
                            returns_to_go_range(snap.arrays["reward"], snap.episode_ends, gamma),
                            f"the offline store {offline_store.uri}")
        self.policy = policy
        self.config = config
        self.out = Path(out)
        self.step = int(step)
        self.rounds = 0
        self.keep_checkpoints = keep_checkpoints
        self.origin = origin
        c = policy.config
        # The policy's own chunk timing (docs/design.md §6): transitions must be cut as it acts.
        # td_horizon: the critic's own TD step (H; 1 for a per-step critic, an ablation).
        self.timing = timing = ChunkTiming(T=c.obs_history, P=c.prefix_len, H=c.horizon, gamma=gamma,
                                           td_horizon=c.critic_horizon)
        self.target = TargetCritic(policy)
        self.rl = OnlineRL(policy, self.target, config, precision)  # the run config's trainer.precision
        # Our own read instance: the ingest thread writes through another one (one per thread).
        self.online_store = EpisodeStore(online_uri, mode="r")
        s_off, s_on, s_mix = (int(x) for x in np.random.SeedSequence([seed, 4]).generate_state(3))
        self.sampler = MixedSampler(
            TransitionSampler(offline_store, timing, config.batch_size, s_off),
            TransitionSampler(self.online_store, timing, config.batch_size, s_on, is_offline=False),
            rho=config.rho, seed=s_mix, batch_size=config.batch_size,
        )

    # -- training ---------------------------------------------------------------------------
    def run_round(self, num_updates: int, stop: threading.Event | None = None,
                  progress: Any = None) -> dict[str, float] | None:
        """``num_updates`` updates on mixed batches after picking up newly ingested episodes.

        Returns the last update's metrics plus ``time/*`` rates, or None if ``stop`` was set
        (the round is abandoned: nothing of it is checkpointed, its episodes stay pending).
        """
        self.sampler.refresh()
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        for i in range(num_updates):
            if stop is not None and stop.is_set():
                return None
            metrics = self.rl.update(self.sampler.sample())
            self.step += 1
            if progress is not None:
                progress(i + 1)
        elapsed = time.perf_counter() - t0
        self.rounds += 1
        metrics["time/updates_per_s"] = num_updates / max(elapsed, 1e-9)
        metrics["time/round_s"] = elapsed
        metrics["online/episodes"] = float(self.sampler.online.num_episodes)
        metrics["online/transitions"] = float(self.sampler.online.num_transitions)
        return metrics

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, done_seqs: set[int]) -> SavedCheckpoint:
        """Write everything a restart needs, atomically (temp dir + rename, then latest.json).

        ``done_seqs``: journal entries whose episodes this policy has been trained on.
        """
        tensors: dict[str, Any] = {
            f"target/{k}": v.detach().cpu().clone().contiguous() for k, v in self.target.tensors().items()
        }
        state = {
            "format": STATE_FORMAT,
            "kind": STATE_KIND,
            "step": self.step,
            "rounds": self.rounds,
            "done_seqs": sorted(int(s) for s in done_seqs),
            "origin": self.origin,
            "online_config": dataclasses.asdict(self.config),
            "optimizers": flatten_state(self.rl.state_dict(), "optimizers", tensors),
            "sampler": flatten_state(self.sampler.state_dict(), "sampler", tensors),
            "rng": flatten_state(rng_state(), "rng", tensors),
        }
        root = self.out / CHECKPOINTS
        root.mkdir(parents=True, exist_ok=True)
        name = f"step-{self.step:010d}"
        final = root / name
        tmp = root / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            sha = self.policy.save(tmp / "policy", metadata={"step": self.step, "stage": STAGE})
            _write_tensors(tmp / "learner.safetensors", tensors)
            _write_durable(tmp / "learner.json", json.dumps(state, indent=1).encode())
            if final.exists():  # left by a run killed after this rename but before latest.json
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        pointer = root / f".latest.json.tmp-{uuid.uuid4().hex[:8]}"
        _write_durable(pointer, json.dumps({"checkpoint": name}).encode())
        os.replace(pointer, root / "latest.json")  # the commit point of the checkpoint
        self._prune(root, keep=name)
        return SavedCheckpoint(name, final, final / "policy", sha, self.step)

    def _prune(self, root: Path, keep: str) -> None:
        ckpts = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
        for p in ckpts[: max(len(ckpts) - self.keep_checkpoints, 0)]:
            if p.name != keep:
                shutil.rmtree(p, ignore_errors=True)

    @classmethod
    def resume(cls, checkpoint: Path, config: OnlineRLConfig, offline_store: EpisodeStore,
               online_uri: str, out: Path, *, gamma: float, seed: int, device: str, keep_checkpoints: int = 3,
               warn: Any = None, precision: str = "fp32") -> tuple[OnlineLearner, dict[str, Any]]:
        """Rebuild the learner saved in ``checkpoint``; returns it and the checkpoint's JSON state."""
        from safetensors.torch import load_file

        from sernf_policy.policy import Policy

        state = read_state(checkpoint)
        tensors = load_file(str(checkpoint / "learner.safetensors"))
        policy = Policy.load(checkpoint / "policy", device=device)
        learner = cls(policy, config, offline_store, online_uri, out, gamma=gamma, seed=seed, step=int(state["step"]),
                      keep_checkpoints=keep_checkpoints, origin=str(state.get("origin", "")), precision=precision)
        learner.rounds = int(state["rounds"])
        learner.target.load_tensors({k[len("target/"):]: v for k, v in tensors.items() if k.startswith("target/")})
        learner.rl.load_state_dict(unflatten_state(state["optimizers"], tensors))
        # Optimiser state dicts carry their hyperparameters: the configured ones win, so a
        # learner restarted with a new lr uses it.
        for opt, cfg in ((learner.rl.critic_optimizer, config.critic), (learner.rl.actor_optimizer, config.actor)):
            for group in opt.param_groups:
                group["lr"], group["weight_decay"] = cfg.lr, cfg.weight_decay
        try:
            learner.sampler.load_state_dict(unflatten_state(state["sampler"], tensors))
        except ValueError as exc:
            # batch_size / rho changed since the checkpoint: fresh sampler RNGs are harmless.
            if warn is not None:
                warn(f"sampler state not restored ({exc}); sampling continues with fresh RNGs")
        set_rng_state(unflatten_state(state["rng"], tensors))
        return learner, state


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _write_tensors(path: Path, tensors: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def resolve_offline_uri(cfg: LearnerNodeConfig, run: RunConfig, out: Path) -> str:
    """The node's offline_store_uri, else the run config's (relative to ``out``, as the trainer does)."""
    if cfg.offline_store_uri:
        uri = cfg.offline_store_uri
        return uri if "://" in uri else os.path.abspath(uri)
    uri = run.data.offline_uri
    return uri if "://" in uri or os.path.isabs(uri) else str(out / uri)


def run_offline_stages(cfg: LearnerNodeConfig, run: RunConfig, out: Path) -> Path:
    """Run the trainer's offline stages into <out>/offline (resuming an interrupted run);
    returns the Policy directory of the last stage."""
    from sernf_learner.trainer import Trainer

    run = dataclasses.replace(
        run,
        data=dataclasses.replace(run.data, offline_uri=resolve_offline_uri(cfg, run, out)),
        trainer=dataclasses.replace(run.trainer, progress=False),
    )
    if cfg.device:
        run = dataclasses.replace(run, trainer=dataclasses.replace(run.trainer, device=cfg.device))
    if cfg.initial_checkpoint:
        # The trainer cuts transitions by run.policy's T, P, H; starting from a checkpoint, its
        # own timing is the one that fits the model (docs/design.md §6), so it wins.
        from sernf_policy.checkpoint import CONFIG_FILE

        model = json.loads((Path(cfg.initial_checkpoint) / CONFIG_FILE).read_text(encoding="utf-8"))["config"]
        run = dataclasses.replace(run, policy=dataclasses.replace(
            run.policy, obs_history=model["obs_history"], prefix_len=model["prefix_len"], horizon=model["horizon"]))
    trainer = Trainer(run, out / "offline", list(cfg.offline_stages), resume=True,
                      init_policy=cfg.initial_checkpoint or None)
    trainer.run()
    result = out / "offline" / f"policy_{cfg.offline_stages[-1]}"
    if not (result / "config.json").is_file():
        raise RuntimeError(f"the offline stages finished without writing {result}")
    return result


# -------------------------------------------------------------------------------------- node


@dataclass
class _Stats:
    """Values reported on /diagnostics (guarded by LearnerNode._lock)."""

    state: str = "starting"
    accepted: int = 0
    """Announcements accepted into the queue by this process (re-queued journal entries not included)."""
    ingested: int = 0
    repeats: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))
    last_rejection: str = ""
    ingest_errors: int = 0
    last_error: str = ""
    step: int = -1
    rounds: int = 0
    updates_in_round: int = 0
    updates_per_s: float = float("nan")
    last_checkpoint_uri: str = ""
    last_checkpoint_step: int = -1
    checkpoints_announced: int = 0
    reconciled: int = 0
    """Episodes found in watch_stores that no announcement had brought (queued for ingestion)."""
    reconcile_errors: int = 0


@dataclass(frozen=True)
class _Ready:
    seq: int
    result: IngestResult


class LearnerNode(Node):
    """See the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.cfg: LearnerNodeConfig = declare_config(self, LearnerNodeConfig)
        self.run_config = load_config(self.cfg.run_config) if self.cfg.run_config else RunConfig()
        self.online_config = self.cfg.online_config(self.run_config)
        self.out = Path(self.cfg.output_dir).absolute()
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock_fh = _lock_output_dir(self.out)
        # We are the only writer now: what a killed predecessor left half-written goes.
        for line in recover_stale_temps(self.out / CHECKPOINTS):
            self.get_logger().warning(f"start-up clean-up: {line}")
        # A new id per process: the policy node requires increasing steps within a run.
        self.run_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        self._checkpoint_key = load_optional_key(self.cfg.checkpoint_key_file)
        self._replay_key = load_optional_key(self.cfg.replay_key_file)
        # The learner's own directory is off limits: ingesting its online store into itself loops.
        self.locations = ReplayLocations(self.cfg.replay_root, self.cfg.allowed_url_prefixes,
                                         forbidden=(str(self.out),))
        for uri in self.cfg.watch_stores:
            try:
                self.locations.resolve(uri)
            except ReplayRejected as exc:
                raise ValueError(f"watch_stores: {exc}") from None
        if self.cfg.torch_num_threads > 0:
            import torch

            torch.set_num_threads(self.cfg.torch_num_threads)

        self._lock = threading.Lock()
        self._label_view: EpisodeStore | None = None  # read-only view for the labels count
        self._label_view_lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._ingest_ready = threading.Event()
        self._stats = _Stats()
        self._ready: list[_Ready] = []
        self._claimed: set[tuple[str, str]] = set()  # episodes trained on or waiting in _ready
        # Episode ids with a journal entry not yet processed by the ingest thread (-> count),
        # so reconciliation does not queue an episode twice.
        self._pending_ids: dict[str, int] = {}
        # (store, id) that reconciliation queued and ingestion refused for good: not retried
        # until the next start.
        self._given_up: set[tuple[str, str]] = set()
        self._done_seqs: set[int] = set()
        self._current: SavedCheckpoint | None = None
        self._announce_current = False
        self._ingestor: ReplayIngestor | None = None
        self.fatal_error: BaseException | None = None

        self.journal = Journal(self.out / JOURNAL)
        self._queue: queue.Queue[tuple[int, Announcement] | None] = queue.Queue()  # unbounded: never drop
        self._requeue_pending()

        self._event_group = MutuallyExclusiveCallbackGroup()
        self._diag_group = MutuallyExclusiveCallbackGroup()
        self._checkpoint_pub = self.create_publisher(
            CheckpointAvailable, self.cfg.checkpoint_topic, CHECKPOINT_QOS,
            event_callbacks=PublisherEventCallbacks(matched=self._on_checkpoint_matched),
            callback_group=self._diag_group)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # Deep queue: a burst of announcements must reach the callback, which only journals.
        self.create_subscription(ReplayEpisode, self.cfg.replay_topic, self._on_replay, 100,
                                 callback_group=self._event_group)
        self.create_timer(self.cfg.diagnostics_period_s, self.publish_diagnostics, callback_group=self._diag_group)

        self._ingest_thread = threading.Thread(target=self._ingest_main, name="ingest", daemon=True)
        self._train_thread = threading.Thread(target=self._train_main, name="train", daemon=True)
        self._ingest_thread.start()
        self._train_thread.start()
        o = self.online_config
        self.get_logger().info(
            f"learner up: output {self.out}, K={o.episodes_per_iteration} episodes -> U={o.updates_per_iteration} "
            f"updates per round, batch {o.batch_size}, rho {o.rho:g}, replay root "
            f"{self.cfg.replay_root or '(none)'}, URL prefixes {list(self.cfg.allowed_url_prefixes) or '(none)'}; "
            f"{len(self.journal.pending(self._done_seqs))} journal entries pending")

    # ------------------------------------------------------------------------------ journal

    def _requeue_pending(self) -> None:
        """Queue the journal entries no checkpoint covers, in acceptance order (before any new
        announcement: the subscription only fires once the executor spins)."""
        ckpt = latest_checkpoint(self.out)
        state = read_state(ckpt) if ckpt is not None else None
        covered = set(state["done_seqs"]) if state is not None else set()
        # Entries the checkpoint covers but the journal never heard of (killed between the two).
        for entry in self.journal.pending():
            if entry.seq in covered:
                self.journal.mark(entry.seq, "done", step=int(state["step"]), checkpoint=ckpt.name, recovered=True)
        done = {seq for seq in range(self.journal.next_seq) if self.journal.status(seq) == "done"}
        self._done_seqs = done
        for seq in done:
            key = self.journal.ingested_episode(seq)
            if key is not None:
                self._claimed.add(key)
        pending = self.journal.pending()
        for entry in pending:
            self._enqueue(entry.seq, entry.announcement)
        if pending:
            self.get_logger().info(f"re-processing {len(pending)} journal entries not covered by a checkpoint "
                                   f"(seq {pending[0].seq}..{pending[-1].seq})")

    # -------------------------------------------------------------------------- replay input

    def _on_replay(self, msg: ReplayEpisode) -> None:
        ann = Announcement(episode_id=str(msg.episode_id), uri=str(msg.uri), num_steps=int(msg.num_steps),
                           source=str(msg.source), episode_return=float(msg.episode_return))
        try:
            check_announcement_fields(ann)
            if self._replay_key is not None:
                problem = self._replay_key.verify(REPLAY_KIND, replay_fields(
                    episode_id=msg.episode_id, uri=msg.uri, num_steps=msg.num_steps,
                    episode_return=msg.episode_return, source=msg.source, subtask_names=list(msg.subtask_names),
                    subtask_success=list(msg.subtask_success)), str(msg.key_id), str(msg.signature))
                if problem:
                    raise ReplayRejected("signature", problem)
            self.locations.resolve(ann.uri)
        except ReplayRejected as exc:
            self._rejected(None, ann, exc)
            return
        seq = self.journal.accept(ann)  # durable before it is queued: survives a kill
        self._enqueue(seq, ann)
        with self._lock:
            self._stats.accepted += 1
        self.get_logger().info(f"replay episode {ann.episode_id} ({ann.num_steps} steps, {ann.uri}) accepted "
                               f"as journal entry {seq}; queue {self._queue.qsize()}")

    def _enqueue(self, seq: int, ann: Announcement) -> None:
        with self._lock:
            self._pending_ids[ann.episode_id] = self._pending_ids.get(ann.episode_id, 0) + 1
        self._queue.put((seq, ann))

    def _dequeued(self, ann: Announcement) -> None:
        with self._lock:
            left = self._pending_ids.get(ann.episode_id, 0) - 1
            if left > 0:
                self._pending_ids[ann.episode_id] = left
            else:
                self._pending_ids.pop(ann.episode_id, None)

    def _reconcile(self, ingestor: ReplayIngestor) -> int:
        """Queue every committed episode of watch_stores that is neither in the online store
        nor waiting in the queue; returns how many. Runs on the ingest thread (the online
        store's only writer, so its ids are current).

        This is what makes delivery at-least-once: an episode committed while the learner was
        down, or whose announcement was lost, is found here; the announcement only makes it
        arrive sooner. Ingestion stays exactly-once: ids already ingested are skipped here,
        and the ingestor recognises a second copy of the same episode.
        """
        have = set(ingestor.online.episode_ids())
        queued = 0
        for uri in self.cfg.watch_stores:
            try:
                resolved = self.locations.resolve(uri)
                store = EpisodeStore(resolved, mode="r")
                ids = store.episode_ids()
            except FileNotFoundError:
                continue  # nothing committed there yet
            except Exception as exc:  # noqa: BLE001 - a watched store we cannot read: report, retry later
                with self._lock:
                    self._stats.reconcile_errors += 1
                    self._stats.last_error = f"reconciling with {uri}: {type(exc).__name__}: {exc}"
                self.get_logger().warning(f"cannot reconcile with watched store {uri}: {exc}",
                                          throttle_duration_sec=30.0)
                continue
            for episode_id in ids:
                with self._lock:
                    skip = (episode_id in have or episode_id in self._pending_ids
                            or (resolved, episode_id) in self._given_up)
                if skip:
                    continue
                meta = store.episode_metadata(episode_id)
                ann = Announcement(episode_id, resolved, int(meta["length"]), source=str(meta.get("source", "")),
                                   episode_return=float(meta.get("return", float("nan"))))
                seq = self.journal.accept(ann, via="reconcile")
                self._enqueue(seq, ann)
                queued += 1
        if queued:
            with self._lock:
                self._stats.reconciled += queued
            self.get_logger().info(f"reconciliation: {queued} committed episode(s) in the watched stores were "
                                   "not ingested yet (learner down or announcement lost); queued")
        return queued

    def _rejected(self, seq: int | None, ann: Announcement, exc: ReplayRejected) -> None:
        if seq is not None:
            self.journal.mark(seq, "rejected", reason=exc.reason, detail=exc.detail)
        with self._lock:
            self._stats.rejected += 1
            self._stats.rejected_by_reason[exc.reason] += 1
            self._stats.last_rejection = f"{ann.episode_id} @ {ann.uri}: {exc}"
            rejected = self._stats.rejected
        self.get_logger().warning(f"rejected replay episode {ann.episode_id!r} ({ann.uri}): {exc} "
                                  f"[{rejected} rejected so far; nothing ingested]")
        self.publish_diagnostics()

    def _ingest_main(self) -> None:
        try:
            self._ingest_loop()
        except Exception as exc:  # noqa: BLE001 - e.g. the journal cannot be written: reported, non-zero exit
            self._fatal("ingestion", exc)

    def _ingest_loop(self) -> None:
        """Ingest thread: validate + copy each queued announcement, in order."""
        while not self._ingest_ready.is_set():
            if self._stop.wait(0.1):
                return
        ingestor = self._ingestor
        assert ingestor is not None
        next_reconcile = 0.0  # at once: episodes committed while we were down
        while not self._stop.is_set():
            if self.cfg.watch_stores and time.monotonic() >= next_reconcile:
                self._reconcile(ingestor)
                next_reconcile = time.monotonic() + self.cfg.reconcile_period_s
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is None:
                return
            seq, ann = item
            self._dequeued(ann)
            try:
                result = ingestor.ingest(ann)
            except ReplayRejected as exc:
                if exc.reason not in ("store", "episode"):  # those two may change: retried
                    with self._lock:
                        self._given_up.add((ann.uri, ann.episode_id))
                self._rejected(seq, ann, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - the learner's own store failed: keep the entry pending, keep serving
                with self._lock:
                    self._stats.ingest_errors += 1
                    self._stats.last_error = f"ingesting {ann.episode_id}: {type(exc).__name__}: {exc}"
                self.get_logger().error(f"could not ingest {ann.episode_id} (journal entry {seq} stays pending, "
                                        f"retried at the next start): {type(exc).__name__}: {exc}")
                continue
            key = (result.source_uri, result.episode_id)
            self.journal.mark(seq, "ingested", uri=result.source_uri, episode_id=result.episode_id,
                              already_present=result.already_present)
            with self._cond:
                repeat = key in self._claimed
                if repeat:
                    self._stats.repeats += 1
                else:
                    self._claimed.add(key)
                    self._ready.append(_Ready(seq, result))
                    self._stats.ingested += 1
                    self._cond.notify_all()
                ready = len(self._ready)
            if repeat:
                # Announced again (or re-processed) after it was trained on / queued: no new data.
                self.journal.mark(seq, "done", repeat=True)
                self.get_logger().info(f"replay episode {ann.episode_id} was already ingested; not counted again")
            else:
                self.get_logger().info(
                    f"ingested episode {result.episode_id}: {result.num_steps} steps, return {result.episode_return:g}"
                    f"{' (copy already present)' if result.already_present else ''}; {ready} episode(s) not yet "
                    f"trained on (a round every {self.online_config.episodes_per_iteration})")

    # ------------------------------------------------------------------------------ training

    def _train_main(self) -> None:
        try:
            self._train_loop()
        except Exception as exc:  # noqa: BLE001 - reported and turned into a non-zero exit by main()
            self._fatal("training", exc)

    def _fatal(self, where: str, exc: Exception) -> None:
        """A worker cannot go on: report, stop the other worker and end the process (exit 1);
        a supervisor restarting the node resumes from the last checkpoint and the journal."""
        self.fatal_error = exc
        with self._lock:
            self._stats.state = "failed"
            self._stats.last_error = f"{where}: {type(exc).__name__}: {exc}"
        self.get_logger().fatal(f"learner failed ({where}): {type(exc).__name__}: {exc}")
        self.publish_diagnostics()
        self._stop.set()
        rclpy.try_shutdown(context=self.context)

    def _set_state(self, state: str) -> None:
        with self._lock:
            self._stats.state = state

    def _prepare(self) -> tuple[OnlineLearner, MetricsLogger]:
        """Resume, or run the offline stages, or load the initial checkpoint."""
        from sernf_policy.policy import Policy

        run, cfg = self.run_config, self.cfg
        device = cfg.device or run.trainer.device
        resume_from = latest_checkpoint(self.out)
        start_dir: Path | None = None
        if resume_from is None:
            if cfg.run_offline_stages_on_start:
                self._set_state("offline_stages")
                self.get_logger().info(f"running the offline stages {list(cfg.offline_stages)} into {self.out / 'offline'}")
                t0 = time.perf_counter()
                start_dir = run_offline_stages(cfg, run, self.out)
                self.get_logger().info(f"offline stages done in {time.perf_counter() - t0:.1f} s: {start_dir}")
            elif cfg.initial_checkpoint:
                start_dir = Path(cfg.initial_checkpoint).absolute()
            else:
                raise ValueError(f"nothing to start from: no learner checkpoint in {self.out / CHECKPOINTS}, "
                                 "no initial_checkpoint and run_offline_stages_on_start is false")
        offline_uri = resolve_offline_uri(cfg, run, self.out)
        try:
            offline = EpisodeStore(offline_uri, mode="r")
        except FileNotFoundError as exc:
            raise ValueError(f"offline store: {exc}") from exc
        # Created here, before the learner opens its read instance of it.
        online = EpisodeStore(str(self.out / ONLINE_STORE), mode="a", spec=offline.spec)
        # This run's label choice becomes the online store's (samplers read it from there).
        stored = online.labels.settings()
        wanted = dataclasses.replace(stored, reward_source=cfg.reward_source,
                                     require_labels_for=tuple(cfg.labels_required_for))
        if wanted != stored:
            online.labels.write_settings(wanted)
        if resume_from is not None:
            learner, state = OnlineLearner.resume(
                resume_from, self.online_config, offline, online.uri, self.out, gamma=run.data.gamma,
                seed=run.seed, device=device, precision=run.trainer.precision,
                keep_checkpoints=cfg.keep_checkpoints, warn=self.get_logger().warning)
            start = SavedCheckpoint(resume_from.name, resume_from, resume_from / "policy",
                                    _file_sha256(resume_from / "policy"), learner.step)
            self.get_logger().info(f"resumed from {resume_from} (step {learner.step}, {learner.rounds} rounds, "
                                   f"{len(state['done_seqs'])} announcements trained on)")
        else:
            assert start_dir is not None
            try:
                model = Policy.load(start_dir, device=device)
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot load the initial checkpoint {start_dir}: {exc}") from exc
            if model.critic is None:
                raise ValueError(f"initial checkpoint {start_dir} has no critic: online RL (Stage IV) trains actor "
                                 "and critic; start from the output of critic warm-up / offline RL "
                                 "(policy_offline_rl) or set run_offline_stages_on_start")
            step, stage = checkpoint_step(start_dir)
            seed_everything(run.seed)
            learner = OnlineLearner(model, self.online_config, offline, online.uri, self.out,
                                    gamma=run.data.gamma, seed=run.seed, step=step,
                                    keep_checkpoints=cfg.keep_checkpoints, origin=str(start_dir),
                                    precision=run.trainer.precision)
            start = SavedCheckpoint(start_dir.name, start_dir, start_dir, _file_sha256(start_dir), step,
                                    stage or "initial")
            self.get_logger().info(f"starting online RL from {start_dir} (step {step}, stage {stage or '?'}), "
                                   f"offline store {offline_uri} ({offline.num_episodes} episodes)")
        self._ingestor = ReplayIngestor(online, offline.spec, self.locations)
        logger = MetricsLogger(self.out, tensorboard=run.trainer.tensorboard, progress=False,
                               resume_from_step=learner.step if resume_from is not None else None)
        logger.start_stage(STAGE, total=0)
        with self._lock:
            self._current = start
            self._announce_current = cfg.announce_initial_checkpoint or resume_from is not None
            self._stats.step = learner.step
            self._stats.rounds = learner.rounds
            self._stats.last_checkpoint_uri = str(start.policy_dir)
            self._stats.last_checkpoint_step = start.step
        return learner, logger

    def _train_loop(self) -> None:
        learner, logger = self._prepare()
        self._ingest_ready.set()
        if self._announce_current:
            self._announce(self._current)
        k, u = self.online_config.episodes_per_iteration, self.online_config.updates_per_iteration
        try:
            while not self._stop.is_set():
                self._set_state("waiting")
                with self._cond:
                    while len(self._ready) < k and not self._stop.is_set():
                        self._cond.wait(0.5)
                    if self._stop.is_set():
                        return
                    batch = list(self._ready[:k])
                    self._stats.state, self._stats.updates_in_round = "training", 0
                self.get_logger().info(f"round {learner.rounds + 1}: {u} updates on {k} new episodes "
                                       f"({', '.join(r.result.episode_id for r in batch)})")
                metrics = learner.run_round(u, self._stop, self._progress)
                if metrics is None:
                    return  # shutting down mid-round: the episodes stay pending in the journal
                seqs = {r.seq for r in batch}
                saved = learner.save_checkpoint(self._done_seqs | seqs)
                for seq in sorted(seqs):
                    self.journal.mark(seq, "done", step=saved.step, checkpoint=saved.name)
                with self._cond:
                    del self._ready[:k]
                    self._done_seqs |= seqs
                    self._current = saved
                    self._announce_current = True
                    self._stats.step, self._stats.rounds = learner.step, learner.rounds
                    self._stats.state, self._stats.updates_in_round = "waiting", 0
                    self._stats.updates_per_s = metrics["time/updates_per_s"]
                    self._stats.last_checkpoint_uri, self._stats.last_checkpoint_step = str(saved.policy_dir), saved.step
                    counts = (self._stats.ingested, self._stats.rejected, len(self._ready), self._queue.qsize())
                metrics.update({
                    "online/return": float(np.mean([r.result.episode_return for r in batch])),
                    "online/success": float(np.mean([r.result.success for r in batch])),
                    "online/ingested": float(counts[0]),
                    "online/rejected": float(counts[1]),
                    "online/waiting": float(counts[2] + counts[3]),
                })
                logger.log(learner.step, metrics, stage_step=learner.rounds)
                logger.flush()
                self._announce(saved)
                self.get_logger().info(
                    f"round {learner.rounds} done: {u} updates in {metrics['time/round_s']:.1f} s "
                    f"({metrics['time/updates_per_s']:.1f} upd/s), step {learner.step}, "
                    f"critic/loss {metrics.get('critic/loss', float('nan')):.3g}, actor/q "
                    f"{metrics.get('actor/q', float('nan')):.3g}, return {metrics['online/return']:.3g}; "
                    f"checkpoint {saved.name} announced; {counts[0]} ingested, {counts[1]} rejected, "
                    f"{counts[2] + counts[3]} waiting")
        finally:
            logger.close(extra={"step": learner.step, "rounds": learner.rounds})

    def _progress(self, done: int) -> None:
        with self._lock:
            self._stats.updates_in_round = done

    # --------------------------------------------------------------------------- checkpoints

    def _announce(self, saved: SavedCheckpoint | None) -> None:
        if saved is None or not self.context.ok():
            return
        msg = CheckpointAvailable()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.uri = self.cfg.announced_location(saved.policy_dir, self.out)
        msg.step, msg.stage, msg.sha256 = int(saved.step), saved.stage, saved.sha256
        msg.run_id, msg.config_sha256 = self.run_id, saved.config_sha256
        if self._checkpoint_key is not None:
            msg.key_id = self._checkpoint_key.key_id
            msg.signature = self._checkpoint_key.sign(CHECKPOINT_KIND, checkpoint_fields(
                uri=msg.uri, step=msg.step, stage=msg.stage, sha256=msg.sha256, run_id=msg.run_id,
                config_sha256=msg.config_sha256))
        self._checkpoint_pub.publish(msg)
        with self._lock:
            self._stats.checkpoints_announced += 1
        self.get_logger().info(f"announced checkpoint {msg.uri} (step {saved.step}, {saved.stage})")
        self.publish_diagnostics()

    def _on_checkpoint_matched(self, info: Any) -> None:
        # A new subscriber (e.g. a policy node started after us) gets the current checkpoint.
        if info.current_count_change > 0:
            with self._lock:
                current = self._current if self._announce_current else None
            self._announce(current)

    # ---------------------------------------------------------------------------- diagnostics

    def publish_diagnostics(self) -> None:
        with self._lock:
            s = dataclasses.replace(self._stats, rejected_by_reason=dict(self._stats.rejected_by_reason))
            ready = len(self._ready)
        if s.state == "failed":
            level, message = DiagnosticStatus.ERROR, f"failed: {s.last_error}"
        elif s.last_rejection or s.ingest_errors:
            level, message = DiagnosticStatus.WARN, f"{s.state}; last rejection: {s.last_rejection or s.last_error}"
        else:
            level, message = DiagnosticStatus.OK, s.state
        values: dict[str, object] = {
            "state": s.state,
            "step": s.step,
            "rounds": s.rounds,
            "updates_in_round": s.updates_in_round,
            "updates_per_round": self.online_config.updates_per_iteration,
            "episodes_per_update": self.online_config.episodes_per_iteration,
            "updates_per_s": s.updates_per_s,
            "accepted": s.accepted,
            "ingested": s.ingested,
            "repeats": s.repeats,
            "queued": self._queue.qsize(),
            "ready": ready,
            "rejected": s.rejected,
            **{f"rejected_{reason}": n for reason, n in s.rejected_by_reason.items()},
            "last_rejection": s.last_rejection,
            "ingest_errors": s.ingest_errors,
            "last_error": s.last_error,
            "last_checkpoint_uri": s.last_checkpoint_uri,
            "last_checkpoint_step": s.last_checkpoint_step,
            "checkpoints_announced": s.checkpoints_announced,
            "reconciled": s.reconciled,
            "reconcile_errors": s.reconcile_errors,
            "run_id": self.run_id,
            "episodes_awaiting_labels": self._episodes_awaiting_labels(),
        }
        if not self.context.ok():
            return
        self._diag_pub.publish(diagnostic_array(
            self.get_clock().now().to_msg(), f"{self.get_name()}: online RL", "sernf_learner", level, message, values))

    def _episodes_awaiting_labels(self) -> int:
        """Online-store episodes held back until a person labels them (labels_required_for)."""
        if not self.cfg.labels_required_for:
            return 0
        with self._label_view_lock:  # diagnostics are sent from several threads
            try:
                if self._label_view is None:
                    self._label_view = EpisodeStore(str(self.out / ONLINE_STORE), mode="r")
                view = self._label_view
                view.refresh()
                labeled = view.labels.newest_versions()
                return sum(1 for eid in view.episode_ids() if eid not in labeled
                           and view.episode_metadata(eid)["source"] in self.cfg.labels_required_for)
            except (OSError, ValueError, RuntimeError) as exc:
                self.get_logger().warning(f"cannot count episodes awaiting labels: {exc}",
                                          throttle_duration_sec=30.0)
                return -1

    # ------------------------------------------------------------------------------ shutdown

    def shutdown_workers(self) -> None:
        """Stop the worker threads (a round in progress is abandoned; its episodes stay pending)."""
        self._stop.set()
        self._queue.put(None)
        with self._cond:
            self._cond.notify_all()
        self._ingest_thread.join(timeout=10.0)
        self._train_thread.join(timeout=30.0)
        self.journal.close()


def _lock_output_dir(out: Path) -> Any:
    """Hold an exclusive lock on ``out`` for the life of the process: one learner per run
    directory (two would write one journal and one store, and the start-up clean-up of one
    would remove the other's half-written checkpoint). The kernel drops it when we die."""
    import fcntl

    fh = open(out / LOCK_FILE, "a+b")  # noqa: SIM115 - held open for the life of the process
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise ValueError(f"another learner is running on {out} (it holds {out / LOCK_FILE})") from None
    return fh


def _file_sha256(policy_dir: Path) -> str:
    from sernf_policy.checkpoint import WEIGHTS_FILE, file_sha256

    return file_sha256(policy_dir / WEIGHTS_FILE)


#: The node's parameters: exactly the fields of this dataclass (checked against config/*.yaml).
PARAMETERS = LearnerNodeConfig


def main(args: list[str] | None = None) -> None:
    # Replay announcements and diagnostics/checkpoint events each get a thread; ingestion
    # and training run on the node's own worker threads.
    spin_node(LearnerNode, NODE_NAME, num_threads=2, args=args)


if __name__ == "__main__":
    main()
