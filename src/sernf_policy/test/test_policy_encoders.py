"""Observation encoders: token counts, trainable sets, shared DINOv2 backbone, cached features.

Forward passes are kept to single tiny batches; the ViT-L is only built (no forward), the
penultimate-block logic is checked on the ViT-S member of the same timm family.
"""

from __future__ import annotations

import pytest
import torch

from sernf_policy.encoders import (
    DinoV2Encoder,
    DinoV2EncoderConfig,
    EncoderConfig,
    LowDimTokenizer,
    ObservationEncoder,
    ResNetEncoder,
    ResNetEncoderConfig,
)

RESNET18_PARAMS = 11_176_512  # appendix G1, per encoder (no FC)
DINOV2_L_PLUS_PROJECTOR_PAPER = 303_711_744  # appendix G1


def test_resnet_tokens_and_parameter_count():
    enc = ResNetEncoder(ResNetEncoderConfig()).eval()
    assert sum(p.numel() for p in enc.backbone.parameters()) == RESNET18_PARAMS
    with torch.no_grad():
        tokens = enc(torch.randint(0, 256, (1, 224, 224, 3), dtype=torch.uint8))
        assert tokens.shape == (1, 49, 512)
        img = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
        small = enc(img)
        assert small.shape == (1, 2 * 3, 512) and enc.num_tokens(64, 96) == 6
        # channels-last uint8 == channels-first uint8 == float in [0, 1]
        assert torch.allclose(enc(img.permute(0, 2, 3, 1)), small, atol=1e-5)
        assert torch.allclose(enc(img.float() / 255.0), small, atol=1e-5)


def test_resnet_resize_and_finetune_modes():
    enc = ResNetEncoder(ResNetEncoderConfig(resize=(32, 64), finetune="norm")).eval()
    with torch.no_grad():
        assert enc(torch.zeros(1, 50, 50, 3, dtype=torch.uint8)).shape == (1, 2, 512)
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable and all(".bn" in n or "downsample.1" in n for n in trainable)
    frozen = ResNetEncoder(ResNetEncoderConfig(finetune="frozen"))
    assert not any(p.requires_grad for p in frozen.parameters())


@pytest.fixture(scope="module")
def vit_large_encoder():
    spec = {f"cam{i}": {"kind": "rgb", "shape": [120, 160, 3]} for i in range(3)}
    spec["joints"] = {"kind": "lowdim", "shape": [4]}
    return ObservationEncoder(EncoderConfig(image_backbone="dinov2"), spec, history=1)


def test_dinov2_large_builds_with_norm_finetuning_and_one_shared_backbone(vit_large_encoder):
    enc = vit_large_encoder
    assert list(enc.image_encoders) == ["shared"]  # one backbone instance for the 3 views
    dino = enc.image_encoders["shared"]
    assert isinstance(dino, DinoV2Encoder) and dino.feature_dim == 1024
    count = sum(p.numel() for p in dino.parameters())
    # timm's ViT-L/14-reg4 at 224 + Linear(1024, 512); the paper reports 44,032 fewer
    # (0.014%; its count of the position / prefix-token tables evidently differs).
    assert count == 303_755_776
    assert count - DINOV2_L_PLUS_PROJECTOR_PAPER == 44_032
    trainable = [n for n, p in dino.named_parameters() if p.requires_grad]
    assert all(n.startswith("projector.") or ".norm" in n or n.startswith("backbone.norm.") for n in trainable)
    assert sum("norm1" in n for n in trainable) == 2 * 24  # weight + bias of each block's norm1
    assert {n for n in trainable if n.startswith("projector.")} == {"projector.weight", "projector.bias"}
    assert enc.num_tokens == 3 * 256 + 1


