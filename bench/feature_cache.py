"""Critic warm-up updates/s with and without the frozen-backbone feature cache (issue #15).

A store of synthetic rgb episodes, a policy whose actor and critic encoders share one frozen
ResNet-18 per camera (finetune "frozen", the same weights, as when both start from the same
pretrained file), and ``CriticWarmup.update`` (Stage II: â' from the frozen actor, target
critics, HL-Gauss CE, Polyak) timed on batches from a ``TransitionSampler`` — once reading the
images (three ResNet forwards per sample: critic on o, actor and target critic on o') and once
reading ``sernf_learner.feature_cache`` features instead. Sampling is inside the timed loop (the
cache changes what is gathered). The one-time cost of building the cache is printed too.

Run:  python bench/feature_cache.py [--image 64] [--batch 32] [--updates 10] [--threads 2]
Prints the load average before and after (the machine is shared; figures are not asserted).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _pkg in ("sernf_data", "sernf_policy", "sernf_learner"):
    try:
        __import__(_pkg)
    except ImportError:  # running from a source checkout without the colcon overlay
        sys.path.insert(0, str(_ROOT / "src" / _pkg))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sernf_data.store import EpisodeStore, StoreSpec  # noqa: E402
from sernf_learner.critic_warmup import CriticWarmup, CriticWarmupConfig  # noqa: E402
from sernf_learner.feature_cache import FeatureCacheConfig, feature_caches_for, shared_backbones  # noqa: E402
from sernf_learner.td_targets import TargetCritic  # noqa: E402
from sernf_learner.transitions import ChunkTiming, TransitionSampler  # noqa: E402
from sernf_policy.critic import ChunkCriticConfig  # noqa: E402
from sernf_policy.encoders import EncoderConfig, ResNetEncoderConfig  # noqa: E402
from sernf_policy.flow import ChunkFlowConfig  # noqa: E402
from sernf_policy.policy import Policy, PolicyConfig  # noqa: E402

A, H, P, T = 7, 6, 2, 1
CAMERAS = ("front", "wrist")


def make_store(path: Path, image: int, episodes: int, length: int) -> EpisodeStore:
    obs = {k: {"kind": "rgb", "shape": [image, image, 3]} for k in CAMERAS}
    obs["joints"] = {"kind": "lowdim", "shape": [7]}
    store = EpisodeStore(path, "a", StoreSpec(obs=obs, action_dim=A, control_rate_hz=10.0))
    rng = np.random.default_rng(0)
    for i in range(episodes):
        steps = {k: rng.integers(0, 256, (length, image, image, 3), dtype=np.uint8) for k in CAMERAS}
        steps["joints"] = rng.uniform(-1, 1, (length, 7)).astype(np.float32)
        steps["action"] = rng.uniform(-1, 1, (length, A)).astype(np.float32)
        steps["reward"] = (np.arange(length) == length - 1).astype(np.float32)
        steps["timestamp"] = np.arange(length) / 10.0
        store.append_episode(steps, {"source": "demo", "success": bool(i % 2), "terminated": bool(i % 2)})
    return store


def make_policy(store: EpisodeStore) -> Policy:
    obs = {k: {"shape": list(v.shape), "kind": v.kind} for k, v in store.spec.obs.items()}
    d = 64
    config = PolicyConfig(
        observation_spec=obs, action_dim=A, obs_history=T, prefix_len=P, horizon=H,
        encoder=EncoderConfig(token_dim=d, resnet=ResNetEncoderConfig(model_name="resnet18", finetune="frozen")),
        flow=ChunkFlowConfig(action_dim=A, horizon=H, context_dim=d, num_layers=4, hidden_dim=64, num_heads=4),
        critic=ChunkCriticConfig(action_dim=A, horizon=H, prefix_len=P, obs_dim=d, d_model=64, num_heads=4,
                                 num_layers=1, ff_dim=128),
        num_samples=4,
    )
    policy = Policy(config)
    for key in CAMERAS:  # one set of frozen weights for actor and critic (a shared pretrained file)
        policy.critic_encoder.image_encoders[key].backbone.load_state_dict(
            policy.actor_encoder.image_encoders[key].backbone.state_dict())
    snap = store.load_arrays()
    policy.fit_normalizers(snap.arrays["action"], {"joints": snap.arrays["joints"]})
    return policy


def time_updates(learner: CriticWarmup, sampler: TransitionSampler, updates: int) -> tuple[float, float]:
    learner.update(sampler.sample())  # warm-up
    times, loss = [], 0.0
    for _ in range(updates):
        t0 = time.perf_counter()
        loss = learner.update(sampler.sample())["critic/loss"]
        times.append(time.perf_counter() - t0)
    return statistics.median(times), loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=int, default=64, help="square image size (pixels)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--length", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"load average before: {os.getloadavg()[0]:.2f} (cores {os.cpu_count()}), torch threads {args.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp) / "store.zarr", args.image, args.episodes, args.length)
        policy = make_policy(store)
        target = TargetCritic(policy)
        learner = CriticWarmup(policy, target, CriticWarmupConfig(batch_size=args.batch))
        timing = ChunkTiming(T=T, P=P, H=H)
        backbones, reason = shared_backbones([policy.actor_encoder, policy.critic_encoder, target.encoder])
        if backbones is None:
            raise SystemExit(f"feature cache not applicable: {reason}")
        t0 = time.perf_counter()
        caches = feature_caches_for(backbones, store, Path(tmp) / "cache", FeatureCacheConfig(progress=False))
        cached = TransitionSampler(store, timing, args.batch, seed=0, feature_caches=caches)
        build_s = time.perf_counter() - t0
        plain = TransitionSampler(store, timing, args.batch, seed=0)
        steps = store.num_steps
        print(f"store: {store.num_episodes} episodes, {steps} steps, {len(CAMERAS)} cameras {args.image}x{args.image}; "
              f"cache built in {build_s:.1f} s ({steps * len(CAMERAS) / build_s:.0f} images/s, once per store)")
        # Interleaved rounds, so both paths see the same machine load.
        rounds = {"images": [], "cached": []}
        for _ in range(2):
            for name, sampler in (("images", plain), ("cached", cached)):
                rounds[name].append(time_updates(learner, sampler, max(args.updates // 2, 1))[0])
        img, feat = statistics.median(rounds["images"]), statistics.median(rounds["cached"])
        print(f"critic warm-up, batch {args.batch}: images {1 / img:.2f} updates/s ({img * 1e3:.0f} ms), "
              f"cached features {1 / feat:.2f} updates/s ({feat * 1e3:.0f} ms): {img / feat:.1f}x")
        learner.close()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
