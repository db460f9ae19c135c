"""Does a mixture of flows split the hand task's two strategies between its flows?

For an imitation run of ``bench/learning.py`` on the hand task with ``policy.flow_components``
M >= 2, this reads each successful demonstration's strategy from its recorded object states
(the object that moved from its start to its end: box or cylinder) and prints

* which flow imitation assigned each demonstration to (``FlowAssignment`` in the run's last
  imitation checkpoint), per strategy: a split by strategy puts each strategy on its own flow;
* at decision steps 0, 10, 20 and 30 of every successful demonstration, the exported policy's
  log-likelihood of the recorded chunk under flow 0 minus flow 1 and the mixture weight of flow
  0, as means per strategy beside the spread over demonstrations: where the flows have learned
  the strategies, the two strategies' means differ by much more than the spread.

Run:  .venv/bin/python bench/hand_strategy_split.py --run OUT/runs/nf_il/seed0
      (``--policy`` defaults to RUN/policy_il, ``--checkpoint`` to the last imitation checkpoint)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

STRATEGIES = ("box", "cylinder")  # the hand task's object order in ``object_state``
OBJECT_STATE_WIDTH = 10  # per object: position relative to the EE (3), to the target (3), quaternion (4)


def demo_strategies(snapshot) -> np.ndarray:
    """``[E]``: per episode, the index of the object whose position relative to the (fixed)
    target moved most between its first and last step (0 box, 1 cylinder)."""
    states = snapshot.arrays["object_state"]
    out, start = [], 0
    for episode in snapshot.episodes:
        first, last = states[start], states[start + episode["length"] - 1]
        start += episode["length"]
        moved = [np.linalg.norm(last[k * OBJECT_STATE_WIDTH + 3:k * OBJECT_STATE_WIDTH + 5]
                                - first[k * OBJECT_STATE_WIDTH + 3:k * OBJECT_STATE_WIDTH + 5]) for k in range(2)]
        out.append(int(np.argmax(moved)))
    return np.asarray(out)


def last_imitation_checkpoint(run: Path) -> Path:
    found = sorted((run / "checkpoints").glob("ckpt-*-il-*"))
    if not found:
        sys.exit(f"no imitation checkpoint under {run / 'checkpoints'} (kept: trainer.keep_checkpoints)")
    return found[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a run directory: OUT/runs/<method>/seed<k>")
    parser.add_argument("--policy", type=Path, default=None, help="exported policy (default RUN/policy_il)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint with the IL learner state")
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 10, 20, 30], help="decision steps to score")
    args = parser.parse_args(argv)

    import torch
    from safetensors.torch import load_file

    from sernf_data.store import EpisodeStore
    from sernf_learner.transitions import ChunkTiming, TransitionSampler, batch_to_torch
    from sernf_policy.policy import Policy

    store = EpisodeStore(str(args.run / "offline_replay"), mode="r")
    snapshot = store.load_arrays()
    strategy = demo_strategies(snapshot)
    checkpoint = args.checkpoint or last_imitation_checkpoint(args.run)
    state = load_file(str(checkpoint / "trainer.safetensors"))
    scores, seen = state["stage/learner/flow_assignment/scores"], state["stage/learner/flow_assignment/seen"]
    assigned = (scores - scores[seen].mean(dim=0)).argmax(dim=1).numpy()
    success = np.array([bool(e["success"]) for e in snapshot.episodes])
    m = scores.shape[1]
    print(f"checkpoint {checkpoint.name}: demonstrations imitated by each flow, per strategy")
    for k, name in enumerate(STRATEGIES):
        rows = np.flatnonzero(success & (strategy == k))
        rows = rows[rows < assigned.shape[0]]
        print(f"  {name:9s} ({rows.size:3d} successful): flows {np.bincount(assigned[rows], minlength=m).tolist()}")

    policy_dir = args.policy or args.run / "policy_il"
    if not policy_dir.exists():
        sys.exit(f"no exported policy at {policy_dir} yet (imitation still running?)")
    policy = Policy.load(policy_dir).eval()
    if policy.config.actor != "flow" or policy.config.flow.components < 2:
        sys.exit("the policy is not a mixture of flows (policy.flow_components >= 2)")
    cfg = policy.config
    timing = ChunkTiming(T=cfg.obs_history, P=cfg.prefix_len, H=cfg.horizon)
    sampler = TransitionSampler(store, timing, batch_size=1, seed=0, success_only=True)
    episodes = sampler.eligible_episodes
    norm = policy.action_normalizer
    print("log p(chunk | flow 0) - log p(chunk | flow 1) and pi_0, per strategy (mean) and over all (sd)")
    for t in args.steps:
        rows = np.array([e for e in episodes if t < len(sampler.decision_steps(int(e)))], dtype=np.int64)
        if rows.size == 0:
            continue
        batch = batch_to_torch(sampler.build_batch(rows, np.full(rows.size, t)))
        with torch.no_grad():
            context = policy.actor_context(batch["obs"], norm.normalize(batch["prefix"]))
            log_w, per_flow = policy.flow.component_log_likelihoods(norm.normalize(batch["chunk"]), context)
        diff, weight = (per_flow[:, 0] - per_flow[:, 1]).numpy(), log_w.exp()[:, 0].numpy()
        kinds = strategy[rows]
        means = " / ".join(f"{diff[kinds == k].mean():7.2f}" for k in range(2))
        weights = " / ".join(f"{weight[kinds == k].mean():.2f}" for k in range(2))
        print(f"  t={t:3d} ({rows.size} demos): box / cylinder {means} (sd {diff.std():6.2f}); pi_0 {weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
