"""Training memory of one image through the DINOv2 encoder, per finetune mode (no GPU needed).

What autograd keeps for the backward pass of one 224x224 image through ``DinoV2Encoder``
(backbone up to the penultimate block + projector): the sum of the distinct tensors saved for
backward (``torch.autograd.graph.saved_tensors_hooks``), for finetune "norm" (G1: only the
LayerNorms train, so the gradient must reach the first block and every block's activations are
kept), "frozen" (nothing in the backbone needs a gradient: only the projector's input is kept)
and "full". Also the parameter bytes. These are the numbers behind the batch sizes of
``config/train_scissors.yaml``. Saved tensors are measured on the CPU; on a GPU, fused
attention kernels keep the attention output and its log-sum-exp rather than any 16 x 261 x 261
probabilities (at most ~0.1 GiB per image over the 23 blocks), so the CPU figure is an upper
bound there, up to allocator slack.

Run:  .venv/bin/python bench/encoder_memory.py [--model vit_large_patch14_reg4_dinov2] [--images 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _pkg in ("sernf_policy",):
    try:
        __import__(_pkg)
    except ImportError:  # running from a source checkout without the colcon overlay
        sys.path.insert(0, str(_ROOT / "src" / _pkg))

import torch  # noqa: E402

from sernf_policy.encoders import DinoV2Encoder, DinoV2EncoderConfig  # noqa: E402

GIB = 1024**3


def saved_bytes(encoder: DinoV2Encoder, images: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd saves for backward during one forward."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        # Views share storage: count each storage once, at its full size.
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = encoder(images)
    del out
    return sum(seen.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_large_patch14_reg4_dinov2")
    parser.add_argument("--images", type=int, default=2, help="images per forward (the figure is per image)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.images, 224, 224, 3), dtype=torch.uint8)
    for mode in ("norm", "frozen", "full"):
        encoder = DinoV2Encoder(DinoV2EncoderConfig(model_name=args.model, pretrained=False, finetune=mode))
        params = sum(p.numel() for p in encoder.parameters())
        trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
        per_image = saved_bytes(encoder, images) / args.images
        print(f"{args.model} finetune={mode:6s}: {per_image / GIB:6.3f} GiB saved for backward per 224x224 image; "
              f"parameters {params / 1e6:6.1f} M ({params * 4 / GIB:.2f} GiB fp32), trainable {trainable / 1e6:7.3f} M",
              flush=True)
        del encoder
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
