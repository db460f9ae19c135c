"""Model size and one-chunk latency of the SERNF policy (docs/design.md §7: measured, never asserted).

(a) Parameter counts of the paper-size actor (K=16 couplings, hidden 256) and critic next to
    the formulas of appendix G1, for A=17 (cube) and A=24 (scissors), and of the ResNet-18 and
    DINOv2 ViT-L/14 (+ projector) encoders.
(b) Latency of ``Policy.act_batch`` for one observation of the cube config (A=17, H=6, P=2,
    T=4 low-dim history: hand joints 17 + cube pose 7; N=24 candidates, best-of-N with the
    M=2 critic ensemble) on this machine's CPU: median over ``--runs`` calls after warm-up.

Run:  .venv/bin/python bench/model_size.py [--runs 20] [--threads N] [--skip-vit]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

try:
    import sernf_policy  # noqa: F401
except ImportError:  # running from a source checkout without the colcon overlay
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src" / "sernf_policy"))

import numpy as np
import torch

from sernf_policy.critic import ChunkCritic
from sernf_policy.encoders import (
    DinoV2Encoder,
    DinoV2EncoderConfig,
    ResNetEncoder,
    ResNetEncoderConfig,
)
from sernf_policy.flow import ChunkFlow
from sernf_policy.param_counts import (
    PAPER_ACTOR_LAYER_CONST,
    PAPER_ACTOR_LAYER_PER_ACTION,
    PAPER_DINOV2_L_WITH_PROJECTOR,
    PAPER_RESNET18,
    count_parameters,
    paper_actor_params,
    paper_critic_params,
    paper_size_critic_config,
    paper_size_flow_config,
)
from sernf_policy.policy import Policy, PolicyConfig

# (name, A, H, P) per task, chunk timing of Fig. 7
TASKS = [("cube", 17, 6, 2), ("scissors", 24, 10, 3)]


def report_counts(skip_vit: bool) -> None:
    print("== (a) parameter counts vs. appendix G1 ==")
    for name, a, h, p in TASKS:
        flow = ChunkFlow(paper_size_flow_config(a, h))
        layer = count_parameters(flow.layers[0])
        total = count_parameters(flow)
        paper_layer = PAPER_ACTOR_LAYER_CONST + PAPER_ACTOR_LAYER_PER_ACTION * a
        print(
            f"actor  {name:8s} A={a}: ours {total:>12,} ({layer:,}/layer, + 512 context norm) | "
            f"paper {paper_actor_params(a):>12,} ({paper_layer:,}/layer) | diff/layer {layer - paper_layer:+,}"
        )
        critic = ChunkCritic(paper_size_critic_config(a, h, p))
        member = count_parameters(critic.members[0])
        paper = paper_critic_params(a, p + h)
        print(
            f"critic {name:8s} A={a}, T_a=P+H={p + h}: ours {member:>10,} per critic (x{len(critic.members)}) | "
            f"paper {paper:>10,} | diff {member - paper:+,}"
        )
    print(
        "  actor: the 1,282 x A term matches (Linear(A,256) in + two GELU heads 256->512->A); the\n"
        "  per-layer constant differs because G1 leaves the MLP width / projections open. Ours:\n"
        "  SwiGLU 4x256, bias-free attention = 1,706,496. (mlp_ratio=12 would give 3,279,360,\n"
        "  -4,544 vs the paper, but the paper does not say its block is built that way.)"
    )
    resnet = count_parameters(ResNetEncoder(ResNetEncoderConfig()).backbone)
    print(f"ResNet-18 (no FC): ours {resnet:,} | paper {PAPER_RESNET18:,} | diff {resnet - PAPER_RESNET18:+,}")
    if skip_vit:
        print("DINOv2 ViT-L/14: skipped (--skip-vit)")
        return
    vit = count_parameters(DinoV2Encoder(DinoV2EncoderConfig()))
    print(
        f"DINOv2 ViT-L/14-reg4 @224 + projector: ours {vit:,} | paper {PAPER_DINOV2_L_WITH_PROJECTOR:,} | "
        f"diff {vit - PAPER_DINOV2_L_WITH_PROJECTOR:+,} (timm tables; see param_counts.py)"
    )


def cube_policy(num_samples: int) -> Policy:
    spec = {"hand_joints": {"kind": "lowdim", "shape": [17]}, "cube_pose": {"kind": "lowdim", "shape": [7]}}
    cfg = PolicyConfig.create(spec, action_dim=17, obs_history=4, prefix_len=2, horizon=6, num_samples=num_samples)
    return Policy(cfg).eval()


def report_latency(runs: int, warmup: int, num_samples: int) -> None:
    policy = cube_policy(num_samples)
    rng = np.random.default_rng(0)
    obs = {
        "hand_joints": rng.normal(size=(1, 4, 17)).astype(np.float32),
        "cube_pose": rng.normal(size=(1, 4, 7)).astype(np.float32),
    }
    prefix = rng.normal(size=(1, 2, 17)).astype(np.float32)
    for _ in range(warmup):
        policy.act_batch(obs, prefix)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        policy.act_batch(obs, prefix)
        times.append(time.perf_counter() - start)
    ms = sorted(t * 1e3 for t in times)
    print("== (b) one-chunk latency, cube config ==")
    print(
        f"act_batch B=1, N={num_samples}, K=16, hidden 256, critic M=2, A=17 H=6 P=2 T=4 "
        f"({count_parameters(policy):,} params), CPU, {torch.get_num_threads()} thread(s): "
        f"median {statistics.median(ms):.1f} ms, min {ms[0]:.1f} ms, max {ms[-1]:.1f} ms over {runs} runs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=24)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--skip-vit", action="store_true", help="do not build the ViT-L (1.2 GB)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    report_counts(args.skip_vit)
    report_latency(args.runs, args.warmup, args.num_samples)


if __name__ == "__main__":
    main()