def test_dinov2_penultimate_patch_tokens_from_a_shared_backbone():
    spec = {"left": {"kind": "rgb", "shape": [56, 84, 3]}, "right": {"kind": "rgb", "shape": [56, 84, 3]}}
    cfg = EncoderConfig(token_dim=32, image_backbone="dinov2", dinov2=DinoV2EncoderConfig(model_name="vit_small_patch14_reg4_dinov2"))
    enc = ObservationEncoder(cfg, spec, history=1).eval()
    dino = enc.image_encoders["shared"]
    imgs = {k: torch.randint(0, 256, (1, 1, 56, 84, 3), dtype=torch.uint8) for k in spec}
    with torch.no_grad():
        for block in dino.backbone.blocks:  # DINOv2 inits LayerScale at 1e-5: blocks ~ identity
            block.ls1.gamma.fill_(1.0)
            block.ls2.gamma.fill_(1.0)
        tokens = enc(imgs)
        assert tokens.shape == (1, 2 * 256, 32)
        feats = dino.backbone_features(imgs["left"][:, 0])
        assert feats.shape == (1, 256, 384)
        # reference: run all but the last block by hand, final norm, drop cls + 4 registers
        vit = dino.backbone
        x = torch.nn.functional.interpolate(
            imgs["left"][:, 0].permute(0, 3, 1, 2).float() / 255.0, size=(224, 224), mode="bilinear", align_corners=False
        )
        x = dino.normalize(x)
        x = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        for block in vit.blocks[:-1]:
            x = block(x)
        ref = vit.norm(x)[:, vit.num_prefix_tokens :]
        assert torch.allclose(feats, ref, atol=1e-4)
        last = vit.norm(vit.blocks[-1](x))[:, vit.num_prefix_tokens :]
        assert not torch.allclose(feats, last, atol=1e-3)


def test_lowdim_tokenizer_and_observation_encoder_order():
    spec = {"a": {"kind": "lowdim", "shape": [3]}, "b": {"kind": "lowdim", "shape": [1]}}
    enc = ObservationEncoder(EncoderConfig(token_dim=8), spec, history=4)
    obs = {"a": torch.randn(2, 4, 3), "b": torch.randn(2, 4, 1)}
    out = enc(obs)
    assert out.shape == (2, 8, 8) and enc.num_tokens == 8
    # token 5 is key "b" at step 1: it must depend on b[:, 1] only
    obs2 = {"a": obs["a"], "b": obs["b"].clone()}
    obs2["b"][:, 1] += 1.0
    diff = (enc(obs2) - out).abs().sum(-1)[0]
    assert diff[5] > 0 and diff.sum() == diff[5]
    with pytest.raises(ValueError, match="'b'"):
        enc({"a": obs["a"]})
    with pytest.raises(ValueError, match="'a'"):
        LowDimTokenizer({"a": 3}, 4, 8)({"a": torch.randn(2, 3, 3)})


def test_cached_features_replace_a_frozen_backbone():
    spec = {"cam": {"kind": "rgb", "shape": [32, 32, 3]}, "q": {"kind": "lowdim", "shape": [2]}}
    frozen = EncoderConfig(token_dim=16, resnet=ResNetEncoderConfig(finetune="frozen"))
    enc = ObservationEncoder(frozen, spec, history=2).eval()
    obs = {"cam": torch.randint(0, 256, (1, 2, 32, 32, 3), dtype=torch.uint8), "q": torch.randn(1, 2, 2)}
    with torch.no_grad():
        direct = enc(obs)
        cache = enc.backbone_features(obs)
        assert cache["cam:features"].shape == (1, 2, 1, 512)
        via_cache = enc({"cam:features": cache["cam:features"], "q": obs["q"]})
    assert torch.allclose(direct, via_cache, atol=1e-6)
    enc.train()
    enc({"cam:features": cache["cam:features"], "q": obs["q"]})  # frozen: fine in training
    trainable = ObservationEncoder(EncoderConfig(token_dim=16), spec, history=2).train()
    with pytest.raises(ValueError, match="trainable backbone"):
        trainable({"cam:features": cache["cam:features"], "q": obs["q"]})


def test_config_validation():
    with pytest.raises(ValueError):
        ResNetEncoderConfig(model_name="resnet50")
    with pytest.raises(ValueError):
        DinoV2EncoderConfig(image_size=225)
    with pytest.raises(ValueError):
        EncoderConfig(image_backbone="vgg")
    with pytest.raises(ValueError):
        ResNetEncoderConfig(pretrained=3)
    with pytest.raises(ValueError, match="not found"):
        ResNetEncoder(ResNetEncoderConfig(pretrained="/nonexistent/weights.safetensors"))
