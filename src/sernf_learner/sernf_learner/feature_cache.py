"""On-disk cache of frozen image-backbone features, computed once per episode store.

Why: when an image backbone does not train in a stage its output for a stored image never
changes, so running it for every sampled transition (a ViT-L/14 forward per image for DINOv2)
repeats the same work thousands of times. The cache computes
:meth:`ObservationEncoder.backbone_features <sernf_policy.encoders.ObservationEncoder.backbone_features>`
once for every step of every episode and the samplers hand the encoders
``"<key>:features"`` ``[B, T, n_tok, C]`` instead of the images (the encoders' "Cached
features" contract).

Where it applies: only where the backbone is *fully* frozen for the whole stage — finetune
``"frozen"``, or an actor frozen by its stage (critic warm-up keeps the IL actor fixed). DINOv2
in its paper mode ``"norm"`` still trains its LayerNorms, so its features change with every
update and cannot be cached; the same for ResNet ``"norm"`` / ``"full"``. A frozen backbone is
kept in eval mode by its encoder (BatchNorm uses its stored statistics), which is what makes its
output independent of the batch and so cacheable. Which stages use it is the trainer's choice
(``trainer.feature_cache_dir``, :mod:`sernf_learner.trainer`).

Identity: a backbone is named by :func:`backbone_fingerprint`, a sha256 over its class, timm
model name, input size and every tensor of its ``state_dict`` (weights and BatchNorm
statistics): other weights give another directory, so changed weights are recomputed, never
reused. A store is named by its location and spec (:func:`store_fingerprint`); every cached
episode also records the sha256 of its image rows, checked against the store before use, so a
store recreated at the same place with other images is detected. Layout::

    <cache_dir>/<backbone sha256>/<store fingerprint>/<rgb key>/
        manifest.json         segments, their episodes (id, length, image sha256), file sha256s
        seg-00000.npy         [rows, n_tok, C] features of a run of consecutive episodes
        seg-00001.npy         ... (one per update that found new episodes, <= ~1 GiB each)

Writes are atomic: a segment is written under a temporary name, hashed and renamed; then the
manifest is replaced (temp + ``os.replace``) to list it. A segment the manifest does not list
(a writer killed in between) is never read and is overwritten by the next update. Updates of
one directory are serialised by an ``flock`` (data-parallel ranks computing the same cache).
On open every listed file is checked (header, shape, dtype, size, and by default its sha256):
a damaged cache raises :class:`FeatureCacheError` naming the file, never yields features.
Nothing outside ``cache_dir`` is written.

Features are stored as float16 by default (half the bytes; relative error ~1e-3, tested against
the backbone's float32 output); the encoders cast them to their own dtype.

No rclpy.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from sernf_data.spec import CACHED_FEATURES_SUFFIX
from sernf_data.store import EpisodeStore, ReplaySnapshot
from sernf_policy.encoders import DinoV2Encoder, ObservationEncoder, ResNetEncoder

__all__ = [
    "FeatureCache",
    "FeatureCacheConfig",
    "FeatureCacheError",
    "backbone_fingerprint",
    "cached_feature_key",
    "feature_caches_for",
    "shared_backbones",
    "store_fingerprint",
]

#: Version of the cache layout and of what a fingerprint covers; part of every fingerprint, so
#: a change here never reuses an old cache.
CACHE_FORMAT = "sernf-feature-cache-1"
MANIFEST = "manifest.json"
LOCK = ".lock"
_DTYPES = ("float16", "float32")
_HASH_BLOCK = 1 << 24


class FeatureCacheError(RuntimeError):
    """A feature cache on disk is damaged or does not belong to the store it is used with."""


@dataclass(frozen=True)
class FeatureCacheConfig:
    """How features are computed and stored."""

    dtype: str = "float16"
    """On-disk dtype: "float16" (half the bytes, ~1e-3 relative error) or "float32" (exact)."""
    batch_size: int = 64
    """Images per backbone forward while computing."""
    segment_bytes: int = 1 << 30
    """Largest segment file; a long computation commits a segment at a time (resumable)."""
    verify: bool = True
    """Check the sha256 of every segment file when a FeatureCache first opens it (reads the
    whole cache once per cache object, i.e. once per training stage, at ~1 GB/s; off: header,
    shape and size checks only)."""
    progress: bool = True
    """Show a tqdm bar while computing."""

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"FeatureCacheConfig.dtype must be one of {_DTYPES}, got {self.dtype!r}")
        for name in ("batch_size", "segment_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FeatureCacheConfig.{name} must be a positive int, got {value!r}")
        for name in ("verify", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"FeatureCacheConfig.{name} must be a bool, got {getattr(self, name)!r}")


# --------------------------------------------------------------------------- fingerprints


def backbone_fingerprint(image_encoder: ResNetEncoder | DinoV2Encoder) -> str:
    """sha256 (hex) naming what a backbone computes: class, model name, input size, and every
    tensor of its ``state_dict`` (parameters and buffers such as BatchNorm statistics)."""
    if isinstance(image_encoder, ResNetEncoder):
        geometry = {"resize": image_encoder.config.resize}
    elif isinstance(image_encoder, DinoV2Encoder):
        geometry = {"image_size": image_encoder.config.image_size,
                    "blocks_from_end": image_encoder.config.blocks_from_end}
    else:
        raise TypeError(f"not an image encoder: {type(image_encoder).__name__}")
    h = hashlib.sha256()
    header = {"format": CACHE_FORMAT, "class": type(image_encoder).__name__,
              "model_name": image_encoder.config.model_name, **geometry}
    h.update(json.dumps(header, sort_keys=True).encode())
    for name, tensor in sorted(image_encoder.backbone.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def store_fingerprint(store: EpisodeStore) -> str:
    """16 hex digits naming a store by its location and spec (its episodes are checked one by
    one against the cache's records, see the module doc)."""
    uri = store.uri if "://" in store.uri else os.path.realpath(store.uri)
    payload = json.dumps({"uri": uri, "spec": store.spec.to_json()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _image_digest(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _manifest_digest(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ------------------------------------------------------------------------- one rgb key


class _KeyCache:
    """Features of one rgb key of one store through one backbone (one directory)."""

    def __init__(self, directory: Path, key: str, feature_shape: tuple[int, int], config: FeatureCacheConfig,
                 header: dict[str, Any]) -> None:
        self.dir, self.key, self.feature_shape, self.config = directory, key, feature_shape, config
        self.header = header  # what the manifest must say about backbone, store and key
        self.segments: list[dict[str, Any]] = []
        self.arrays: list[np.ndarray] = []  # memory-mapped segment files, in manifest order
        self.seg_ends = np.zeros(0, dtype=np.int64)  # [S] exclusive end row of each segment
        self.episodes: list[dict[str, Any]] = []  # cached episodes in store order
        self._verified_files: set[str] = set()
        self._checked_episodes = 0  # leading episodes whose images were matched to a snapshot

    # -- reading ---------------------------------------------------------------------
    def load(self) -> None:
        """(Re)read the manifest and map its segment files, checking each (see module doc)."""
        path = self.dir / MANIFEST
        if not path.exists():
            self.segments, self.arrays, self.episodes = [], [], []
            self.seg_ends = np.zeros(0, dtype=np.int64)
            return
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FeatureCacheError(f"feature cache {path} is not valid JSON ({exc}); delete {self.dir}") from exc
        digest = payload.pop("sha256", None) if isinstance(payload, dict) else None
        if digest is None or digest != _manifest_digest(payload):
            raise FeatureCacheError(f"feature cache {path} fails its sha256 check (edited or torn); delete {self.dir}")
        for field, want in self.header.items():
            if payload.get(field) != want:
                raise FeatureCacheError(
                    f"feature cache {path}: {field} is {payload.get(field)!r}, expected {want!r}; delete {self.dir}"
                )
        arrays, ends, episodes, row = [], [], [], 0
        dtype = np.dtype(self.config.dtype)
        for seg in payload["segments"]:
            file = self.dir / seg["file"]
            if not file.is_file():
                raise FeatureCacheError(f"feature cache segment {file} is missing; delete {self.dir}")
            if self.config.verify and seg["file"] not in self._verified_files:
                if _file_digest(file) != seg["sha256"]:
                    raise FeatureCacheError(f"feature cache segment {file} fails its sha256 check (corrupt); "
                                            f"delete {self.dir} to recompute")
                self._verified_files.add(seg["file"])
            try:
                array = np.load(file, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise FeatureCacheError(f"feature cache segment {file} is unreadable ({exc}); delete {self.dir}") from exc
            rows = sum(int(e["length"]) for e in seg["episodes"])
            if array.dtype != dtype or array.shape != (rows, *self.feature_shape):
                raise FeatureCacheError(
                    f"feature cache segment {file} holds {array.dtype} {array.shape}, the manifest says "
                    f"{dtype} {(rows, *self.feature_shape)}; delete {self.dir}"
                )
            arrays.append(array)
            row += rows
            ends.append(row)
            episodes.extend(seg["episodes"])
        self.segments, self.arrays, self.episodes = list(payload["segments"]), arrays, episodes
        self.seg_ends = np.asarray(ends, dtype=np.int64)
        self._checked_episodes = min(self._checked_episodes, len(episodes))

    @property
    def num_rows(self) -> int:
        return int(self.seg_ends[-1]) if self.seg_ends.size else 0

    def check_against(self, snapshot: ReplaySnapshot) -> int:
        """Match the cached episodes with the snapshot's (ids, lengths, image sha256) and return
        how many leading snapshot episodes the cache holds. Raises on any disagreement."""
        n = min(len(self.episodes), snapshot.num_episodes)
        starts, lengths = snapshot.episode_starts, snapshot.episode_lengths
        images = snapshot.arrays[self.key]
        for i in range(n):
            cached, meta = self.episodes[i], snapshot.episodes[i]
            if cached["id"] != meta["id"] or int(cached["length"]) != int(lengths[i]):
                raise FeatureCacheError(
                    f"feature cache {self.dir}: episode {i} is {cached['id']!r} ({cached['length']} steps), the store "
                    f"has {meta['id']!r} ({lengths[i]} steps): not this store's cache; delete {self.dir}"
                )
            if i >= self._checked_episodes:
                rows = images[starts[i] : starts[i] + lengths[i]]
                if _image_digest(rows) != cached["images_sha256"]:
                    raise FeatureCacheError(
                        f"feature cache {self.dir}: the images of episode {meta['id']!r} differ from those the "
                        f"features were computed from (store rewritten?); delete {self.dir}"
                    )
        self._checked_episodes = max(self._checked_episodes, n)
        return n

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Features ``[*rows.shape, n_tok, C]`` of store rows ``rows`` (all < ``num_rows``)."""
        flat = rows.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self.num_rows):
            raise IndexError(f"feature cache {self.dir} holds rows [0, {self.num_rows}), asked for "
                             f"[{flat.min()}, {flat.max()}]")
        out = np.empty((flat.size, *self.feature_shape), dtype=np.dtype(self.config.dtype))
        if len(self.arrays) == 1:
            out[:] = self.arrays[0][flat]
        else:
            seg = np.searchsorted(self.seg_ends, flat, side="right")
            starts = np.concatenate([[0], self.seg_ends[:-1]])
            for s in np.unique(seg):
                mask = seg == s
                out[mask] = self.arrays[s][flat[mask] - starts[s]]
        return out.reshape(*rows.shape, *self.feature_shape)

    # -- writing ---------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / LOCK, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def write_manifest(self, segments: list[dict[str, Any]]) -> None:
        payload = {**self.header, "segments": segments}
        payload["sha256"] = _manifest_digest(payload)
        tmp = self.dir / f".{MANIFEST}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
        os.replace(tmp, self.dir / MANIFEST)

    def remove_temp_files(self) -> None:
        for stray in self.dir.glob(".*.tmp-*"):
            stray.unlink(missing_ok=True)


# ------------------------------------------------------------------------- public cache


class FeatureCache:
    """Features of one image backbone for the rgb keys it serves, over one episode store.

    ``image_encoder`` is a :class:`ResNetEncoder` / :class:`DinoV2Encoder` (for ResNet one per
    camera, for DINOv2 the shared one), ``keys`` the rgb keys of ``store`` it encodes. Call
    :meth:`sync` with a snapshot of the store to compute whatever episodes are missing; then
    :meth:`gather` reads features by store row. The backbone must not change while the cache
    is in use (it is fingerprinted once, here).
    """

    def __init__(
        self,
        image_encoder: ResNetEncoder | DinoV2Encoder,
        store: EpisodeStore,
        keys: Sequence[str],
        cache_dir: str | os.PathLike[str],
        config: FeatureCacheConfig | None = None,
    ) -> None:
        if not isinstance(image_encoder, ResNetEncoder | DinoV2Encoder):
            raise TypeError(f"image_encoder must be a ResNetEncoder or DinoV2Encoder, got {type(image_encoder).__name__}")
        if image_encoder.trainable_backbone:
            raise ValueError("a feature cache needs a frozen backbone (finetune='frozen'); this one has trainable "
                             "parameters, so its features change with every update")
        keys = list(keys)
        bad = [k for k in keys if k not in store.spec.obs or store.spec.obs[k].kind != "rgb"]
        if not keys or bad:
            raise ValueError(f"keys must be rgb keys of store {store.uri!r}, got {keys} (not rgb: {bad})")
        self.encoder = image_encoder
        self.store = store
        self.keys = keys
        self.config = config or FeatureCacheConfig()
        self.cache_dir = Path(cache_dir)
        self.backbone_hash = backbone_fingerprint(image_encoder)
        self.store_hash = store_fingerprint(store)
        self.root = self.cache_dir / self.backbone_hash / self.store_hash
        self._keys: dict[str, _KeyCache] = {}
        for key in keys:
            h, w, _ = store.spec.obs[key].shape
            n_tok = image_encoder.num_tokens if isinstance(image_encoder, DinoV2Encoder) else image_encoder.num_tokens(h, w)
            shape = (int(n_tok), int(image_encoder.feature_dim))
            header = {"format": CACHE_FORMAT, "backbone_sha256": self.backbone_hash, "store": self.store_hash,
                      "key": key, "image_shape": [h, w, 3], "dtype": self.config.dtype, "feature_shape": list(shape)}
            self._keys[key] = _KeyCache(self.root / key, key, shape, self.config, header)

    def feature_shape(self, key: str) -> tuple[int, int]:
        """``(n_tok, C)`` of one step of ``key``."""
        return self._keys[key].feature_shape

    def num_cached(self, key: str) -> int:
        """Episodes of ``key`` on disk as of the last :meth:`sync`."""
        return len(self._keys[key].episodes)

    def segment_files(self, key: str) -> list[Path]:
        """The segment files ``key`` reads (for tools and tests)."""
        kc = self._keys[key]
        return [kc.dir / s["file"] for s in kc.segments]

    def sync(self, snapshot: ReplaySnapshot | None = None) -> int:
        """Make the cache cover every episode of ``snapshot`` (default: the store's own); returns
        how many episode features were computed (summed over keys). Existing episodes are checked
        against the snapshot; any mismatch or damaged file raises :class:`FeatureCacheError`."""
        snapshot = snapshot if snapshot is not None else self.store.load_arrays()
        computed = 0
        for kc in self._keys.values():
            kc.load()
            if kc.check_against(snapshot) >= snapshot.num_episodes:
                continue
            with kc.locked():
                kc.load()  # another process may have computed them meanwhile
                have = kc.check_against(snapshot)
                if have < snapshot.num_episodes:
                    kc.remove_temp_files()
                    computed += self._compute(kc, snapshot, have)
                    kc.load()
                    kc.check_against(snapshot)
        return computed

    def gather(self, key: str, rows: np.ndarray) -> np.ndarray:
        """Features ``[*rows.shape, n_tok, C]`` of store rows ``rows`` (after :meth:`sync`)."""
        return self._keys[key].gather(np.asarray(rows, dtype=np.int64))

    # -- computing -------------------------------------------------------------------
    def _compute(self, kc: _KeyCache, snapshot: ReplaySnapshot, first: int) -> int:
        """Features of snapshot episodes ``first ..`` into new segments (one committed at a time)."""
        starts, lengths = snapshot.episode_starts, snapshot.episode_lengths
        images = snapshot.arrays[kc.key]
        row_bytes = int(np.prod(kc.feature_shape)) * np.dtype(self.config.dtype).itemsize
        max_rows = max(1, self.config.segment_bytes // row_bytes)
        todo = list(range(first, snapshot.num_episodes))
        total = int(lengths[first:].sum())
        bar = tqdm(total=total, desc=f"features {kc.key}", unit="img", disable=not self.config.progress,
                   dynamic_ncols=True)
        segments = list(kc.segments)
        try:
            while todo:
                group, rows = [], 0
                while todo and (not group or rows + lengths[todo[0]] <= max_rows):
                    rows += int(lengths[todo[0]])
                    group.append(todo.pop(0))
                lo, hi = int(starts[group[0]]), int(starts[group[-1]] + lengths[group[-1]])
                name = f"seg-{len(segments):05d}.npy"
                digest = self._write_segment(kc, images, lo, hi, name, bar)
                episodes = [{"id": snapshot.episodes[i]["id"], "length": int(lengths[i]),
                             "images_sha256": _image_digest(images[starts[i] : starts[i] + lengths[i]])}
                            for i in group]
                segments.append({"file": name, "sha256": digest, "episodes": episodes})
                kc.write_manifest(segments)  # the commit point of this segment
        finally:
            bar.close()
        return snapshot.num_episodes - first

    def _write_segment(self, kc: _KeyCache, images: np.ndarray, lo: int, hi: int, name: str, bar: Any) -> str:
        tmp = kc.dir / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
        dtype = np.dtype(self.config.dtype)
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(hi - lo, *kc.feature_shape))
            device = next(self.encoder.backbone.parameters()).device
            training = self.encoder.training
            self.encoder.eval()  # the features a frozen backbone gives in every mode (its BN statistics)
            try:
                with torch.inference_mode():
                    for a in range(lo, hi, self.config.batch_size):
                        b = min(a + self.config.batch_size, hi)
                        x = torch.from_numpy(np.array(images[a:b])).to(device)  # a writable copy of read-only rows
                        feats = self.encoder.backbone_features(x).float().cpu().numpy()
                        if feats.shape[1:] != kc.feature_shape:
                            raise FeatureCacheError(f"backbone gave {feats.shape[1:]}, expected {kc.feature_shape}")
                        cast = feats.astype(dtype)
                        if not np.isfinite(cast).all():
                            raise FeatureCacheError(f"features of {kc.key!r} rows {a}..{b} overflow {dtype} (or are "
                                                    "not finite); use FeatureCacheConfig(dtype='float32')")
                        out[a - lo : b - lo] = cast
                        bar.update(b - a)
            finally:
                self.encoder.train(training)
            out.flush()
            del out
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            digest = _file_digest(tmp)
            os.replace(tmp, kc.dir / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        kc._verified_files.discard(name)  # a file of this name replaced: check it again on load
        return digest


# ------------------------------------------------------------------- whole encoders


def shared_backbones(encoders: Sequence[ObservationEncoder]) -> tuple[dict[str, nn.Module] | None, str]:
    """For encoders that all read the same batch: ``({rgb key: image encoder}, "")`` when, for
    every rgb key, each encoder's backbone is frozen and all compute the same function (same
    fingerprint) — then one cached feature serves all of them; else ``(None, reason)``."""
    if not encoders:
        return None, "no encoders"
    keys = encoders[0].rgb_keys
    if not keys:
        return None, "the observation has no rgb keys"
    chosen: dict[str, nn.Module] = {}
    fingerprints: dict[int, str] = {}
    for key in keys:
        prints = set()
        for index, enc in enumerate(encoders):
            if enc.rgb_keys != keys:
                return None, "the encoders read different rgb keys"
            image_encoder = enc._image_encoder(key)
            if image_encoder.trainable_backbone:
                mode = image_encoder.config.finetune
                return None, (f"encoder {index}'s backbone for {key!r} trains in this stage (finetune={mode!r}"
                              + ("; 'norm' trains its norm layers" if mode == "norm" else "") + ")")
            if id(image_encoder) not in fingerprints:
                fingerprints[id(image_encoder)] = backbone_fingerprint(image_encoder)
            prints.add(fingerprints[id(image_encoder)])
        if len(prints) > 1:
            return None, (f"the encoders' frozen backbones for {key!r} have different weights: one batch cannot "
                          "carry features for both (initialise them from the same pretrained weights)")
        chosen[key] = encoders[0]._image_encoder(key)
    return chosen, ""


def feature_caches_for(
    backbones: Mapping[str, ResNetEncoder | DinoV2Encoder],
    store: EpisodeStore,
    cache_dir: str | os.PathLike[str],
    config: FeatureCacheConfig | None = None,
) -> list[FeatureCache]:
    """One :class:`FeatureCache` per distinct backbone of ``backbones`` (``{rgb key: image
    encoder}``, e.g. from :func:`shared_backbones`), covering the keys it serves."""
    groups: dict[int, tuple[ResNetEncoder | DinoV2Encoder, list[str]]] = {}
    for key, enc in backbones.items():
        groups.setdefault(id(enc), (enc, []))[1].append(key)
    return [FeatureCache(enc, store, keys, cache_dir, config) for enc, keys in groups.values()]


def cached_feature_key(key: str) -> str:
    """The batch key of ``key``'s cached features (``"front:features"``)."""
    return f"{key}{CACHED_FEATURES_SUFFIX}"
