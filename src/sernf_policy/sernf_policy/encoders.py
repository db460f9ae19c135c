"""Observation encoders: observation dict ``[B, T, ...]`` -> context tokens ``[B, L, D]``
(docs/design.md §6 "Encoders", appendix G1 "Visual Encoders").

* :class:`ResNetEncoder` - timm ``resnet18`` up to the last conv stage (no global pool, no
  FC): an ``h x w`` image gives ``ceil(h/32) * ceil(w/32)`` tokens x 512 (49 at 224 x 224).
  ImageNet mean/std normalisation inside ``forward``. One per camera (Robomimic setup).
* :class:`DinoV2Encoder` - timm ``vit_large_patch14_reg4_dinov2`` (ViT-L/14, 4 registers),
  images naively resized to 224 x 224, patch tokens (16 x 16 = 256; cls/register tokens dropped)
  of the *penultimate* block (after the final LayerNorm, as DINOv2's
  ``get_intermediate_layers``), then ``Linear(1024, 512)``. Finetune mode ``"norm"``: only
  LayerNorm parameters (and the projector) are trainable. One backbone instance serves all views.
* :class:`LowDimTokenizer` - one token per (low-dim key, time step): ``Linear(d_key, D)`` plus a
  learned time embedding and key embedding.
* :class:`ObservationEncoder` - the spec-driven combination of the above.

Image input: uint8 ``[N, h, w, 3]`` (channels-last, as the observation spec stores images)
or ``[N, 3, h, w]``; a last dimension of 3 means channels-last. Floating-point images are
taken to be in ``[0, 1]`` already.

Cached features: when a backbone is frozen (``finetune="frozen"``) its output can be computed
once (:meth:`ObservationEncoder.backbone_features`) and passed back in the observation dict
under ``f"{key}{CACHED_FEATURES_SUFFIX}"`` (``"front:features"``, shape ``[B, T, n_tok, C]``);
the raw images may then be omitted. Using cached features while the backbone is trainable and
the module is in training mode raises, because it would silently cut the backbone's gradient.
A frozen backbone stays in eval mode whatever the module's mode (BatchNorm keeps its stored
statistics), so its output does not depend on the batch; ``sernf_learner.feature_cache``
stores it on disk once per episode store.

``pretrained``: ``False`` (random init; what tests use), ``True`` (timm hub download) or a local
file path (``.safetensors`` / ``.pth`` of the timm model, loaded through timm's own filter so
e.g. DINOv2 position embeddings are resampled to 224).

Dimension names: ``B`` batch, ``T`` observation steps, ``L`` tokens, ``D`` token width.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sernf_data.spec import CACHED_FEATURES_SUFFIX, ObsKeySpec, parse_observation_spec

from .config_io import build_dataclass

__all__ = [
    "DinoV2Encoder",
    "DinoV2EncoderConfig",
    "EncoderConfig",
    "LowDimTokenizer",
    "ObservationEncoder",
    "ResNetEncoder",
    "ResNetEncoderConfig",
]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# timm names we accept (an explicit allowlist: configs never name arbitrary constructors).
_RESNET_NAMES = ("resnet18", "resnet18.tv_in1k", "resnet18.a1_in1k")
_DINOV2_NAMES = tuple(
    f"vit_{size}_patch14_{reg}dinov2" for size in ("small", "base", "large", "giant") for reg in ("", "reg4_")
)
Finetune = Literal["full", "norm", "frozen"]


def _check_pretrained(value: Any, where: str) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str | Path) and str(value):
        return str(value)
    raise ValueError(f"{where}.pretrained must be False, True or a file path, got {value!r}")


def _check_size(value: Any, where: str) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where} must be None or (height, width), got {value!r}") from exc
    if h < 1 or w < 1:
        raise ValueError(f"{where} must be positive, got {value!r}")
    return (h, w)


@dataclass
class ResNetEncoderConfig:
    """ResNet-18 image encoder (one instance per camera)."""

    #: timm model name; one of the resnet18 variants ("resnet18.tv_in1k" = torchvision weights,
    #: as in Robomimic).
    model_name: str = "resnet18.tv_in1k"
    #: False (random init), True (timm hub) or a local weights file path.
    pretrained: bool | str = False
    #: Optional (height, width) to resize images to before the backbone (None: native size).
    resize: tuple[int, int] | None = None
    #: "full" trains everything (paper), "frozen" freezes the backbone, "norm" trains only
    #: the BatchNorm affine parameters.
    finetune: Finetune = "full"

    def __post_init__(self) -> None:
        if self.model_name not in _RESNET_NAMES:
            raise ValueError(f"ResNetEncoderConfig.model_name must be one of {_RESNET_NAMES}, got {self.model_name!r}")
        self.pretrained = _check_pretrained(self.pretrained, "ResNetEncoderConfig")
        self.resize = _check_size(self.resize, "ResNetEncoderConfig.resize")
        if self.finetune not in ("full", "norm", "frozen"):
            raise ValueError(f"ResNetEncoderConfig.finetune must be full/norm/frozen, got {self.finetune!r}")

    @classmethod
    def from_dict(cls, data: Any) -> ResNetEncoderConfig:
        return build_dataclass(cls, data)


@dataclass
class DinoV2EncoderConfig:
    """DINOv2 ViT image encoder (one backbone shared by all cameras)."""

    #: timm model name (paper: ViT-L/14 with 4 registers).
    model_name: str = "vit_large_patch14_reg4_dinov2"
    #: False (random init), True (timm hub) or a local weights file path.
    pretrained: bool | str = False
    #: Square input size; images are naively resized to it (paper: 224 -> 16 x 16 patches).
    image_size: int = 224
    #: Output width of the linear projector (paper: 1024 -> 512).
    out_dim: int = 512
    #: "norm" (paper): only LayerNorms trainable; "frozen": none; "full": all.
    finetune: Finetune = "norm"
    #: Which block's output to use, counted from the end (1 = penultimate block, paper).
    blocks_from_end: int = 1

    def __post_init__(self) -> None:
        if self.model_name not in _DINOV2_NAMES:
            raise ValueError(f"DinoV2EncoderConfig.model_name must be one of {_DINOV2_NAMES}, got {self.model_name!r}")
        self.pretrained = _check_pretrained(self.pretrained, "DinoV2EncoderConfig")
        if not isinstance(self.image_size, int) or self.image_size < 14 or self.image_size % 14:
            raise ValueError(f"DinoV2EncoderConfig.image_size must be a positive multiple of 14, got {self.image_size!r}")
        if not isinstance(self.out_dim, int) or self.out_dim < 1:
            raise ValueError(f"DinoV2EncoderConfig.out_dim must be a positive int, got {self.out_dim!r}")
        if self.finetune not in ("full", "norm", "frozen"):
            raise ValueError(f"DinoV2EncoderConfig.finetune must be full/norm/frozen, got {self.finetune!r}")
        if not isinstance(self.blocks_from_end, int) or self.blocks_from_end < 0:
            raise ValueError(f"DinoV2EncoderConfig.blocks_from_end must be an int >= 0, got {self.blocks_from_end!r}")

    @classmethod
    def from_dict(cls, data: Any) -> DinoV2EncoderConfig:
        return build_dataclass(cls, data)


@dataclass
class EncoderConfig:
    """Observation encoder settings (the observation spec and T come from the policy)."""

    #: D: width of every output token (paper: 512).
    token_dim: int = 512
    #: Image backbone for all rgb keys: "resnet18" (one per camera) or "dinov2" (shared).
    image_backbone: Literal["resnet18", "dinov2"] = "resnet18"
    #: ResNet settings (used when image_backbone == "resnet18").
    resnet: ResNetEncoderConfig = field(default_factory=ResNetEncoderConfig)
    #: DINOv2 settings (used when image_backbone == "dinov2").
    dinov2: DinoV2EncoderConfig = field(default_factory=DinoV2EncoderConfig)

    def __post_init__(self) -> None:
        if isinstance(self.token_dim, bool) or not isinstance(self.token_dim, int) or self.token_dim < 1:
            raise ValueError(f"EncoderConfig.token_dim must be a positive int, got {self.token_dim!r}")
        if self.image_backbone not in ("resnet18", "dinov2"):
            raise ValueError(f"EncoderConfig.image_backbone must be 'resnet18' or 'dinov2', got {self.image_backbone!r}")
        if not isinstance(self.resnet, ResNetEncoderConfig) or not isinstance(self.dinov2, DinoV2EncoderConfig):
            raise ValueError("EncoderConfig.resnet / .dinov2 must be ResNetEncoderConfig / DinoV2EncoderConfig")

    @classmethod
    def from_dict(cls, data: Any) -> EncoderConfig:
        return build_dataclass(
            cls, data, {"resnet": ResNetEncoderConfig.from_dict, "dinov2": DinoV2EncoderConfig.from_dict}
        )


def _create_timm(name: str, pretrained: bool | str, **kwargs: Any) -> nn.Module:
    if isinstance(pretrained, str):
        path = Path(pretrained)
        if not path.is_file():
            raise ValueError(f"pretrained weights file not found: {path}")
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def _to_float_nchw(images: Tensor) -> Tensor:
    """uint8/float ``[N, h, w, 3]`` or ``[N, 3, h, w]`` -> float ``[N, 3, h, w]`` in [0, 1]."""
    if images.ndim != 4 or 3 not in (images.shape[1], images.shape[-1]):
        raise ValueError(f"images must be [N, h, w, 3] or [N, 3, h, w], got {tuple(images.shape)}")
    if images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
    return images


def _apply_finetune(module: nn.Module, mode: str, norm_types: tuple[type[nn.Module], ...]) -> None:
    """Set requires_grad per finetune mode ("norm": only parameters of ``norm_types`` modules)."""
    for p in module.parameters():
        p.requires_grad_(mode == "full")
    if mode == "norm":
        for m in module.modules():
            if isinstance(m, norm_types):
                for p in m.parameters(recurse=False):
                    p.requires_grad_(True)


class _ImageNetNormalize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class ResNetEncoder(nn.Module):
    """ResNet-18 without pooling: images -> ``[N, h'*w', 512]`` tokens (row-major grid)."""

    #: Channels of the last ResNet-18 stage (token width of ``backbone``'s output).
    feature_dim = 512

    def __init__(self, config: ResNetEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.normalize = _ImageNetNormalize()
        self.backbone = _create_timm(config.model_name, config.pretrained, num_classes=0, global_pool="")
        _apply_finetune(self.backbone, config.finetune, (nn.BatchNorm2d,))

    def train(self, mode: bool = True) -> ResNetEncoder:
        super().train(mode)
        if self.config.finetune == "frozen":
            # A frozen backbone is a fixed function: in train mode BatchNorm would normalise by
            # the batch and overwrite its running statistics, so its features would depend on
            # the batch and drift (and could not be cached, sernf_learner.feature_cache).
            self.backbone.eval()
        return self

    @property
    def trainable_backbone(self) -> bool:
        return any(p.requires_grad for p in self.backbone.parameters())

    def num_tokens(self, height: int, width: int) -> int:
        """Tokens produced for an ``height x width`` input (after the optional resize)."""
        if self.config.resize is not None:
            height, width = self.config.resize
        return (-(-height // 32)) * (-(-width // 32))

    def backbone_features(self, images: Tensor) -> Tensor:
        """Images ``[N, h, w, 3]`` / ``[N, 3, h, w]`` -> ``[N, h'*w', 512]``."""
        x = _to_float_nchw(images)
        if self.config.resize is not None and tuple(x.shape[-2:]) != self.config.resize:
            x = F.interpolate(x, size=self.config.resize, mode="bilinear", align_corners=False)
        fmap = self.backbone.forward_features(self.normalize(x))  # [N, 512, h', w']
        return fmap.flatten(2).transpose(1, 2)

    def project(self, features: Tensor) -> Tensor:
        """Backbone features -> tokens (identity for ResNet: tokens are the 512-d features)."""
        return features

    def forward(self, images: Tensor) -> Tensor:
        return self.project(self.backbone_features(images))


class DinoV2Encoder(nn.Module):
    """DINOv2 ViT: images -> ``[N, 256, out_dim]`` penultimate-block patch tokens (at 224)."""

    def __init__(self, config: DinoV2EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.normalize = _ImageNetNormalize()
        self.backbone = _create_timm(
            config.model_name, config.pretrained, img_size=config.image_size, num_classes=0
        )
        self.feature_dim = int(self.backbone.embed_dim)
        self.projector = nn.Linear(self.feature_dim, config.out_dim)
        depth = len(self.backbone.blocks)
        if config.blocks_from_end >= depth:
            raise ValueError(f"blocks_from_end={config.blocks_from_end} but the backbone has {depth} blocks")
        self._block_index = depth - 1 - config.blocks_from_end
        _apply_finetune(self.backbone, config.finetune, (nn.LayerNorm,))

    def train(self, mode: bool = True) -> DinoV2Encoder:
        super().train(mode)
        if self.config.finetune == "frozen":
            self.backbone.eval()  # a fixed function (no dropout / drop-path), as ResNetEncoder.train
        return self

    @property
    def trainable_backbone(self) -> bool:
        return any(p.requires_grad for p in self.backbone.parameters())

    @property
    def num_tokens(self) -> int:
        return (self.config.image_size // 14) ** 2

    def backbone_features(self, images: Tensor) -> Tensor:
        """Images -> ``[N, (S/14)^2, C]`` patch tokens of the selected block, final norm applied."""
        x = _to_float_nchw(images)
        size = (self.config.image_size, self.config.image_size)
        if tuple(x.shape[-2:]) != size:  # "resize-naive" (G1): plain bilinear, no crop
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        (feats,) = self.backbone.forward_intermediates(
            self.normalize(x), indices=[self._block_index], norm=True, stop_early=True,
            output_fmt="NLC", intermediates_only=True,
        )  # prefix (cls + register) tokens are dropped by return_prefix_tokens=False
        return feats

    def project(self, features: Tensor) -> Tensor:
        return self.projector(features)

    def forward(self, images: Tensor) -> Tensor:
        return self.project(self.backbone_features(images))


class LowDimTokenizer(nn.Module):
    """Low-dim keys with T-step history -> ``[B, n_keys * T, D]`` (key-major, oldest first).

    Each (key, step) becomes ``Linear_key(x) + time_embed[t] + key_embed[key]``: the learned
    embeddings tell the attention layers which quantity and which step a token carries.
    """

    def __init__(self, key_dims: Mapping[str, int], history: int, token_dim: int) -> None:
        super().__init__()
        if not key_dims:
            raise ValueError("LowDimTokenizer needs at least one key")
        self.key_dims, self.history = dict(key_dims), int(history)
        self.proj = nn.ModuleDict({k: nn.Linear(d, token_dim) for k, d in self.key_dims.items()})
        self.time_embed = nn.Parameter(torch.randn(self.history, token_dim) * 0.02)  # [T, D]
        self.key_embed = nn.Parameter(torch.randn(len(self.key_dims), token_dim) * 0.02)

    @property
    def num_tokens(self) -> int:
        return len(self.key_dims) * self.history

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        tokens = []
        for i, (key, dim) in enumerate(self.key_dims.items()):
            x = obs[key]
            if x.ndim != 3 or x.shape[1:] != (self.history, dim):
                raise ValueError(f"low-dim key {key!r} must be [B, {self.history}, {dim}], got {tuple(x.shape)}")
            tokens.append(self.proj[key](x.to(self.time_embed.dtype)) + self.time_embed + self.key_embed[i])
        return torch.cat(tokens, dim=1)


class ObservationEncoder(nn.Module):
    """Spec-driven encoder: observation dict of ``[B, T, ...]`` -> tokens ``[B, L, D]``.

    Token order: rgb keys in spec order (each ``T x n_img`` tokens, time-major), then the
    low-dim tokens. Image tokens are projected to D (if the backbone width differs) and get a
    learned position embedding per (step, grid cell), since convolutional / patch features
    enter the attention layers as an unordered set otherwise.
    """

    def __init__(self, config: EncoderConfig, observation_spec: Mapping[str, Any], history: int) -> None:
        super().__init__()
        if not isinstance(config, EncoderConfig):
            raise ValueError(f"ObservationEncoder needs an EncoderConfig, got {type(config).__name__}")
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ValueError(f"history (T) must be a positive int, got {history!r}")
        self.config, self.history = config, history
        self.spec: dict[str, ObsKeySpec] = parse_observation_spec(observation_spec)
        d = config.token_dim
        self.rgb_keys = [k for k, s in self.spec.items() if s.kind == "rgb"]
        lowdim = {k: s.shape[0] for k, s in self.spec.items() if s.kind == "lowdim"}

        self.image_encoders = nn.ModuleDict()
        self.image_proj = nn.ModuleDict()
        self.image_pos = nn.ParameterDict()
        self._image_tokens: dict[str, int] = {}
        if self.rgb_keys:
            if config.image_backbone == "dinov2":
                # One backbone instance shared by all views (G1 "backbone_instance_name").
                self.image_encoders["shared"] = DinoV2Encoder(config.dinov2)
            else:
                for key in self.rgb_keys:
                    self.image_encoders[key] = ResNetEncoder(config.resnet)
            for key in self.rgb_keys:
                enc = self._image_encoder(key)
                h, w, _ = self.spec[key].shape
                n_img = enc.num_tokens if isinstance(enc, DinoV2Encoder) else enc.num_tokens(h, w)
                width = config.dinov2.out_dim if isinstance(enc, DinoV2Encoder) else enc.feature_dim
                self._image_tokens[key] = n_img
                self.image_proj[key] = nn.Identity() if width == d else nn.Linear(width, d)
                self.image_pos[key] = nn.Parameter(torch.randn(history * n_img, d) * 0.02)
        self.lowdim = LowDimTokenizer(lowdim, history, d) if lowdim else None

    def _image_encoder(self, key: str) -> ResNetEncoder | DinoV2Encoder:
        return self.image_encoders["shared" if "shared" in self.image_encoders else key]

    @property
    def num_tokens(self) -> int:
        """L: tokens per observation."""
        n = sum(self.history * t for t in self._image_tokens.values())
        return n + (self.lowdim.num_tokens if self.lowdim is not None else 0)

    def backbone_features(self, obs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Backbone outputs to cache: ``{f"{key}:features": [B, T, n_img, C]}`` for rgb keys."""
        with torch.no_grad():
            return {f"{k}{CACHED_FEATURES_SUFFIX}": v for k, v in self._image_features(obs, use_cache=False).items()}

    def _image_features(self, obs: Mapping[str, Tensor], use_cache: bool = True) -> dict[str, Tensor]:
        """Per rgb key ``[B, T, n_img, C]`` backbone features, from cache or computed.

        Views sharing one backbone go through it in a single batch.
        """
        feats: dict[str, Tensor] = {}
        to_compute: dict[int, list[str]] = {}
        for key in self.rgb_keys:
            cached = obs.get(f"{key}{CACHED_FEATURES_SUFFIX}")
            if cached is not None and use_cache:
                enc = self._image_encoder(key)
                if self.training and enc.trainable_backbone:
                    raise ValueError(
                        f"cached features for {key!r} bypass a trainable backbone; use "
                        "finetune='frozen' to train on cached features"
                    )
                if cached.ndim != 4 or cached.shape[1:3] != (self.history, self._image_tokens[key]):
                    raise ValueError(
                        f"cached features {key}{CACHED_FEATURES_SUFFIX} must be "
                        f"[B, {self.history}, {self._image_tokens[key]}, C], got {tuple(cached.shape)}"
                    )
                feats[key] = cached
                continue
            if key not in obs:
                raise ValueError(f"observation is missing rgb key {key!r}")
            to_compute.setdefault(id(self._image_encoder(key)), []).append(key)
        for keys in to_compute.values():
            enc = self._image_encoder(keys[0])
            imgs = [obs[k] for k in keys]
            for k, x in zip(keys, imgs, strict=True):
                if x.ndim != 5 or x.shape[1] != self.history:
                    raise ValueError(f"rgb key {k!r} must be [B, {self.history}, h, w, 3], got {tuple(x.shape)}")
            b = imgs[0].shape[0]
            flat = torch.cat([x.flatten(0, 1) for x in imgs], dim=0)  # [V*B*T, ...]
            out = enc.backbone_features(flat)  # [V*B*T, n_img, C]
            for k, chunk in zip(keys, out.split(b * self.history, dim=0), strict=True):
                feats[k] = chunk.unflatten(0, (b, self.history))
        return feats

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        """``obs`` dict of ``[B, T, ...]`` tensors (plus optional cached features) -> ``[B, L, D]``."""
        tokens = []
        feats = self._image_features(obs)
        for key in self.rgb_keys:
            enc = self._image_encoder(key)
            f = feats[key]  # [B, T, n_img, C]
            tok = self.image_proj[key](enc.project(f.flatten(1, 2).to(self.image_pos[key].dtype)))
            tokens.append(tok + self.image_pos[key])  # [B, T*n_img, D]
        if self.lowdim is not None:
            missing = [k for k in self.lowdim.key_dims if k not in obs]
            if missing:
                raise ValueError(f"observation is missing low-dim key(s) {missing}")
            tokens.append(self.lowdim(obs))
        out = torch.cat(tokens, dim=1)
        assert out.shape[1:] == (self.num_tokens, self.config.token_dim), out.shape
        return out
