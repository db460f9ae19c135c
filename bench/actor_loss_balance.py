"""How strongly each term of the RL actor's objective pulls the actor, on a policy and its data.

Stages III and IV minimise ``-Q(o, a_pi) / s + lambda * NLL(a_data)`` (paper §IV-D c; ``s`` is
TD3+BC's detached mean|Q| when ``normalize_q`` is on). The Q term is normalised to a scale of
about one whatever the task, but the NLL of a chunk is a sum over its H x A action dimensions,
so the same lambda weighs imitation far more on a robot with long, wide chunks than on a small
task. This prints, averaged over a few batches of a replay store in the training format, the
gradient norm of each term with respect to the actor's parameters (flow and actor encoder),
their ratio, and the lambda at which the two norms would be equal. Dropout is off, so that
the figures are of the model, not of one mask.

Run:  .venv/bin/python bench/actor_loss_balance.py --policy RUN/policy_offline_rl \\
          --store RUN/offline_replay [--bc-weight 0.1] [--batches 8] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
for _pkg in ("sernf_data", "sernf_policy", "sernf_learner"):
    try:
        __import__(_pkg)
    except ImportError:  # running from a source checkout without the colcon overlay
        sys.path.insert(0, str(_ROOT / "src" / _pkg))


def gradient_norms(policy, batches: Iterable[dict], config) -> dict:
    """Mean over ``batches`` of the actor-parameter gradient norm of each term of
    :func:`sernf_learner.offline_rl.actor_loss_terms` under ``config`` (an ``ActorConfig``),
    with the flow's dropout off; the policy's modes and dropout are restored afterwards."""
    import torch

    from sernf_learner.offline_rl import actor_loss_terms

    params = [p for p in policy.actor_parameters() if p.requires_grad]
    flow_dropout = policy.flow.config.dropout
    was_training = policy.training
    q_norms, bc_norms, nlls = [], [], []
    policy.train()
    policy.flow.set_dropout(0.0)
    try:
        for batch in batches:
            q_term, bc_term = actor_loss_terms(policy, batch, config)
            for term, out in ((q_term, q_norms), (bc_term, bc_norms)):
                grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
                out.append(math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads if g is not None)))
            nlls.append(bc_term.item() / config.bc_weight if config.bc_weight > 0 else float("nan"))
    finally:
        policy.flow.set_dropout(flow_dropout)
        policy.train(was_training)
    if not q_norms:
        raise ValueError("no batches")
    q, bc = sum(q_norms) / len(q_norms), sum(bc_norms) / len(bc_norms)
    cfg = policy.config
    return {
        "batches": len(q_norms),
        "chunk_dims": cfg.horizon * cfg.action_dim,
        "bc_weight": config.bc_weight,
        "mean_nll": sum(nlls) / len(nlls),
        "q_term_grad_norm": q,
        "bc_term_grad_norm": bc,
        "bc_over_q": bc / q if q > 0 else float("inf"),
        "balanced_bc_weight": config.bc_weight * q / bc if bc > 0 else float("inf"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", type=Path, required=True, help="an exported policy with a critic")
    parser.add_argument("--store", type=Path, required=True, help="a replay store in the training format (zarr)")
    parser.add_argument("--bc-weight", type=float, default=0.1, help="lambda (the run's actor.bc_weight)")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--gamma", type=float, default=0.99, help="per-step discount (the run's data.gamma)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.batches < 1 or args.batch_size < 1:
        parser.error("--batches and --batch-size must be >= 1")
    if not (math.isfinite(args.bc_weight) and args.bc_weight > 0):
        parser.error("--bc-weight must be > 0")

    import torch

    from sernf_data.store import EpisodeStore
    from sernf_learner.offline_rl import ActorConfig
    from sernf_learner.transitions import ChunkTiming, TransitionSampler
    from sernf_policy.policy import Policy

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    policy = Policy.load(args.policy)
    if policy.critic is None:
        parser.error(f"{args.policy} has no critic: the Q term needs one")
    cfg = policy.config
    store = EpisodeStore(str(args.store), mode="r")
    timing = ChunkTiming(T=cfg.obs_history, P=cfg.prefix_len, H=cfg.horizon, gamma=args.gamma,
                         td_horizon=cfg.critic_horizon)
    sampler = TransitionSampler(store, timing, args.batch_size, args.seed)
    figures = gradient_norms(policy, (sampler.sample() for _ in range(args.batches)),
                             ActorConfig(bc_weight=args.bc_weight))
    print(f"{args.policy} on {args.store}: {figures['batches']} batches of {args.batch_size}, "
          f"chunk H x A = {figures['chunk_dims']}, mean NLL of the data chunks {figures['mean_nll']:.1f}")
    print(f"  |grad Q term|             {figures['q_term_grad_norm']:.4g}")
    print(f"  |grad lambda x NLL term|  {figures['bc_term_grad_norm']:.4g}   (lambda {args.bc_weight:g})")
    print(f"  imitation / Q             {figures['bc_over_q']:.3g}")
    print(f"  lambda for equal norms    {figures['balanced_bc_weight']:.3g}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
