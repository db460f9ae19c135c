"""On-disk feature cache of frozen image backbones (sernf_learner.feature_cache): the cached
features are the backbone's, keyed by its weights, computed incrementally, checked on open, and
the samplers / trainer use them only where they stand in for the images exactly."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from sernf_data.spec import ObsKeySpec
from sernf_data.store import EpisodeStore, StoreSpec
from sernf_learner.configs import RunConfig
from sernf_learner.feature_cache import (
    FeatureCache,
    FeatureCacheConfig,
    FeatureCacheError,
    backbone_fingerprint,
)
from sernf_learner.trainer import Trainer
from sernf_learner.transitions import ChunkTiming, MixedSampler, TransitionSampler
from sernf_policy.encoders import EncoderConfig, ObservationEncoder, ResNetEncoderConfig

IMAGE = (32, 40, 3)  # a 1 x 2 grid of ResNet tokens
SPEC = StoreSpec(obs={"front": ObsKeySpec(IMAGE, "rgb"), "q": ObsKeySpec((3,), "lowdim")},
                 action_dim=2, control_rate_hz=10.0)
TIMING = ChunkTiming(T=2, P=1, H=3, gamma=0.9)
# float16 storage: ~3 significant digits of features whose scale is O(1).
RTOL, ATOL = 2e-3, 2e-3
QUIET = FeatureCacheConfig(progress=False, batch_size=8)


def episode(rng: np.random.Generator, length: int, ident: str) -> tuple[dict, dict]:
    steps = {
        "front": rng.integers(0, 256, size=(length, *IMAGE), dtype=np.uint8),
        "q": rng.uniform(-1, 1, size=(length, 3)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(length, 2)).astype(np.float32),
        "reward": (np.arange(length) == length - 1).astype(np.float32),
        "timestamp": np.arange(length) / 10.0,
    }
    return steps, {"id": ident, "source": "demo", "success": True, "terminated": True}


def make_store(path: Path, lengths=(7, 9, 6), seed: int = 0) -> EpisodeStore:
    store = EpisodeStore(path, "a", SPEC)
    rng = np.random.default_rng(seed)
    for i, n in enumerate(lengths):
        store.append_episode(*episode(rng, n, f"ep{i}"))
    return store


def frozen_encoder(pretrained: bool | str = False) -> ObservationEncoder:
    config = EncoderConfig(token_dim=32, resnet=ResNetEncoderConfig(model_name="resnet18", pretrained=pretrained,
                                                                    finetune="frozen"))
    torch.manual_seed(0)
    return ObservationEncoder(config, {k: {"shape": list(v.shape), "kind": v.kind} for k, v in SPEC.obs.items()},
                              history=TIMING.T)


def backbone_output(image_encoder, images: np.ndarray) -> np.ndarray:
    image_encoder.eval()
    with torch.no_grad():
        return image_encoder.backbone_features(torch.from_numpy(np.array(images))).numpy()


@pytest.fixture
def store(tmp_path) -> EpisodeStore:
    return make_store(tmp_path / "demos.zarr")


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> str:
    """A local "pretrained" resnet18 file: actor and critic encoders built from it share weights."""
    torch.manual_seed(1)
    model = timm.create_model("resnet18", pretrained=False)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval vs batch statistics would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


# ------------------------------------------------------------------------ the cache itself


def test_cached_features_are_the_backbones_and_are_computed_once(store, tmp_path):
    enc = frozen_encoder()
    resnet = enc.image_encoders["front"]
    cache = FeatureCache(resnet, store, ["front"], tmp_path / "cache", QUIET)
    assert cache.sync() == 3
    snap = store.load_arrays()
    rows = np.arange(snap.num_steps)
    cached = cache.gather("front", rows)
    assert cached.dtype == np.float16 and cached.shape == (snap.num_steps, 2, 512)
    want = backbone_output(resnet, snap.arrays["front"])
    assert np.abs(want).max() > 0.1  # features of real magnitude, not all zeros
    np.testing.assert_allclose(cached.astype(np.float32), want, rtol=RTOL, atol=ATOL)
    # Exactly as the encoder's own path sees it: [B, T, n_tok, C] per observation row.
    np.testing.assert_allclose(cache.gather("front", rows.reshape(-1, 1)).astype(np.float32)[:, 0], want,
                               rtol=RTOL, atol=ATOL)
    # Everything lives under <cache_dir>/<backbone sha256>/<store fingerprint>/<key>/.
    assert cache.root.parent.name == backbone_fingerprint(resnet)
    files = sorted(p.name for p in (cache.root / "front").iterdir())
    assert files == [".lock", "manifest.json", "seg-00000.npy"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [backbone_fingerprint(resnet)]
    # A second cache object for the same weights (e.g. the critic's copy of the backbone) reuses it.
    again = FeatureCache(copy.deepcopy(resnet), store, ["front"], tmp_path / "cache", QUIET)
    assert again.root == cache.root and again.sync() == 0
    np.testing.assert_array_equal(again.gather("front", rows), cached)


def test_float32_cache_is_exact(store, tmp_path):
    resnet = frozen_encoder().image_encoders["front"]
    cache = FeatureCache(resnet, store, ["front"], tmp_path / "cache", FeatureCacheConfig(dtype="float32", progress=False))
    cache.sync()
    snap = store.load_arrays()
    np.testing.assert_allclose(cache.gather("front", np.arange(snap.num_steps)),
                               backbone_output(resnet, snap.arrays["front"]), rtol=1e-5, atol=1e-5)


def test_other_weights_give_another_hash_and_are_recomputed(store, tmp_path):
    resnet = frozen_encoder().image_encoders["front"]
    first = FeatureCache(resnet, store, ["front"], tmp_path / "cache", QUIET)
    first.sync()
    old = first.gather("front", np.arange(5))
    with torch.no_grad():  # other weights (here: the first layer scaled)
        resnet.backbone.conv1.weight.mul_(1.5)
    second = FeatureCache(resnet, store, ["front"], tmp_path / "cache", QUIET)
    assert second.backbone_hash != first.backbone_hash
    assert second.sync() == 3  # recomputed, the old directory is not reused
    new = second.gather("front", np.arange(5))
    assert not np.array_equal(new, old)
    np.testing.assert_allclose(new.astype(np.float32), backbone_output(resnet, store.load_arrays().arrays["front"][:5]),
                               rtol=RTOL, atol=ATOL)
    with torch.no_grad():  # a BatchNorm statistic (a buffer, not a parameter) changes the function too
        resnet.backbone.bn1.running_mean[0] += 0.5
    assert backbone_fingerprint(resnet) not in (first.backbone_hash, second.backbone_hash)


def test_appended_episodes_are_computed_incrementally(store, tmp_path):
    resnet = frozen_encoder().image_encoders["front"]
    cache = FeatureCache(resnet, store, ["front"], tmp_path / "cache", QUIET)
    cache.sync()
    first_segment = cache.segment_files("front")[0]
    before = first_segment.read_bytes()
    store.append_episode(*episode(np.random.default_rng(7), 5, "ep3"))
    assert cache.sync() == 1  # only the new episode
    assert cache.num_cached("front") == 4 and len(cache.segment_files("front")) == 2
    assert first_segment.read_bytes() == before  # committed segments are never rewritten
    snap = store.load_arrays()
    rows = np.arange(snap.num_steps)
    np.testing.assert_allclose(cache.gather("front", rows).astype(np.float32),
                               backbone_output(resnet, snap.arrays["front"]), rtol=RTOL, atol=ATOL)
    # Rows straddling both segments in one gather (the samplers' case).
    both = np.array([[0, snap.num_steps - 1], [snap.num_steps - 2, 3]])
    np.testing.assert_array_equal(cache.gather("front", both)[1, 0], cache.gather("front", rows)[-2])


def test_damaged_or_foreign_caches_are_refused(store, tmp_path):
    resnet = frozen_encoder().image_encoders["front"]
    cache = FeatureCache(resnet, store, ["front"], tmp_path / "cache", QUIET)
    cache.sync()
    segment = cache.segment_files("front")[0]
    good = segment.read_bytes()

    # A flipped byte in the features: caught by the file's sha256.
    damaged = bytearray(good)
    damaged[-3] ^= 0x55
    segment.write_bytes(bytes(damaged))
    with pytest.raises(FeatureCacheError, match="sha256"):
        FeatureCache(resnet, store, ["front"], tmp_path / "cache", QUIET).sync()
    # Without the full check a truncated file is still caught by its size.
    segment.write_bytes(good[:-1024])
    with pytest.raises(FeatureCacheError, match="seg-00000"):
        FeatureCache(resnet, store, ["front"], tmp_path / "cache",
                     FeatureCacheConfig(verify=False, progress=False)).sync()
    segment.write_bytes(good)

    # An edited manifest.
    manifest = cache.root / "front" / "manifest.json"
    text = manifest.read_text()
    payload = json.loads(text)
    payload["segments"][0]["episodes"][0]["length"] += 1
    manifest.write_text(json.dumps(payload))
    with pytest.raises(FeatureCacheError, match="manifest"):
        FeatureCache(resnet, store, ["front"], tmp_path / "cache", QUIET).sync()
    manifest.write_text(text)

    # A half-written update (segment file and temp file, no manifest entry) is never read and
    # is replaced by the next update.
    (cache.root / "front" / "seg-00001.npy").write_bytes(b"half written")
    (cache.root / "front" / ".seg-00001.npy.tmp-dead").write_bytes(b"x")
    fresh = FeatureCache(resnet, store, ["front"], tmp_path / "cache", QUIET)
    assert fresh.sync() == 0
    store.append_episode(*episode(np.random.default_rng(8), 4, "ep3"))
    assert fresh.sync() == 1
    assert not list((cache.root / "front").glob(".*tmp-*"))
    snap = store.load_arrays()
    np.testing.assert_allclose(fresh.gather("front", np.arange(snap.num_steps)[-4:]).astype(np.float32),
                               backbone_output(resnet, snap.arrays["front"][-4:]), rtol=RTOL, atol=ATOL)


def test_a_store_rewritten_in_place_is_detected(tmp_path):
    path = tmp_path / "demos.zarr"
    resnet = frozen_encoder().image_encoders["front"]
    FeatureCache(resnet, make_store(path, seed=0), ["front"], tmp_path / "cache", QUIET).sync()
    shutil.rmtree(path)
    other = make_store(path, seed=1)  # same place, same spec, same episode ids, other images
    with pytest.raises(FeatureCacheError, match="images of episode 'ep0' differ"):
        FeatureCache(resnet, other, ["front"], tmp_path / "cache", QUIET).sync()


def test_a_trainable_backbone_gets_no_cache(store, tmp_path):
    config = EncoderConfig(token_dim=32, resnet=ResNetEncoderConfig(model_name="resnet18", finetune="norm"))
    enc = ObservationEncoder(config, {k: {"shape": list(v.shape), "kind": v.kind} for k, v in SPEC.obs.items()}, 2)
    with pytest.raises(ValueError, match="frozen backbone"):
        FeatureCache(enc.image_encoders["front"], store, ["front"], tmp_path / "cache", QUIET)
    assert not (tmp_path / "cache").exists()


# ------------------------------------------------------------------------------ samplers


def test_sampler_with_cache_draws_the_same_rows_without_pixels(store, tmp_path):
    enc = frozen_encoder()
    resnet = enc.image_encoders["front"]
    cache = FeatureCache(resnet, store, ["front"], tmp_path / "cache", QUIET)
    plain = TransitionSampler(store, TIMING, batch_size=16, seed=3)
    cached = TransitionSampler(store, TIMING, batch_size=16, seed=3, feature_caches=[cache])
    assert cached.cached_keys == ("front",) and plain.cached_keys == ()
    for _ in range(3):
        a, b = plain.sample_numpy(), cached.sample_numpy()
        for side in ("obs", "next_obs"):
            assert set(b[side]) == {"front:features", "q"}  # no image array in the batch
            np.testing.assert_array_equal(a[side]["q"], b[side]["q"])
            images = a[side]["front"]  # [B, T, h, w, 3]
            want = backbone_output(resnet, images.reshape(-1, *IMAGE)).reshape(*images.shape[:2], 2, 512)
            np.testing.assert_allclose(b[side]["front:features"].astype(np.float32), want, rtol=RTOL, atol=ATOL)
        for key in ("prefix", "chunk", "chunk_mask", "next_prefix", "reward", "discount", "done"):
            np.testing.assert_array_equal(a[key], b[key])
    assert plain.state_dict()["rng"] == cached.state_dict()["rng"]  # the same RNG stream
    # New episodes reach the sampler and the cache together.
    store.append_episode(*episode(np.random.default_rng(9), 8, "ep3"))
    assert cached.refresh() == 1 and cache.num_cached("front") == 4
    # The encoder takes the batch as it is (features instead of images).
    torch_batch = cached.sample()
    with torch.no_grad():
        assert enc(torch_batch["obs"]).shape == (16, enc.num_tokens, 32)


def test_mixed_sampler_needs_the_same_cached_keys(store, tmp_path):
    resnet = frozen_encoder().image_encoders["front"]
    online = make_store(tmp_path / "online.zarr", lengths=(5, 6), seed=4)
    off = TransitionSampler(store, TIMING, 8, 0, feature_caches=[FeatureCache(resnet, store, ["front"], tmp_path / "c", QUIET)])
    on_plain = TransitionSampler(online, TIMING, 8, 1, is_offline=False)
    with pytest.raises(ValueError, match="cache different rgb keys"):
        MixedSampler(off, on_plain)
    with pytest.raises(ValueError, match="cannot serve store"):  # a cache of another store
        TransitionSampler(online, TIMING, 8, 1, feature_caches=[FeatureCache(resnet, store, ["front"], tmp_path / "c", QUIET)])
    on = TransitionSampler(online, TIMING, 8, 1, is_offline=False,
                           feature_caches=[FeatureCache(resnet, online, ["front"], tmp_path / "c", QUIET)])
    batch = MixedSampler(off, on, rho=0.5).sample_numpy()
    assert batch["obs"]["front:features"].shape == (8, 2, 2, 512) and "front" not in batch["obs"]


# ------------------------------------------------------------------------------- trainer


def run_config(store_path: Path, cache_dir: str, pretrained: bool | str, finetune: str) -> RunConfig:
    return RunConfig.from_dict({
        "seed": 0,
        "policy": {"obs_history": 2, "prefix_len": 1, "horizon": 3, "token_dim": 32, "flow_layers": 2,
                   "flow_hidden": 32, "flow_heads": 2, "critic_d_model": 32, "critic_heads": 2, "critic_layers": 1,
                   "critic_ff": 32, "num_samples": 4, "image_backbone": "resnet18",
                   "resnet": {"model_name": "resnet18", "pretrained": pretrained, "finetune": finetune}},
        "data": {"offline_uri": str(store_path), "gamma": 0.9},
        "trainer": {"progress": False, "tensorboard": False, "feature_cache_dir": cache_dir, "eval": {"episodes": 0}},
        "critic_warmup": {"steps": 2, "batch_size": 8},
        "offline_rl": {"steps": 1, "batch_size": 8},
        "il": {"steps": 1, "batch_size": 8},
    })


def test_critic_warmup_on_cached_features_matches_images(store, tmp_path, weights_file):
    cache_dir = tmp_path / "cache"
    runs = {}
    for name, directory in (("images", ""), ("cached", str(cache_dir))):
        trainer = Trainer(run_config(Path(store.uri), directory, weights_file, "frozen"), tmp_path / name, "critic_warmup")
        runs[name] = (trainer, trainer._build_stage("critic_warmup", 0))
    (t_img, s_img), (t_feat, s_feat) = runs["images"], runs["cached"]
    assert s_img.sampler.cached_keys == () and s_feat.sampler.cached_keys == ("front",)
    assert t_feat.feature_cache_status["critic_warmup"].startswith("on")
    assert list(cache_dir.iterdir())  # one backbone directory: actor and critic share the weights
    assert len(list(cache_dir.iterdir())) == 1
    for _ in range(2):
        b_img, b_feat = s_img.sampler.sample(), s_feat.sampler.sample()
        assert "front" not in b_feat["obs"] and "front" not in b_feat["next_obs"]
        torch.manual_seed(5)  # same dropout masks and â' draws
        m_img = s_img.learner.update(b_img)
        torch.manual_seed(5)
        m_feat = s_feat.learner.update(b_feat)
        for key in ("critic/loss", "critic/target_mean", "critic/q_mean"):
            assert m_feat[key] == pytest.approx(m_img[key], rel=1e-3, abs=1e-4), key
    # The critic moved the same way on both paths. Not element for element: the two paths round
    # differently (features computed in other batches), and where a gradient element is near zero
    # AdamW's first steps turn a rounding difference into a step of about lr either way. A
    # wrong feature path would move most elements differently.
    mismatched, total = 0, 0
    for (n, p), (_, q) in zip(t_img.policy.critic.named_parameters(), t_feat.policy.critic.named_parameters(),
                              strict=True):
        assert p.shape == q.shape, n
        mismatched += int((~torch.isclose(p, q, rtol=1e-3, atol=1e-4)).sum())
        total += p.numel()
    assert mismatched <= total // 1000, f"{mismatched} of {total} critic parameters moved differently"
    s_img.learner.close()
    s_feat.learner.close()


@pytest.mark.parametrize("finetune", ["norm", "full"])
def test_trainer_does_not_cache_a_trainable_backbone(store, tmp_path, weights_file, finetune):
    cache_dir = tmp_path / "cache"
    trainer = Trainer(run_config(Path(store.uri), str(cache_dir), weights_file, finetune), tmp_path / "run",
                      "critic_warmup")
    stage = trainer._build_stage("critic_warmup", 0)
    assert stage.sampler.cached_keys == ()
    status = trainer.feature_cache_status["critic_warmup"]
    assert status.startswith("off") and "encoder 1" in status and finetune in status  # the critic's
    assert not cache_dir.exists()  # nothing computed, nothing written
    batch = stage.sampler.sample()
    assert "front" in batch["obs"]  # images, as without a cache
    stage.learner.close()


def test_trainer_caches_only_where_every_encoder_agrees(store, tmp_path, weights_file):
    # Frozen but different random weights for actor and critic: one batch cannot serve both.
    trainer = Trainer(run_config(Path(store.uri), str(tmp_path / "c1"), False, "frozen"), tmp_path / "r1", "offline_rl")
    stage = trainer._build_stage("offline_rl", 0)
    assert stage.sampler.cached_keys == () and "different weights" in trainer.feature_cache_status["offline_rl"]
    # IL runs only the actor's encoder: a frozen one is cached.
    trainer = Trainer(run_config(Path(store.uri), str(tmp_path / "c2"), False, "frozen"), tmp_path / "r2", "il")
    assert trainer._build_stage("il", 0).sampler.cached_keys == ("front",)
    # Shared frozen weights: offline RL (both encoders frozen) reads the cache.
    trainer = Trainer(run_config(Path(store.uri), str(tmp_path / "c3"), weights_file, "frozen"), tmp_path / "r3",
                      "offline_rl")
    stage = trainer._build_stage("offline_rl", 0)
    assert stage.sampler.cached_keys == ("front",)
    metrics = stage.learner.update(stage.sampler.sample())
    assert np.isfinite(metrics["critic/loss"])


def test_bench_prints_both_rates_and_the_load():
    bench = Path(__file__).resolve().parents[3] / "bench" / "feature_cache.py"
    result = subprocess.run(
        [sys.executable, str(bench), "--image", "32", "--batch", "4", "--updates", "2", "--episodes", "2",
         "--length", "6", "--threads", "1"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"load average before: [0-9.]+", out) and re.search(r"load average after: [0-9.]+", out)
    assert re.search(r"cache built in [0-9.]+ s", out)
    assert re.search(r"images [0-9.]+ updates/s .* cached features [0-9.]+ updates/s", out)
