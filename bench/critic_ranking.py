"""Does a policy's critic rank recorded chunks by what followed them?

Best-of-N selection (Alg. 2) helps only if the critic orders chunks by what they lead to. For
every episode of the given replay stores that is long enough, this scores the recorded chunk
at decision step t (with the recorded observation history and prefix, as training sees them)
by the policy's min-Q and prints, per t:

* the Spearman rank correlation of that score with the discounted return from t on,
  ``G_t = sum_k gamma^k r_{t+k}`` (what Q estimates, for the policy that recorded them);
* among the episodes with no reward before t (so that what is still to come decides), the
  area under the ROC curve of the score for the episode's outcome (success, or one subtask
  with ``--subtask``), with its two-sided Mann-Whitney p-value: 0.5 is a critic that cannot
  tell the episodes that will succeed from those that will not, 1.0 one that ranks every
  success first. (Counting every episode would mix in rewards already collected: after a
  grasp, Q rightly drops by the grasp's reward.)

Scored on episodes the critic never trained on (e.g. the online rollouts of another run or
seed), this is the critic's ranking of that policy's behaviour; on its own training data, how
well it fits them. In a recorded episode the chunk at step t is one of many that decide the
outcome, so even a perfect critic stays below 1.0 at early t.

Run:  .venv/bin/python bench/critic_ranking.py --policy RUN/policy_critic_warmup \\
          --episodes OTHER_RUN/online_replay [more stores] [--source online] [--steps 0 10 20 30] \\
          [--gamma 0.99]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
for _pkg in ("sernf_data", "sernf_policy"):
    try:
        __import__(_pkg)
    except ImportError:  # running from a source checkout without the colcon overlay
        sys.path.insert(0, str(_ROOT / "src" / _pkg))

Episode = tuple[Mapping[str, np.ndarray], Mapping]
#: ``(obs {key: [n, T, ...]}, prefix [n, P, A], chunk [n, H, A]) -> scores [n]`` (raw units).
ScoreFn = Callable[[dict[str, np.ndarray], np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Decisions:
    """The training-format inputs at one decision step of n episodes, and what followed."""

    obs: dict[str, np.ndarray]
    """Observation history per key ``[n, T, ...]``."""
    prefix: np.ndarray
    """Queued actions ``[n, P, A]`` (raw units)."""
    chunk: np.ndarray
    """The recorded chunk ``[n, H, A]`` (raw units)."""
    outcome: np.ndarray
    """``[n]`` bool: the episode succeeded (or the chosen subtask did)."""
    return_to_go: np.ndarray
    """``[n]``: discounted return from the decision step on."""
    rewarded_before: np.ndarray
    """``[n]`` bool: some reward came before the decision step."""


def decisions_at(episodes: Sequence[Episode], step: int, obs_keys: Sequence[str], timing: tuple[int, int, int],
                 subtask: str | None = None, gamma: float = 0.99) -> Decisions:
    """:class:`Decisions` at ``step`` of each episode with a whole chunk there. The history
    before step 0 repeats the first observation, as the transition sampler does."""
    T, P, H = timing
    obs: dict[str, list[np.ndarray]] = {k: [] for k in obs_keys}
    prefixes, chunks, outcome, returns, before = [], [], [], [], []
    for steps, meta in episodes:
        if len(steps["action"]) < step + P + H:
            continue
        for k in obs_keys:
            obs[k].append(np.stack([steps[k][max(step - T + 1 + i, 0)] for i in range(T)]))
        prefixes.append(steps["action"][step:step + P])
        chunks.append(steps["action"][step + P:step + P + H])
        outcome.append(bool(meta["subtask_success"][subtask] if subtask else meta["success"]))
        rewards = np.asarray(steps["reward"], dtype=np.float64)
        returns.append(float(np.sum(rewards[step:] * gamma ** np.arange(len(rewards) - step))))
        before.append(bool(np.any(rewards[:step] != 0)))
    if not chunks:
        empty = np.zeros((0,))
        return Decisions({k: empty for k in obs_keys}, empty, empty, empty.astype(bool), empty, empty.astype(bool))
    return Decisions({k: np.stack(v) for k, v in obs.items()}, np.stack(prefixes).astype(np.float32),
                     np.stack(chunks).astype(np.float32), np.asarray(outcome), np.asarray(returns), np.asarray(before))


def ranking(scores: np.ndarray, outcome: np.ndarray) -> dict:
    """ROC AUC of ``scores`` for ``outcome`` (ties count one half) with the two-sided
    Mann-Whitney p-value; ``None`` figures when one class is empty."""
    from scipy.stats import mannwhitneyu

    scores, outcome = np.asarray(scores, dtype=np.float64), np.asarray(outcome, dtype=bool)
    pos, neg = scores[outcome], scores[~outcome]
    out = {"episodes": int(len(scores)), "successes": int(len(pos)),
           "mean_score_success": float(pos.mean()) if len(pos) else None,
           "mean_score_failure": float(neg.mean()) if len(neg) else None, "auc": None, "p": None}
    if len(pos) and len(neg):
        test = mannwhitneyu(pos, neg, alternative="two-sided")
        out["auc"], out["p"] = float(test.statistic / (len(pos) * len(neg))), float(test.pvalue)
    return out


def rank_episodes(score_fn: ScoreFn, episodes: Sequence[Episode], steps: Sequence[int], obs_keys: Sequence[str],
                  timing: tuple[int, int, int], subtask: str | None = None, gamma: float = 0.99) -> list[dict]:
    """Per decision step in ``steps``: the Spearman correlation of ``score_fn`` with the return
    to go (``spearman``, over every episode with a chunk there) and :func:`ranking` for the
    outcome among the episodes not rewarded before the step."""
    from scipy.stats import spearmanr

    rows = []
    for step in steps:
        d = decisions_at(episodes, step, obs_keys, timing, subtask, gamma)
        scores = score_fn(d.obs, d.prefix, d.chunk) if len(d.outcome) else np.zeros((0,))
        varied = len(scores) > 2 and np.ptp(scores) > 0 and np.ptp(d.return_to_go) > 0
        rho = float(spearmanr(scores, d.return_to_go).statistic) if varied else None
        open_ = ~d.rewarded_before
        rows.append({"step": int(step), "scored": int(len(scores)), "spearman": rho,
                     **ranking(scores[open_], d.outcome[open_])})
    return rows


def policy_min_q(policy) -> ScoreFn:
    """``min_j Q_j`` of a policy's critic for recorded (raw) chunks, in evaluation mode (a loaded
    policy is in training mode, where the critic's dropout would make every score a draw)."""
    import torch

    def score(obs: dict[str, np.ndarray], prefix: np.ndarray, chunk: np.ndarray) -> np.ndarray:
        normalize = policy.action_normalizer.normalize
        was_training = policy.training
        policy.eval()
        try:
            with torch.inference_mode():
                obs_t = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in obs.items()}
                q = policy.min_q(obs_t, normalize(torch.as_tensor(prefix)), normalize(torch.as_tensor(chunk))[:, None])
        finally:
            policy.train(was_training)
        return q[:, 0].double().cpu().numpy()

    return score


def read_episodes(stores: Sequence[Path], source: str | None) -> list[Episode]:
    from sernf_data.store import EpisodeStore

    episodes: list[Episode] = []
    for uri in stores:
        store = EpisodeStore(str(uri))
        for episode_id in store.episode_ids():
            steps, meta = store.read_episode(episode_id)
            if source is None or meta.get("source") == source:
                episodes.append((steps, meta))
    return episodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", type=Path, required=True, help="an exported policy with a critic")
    parser.add_argument("--episodes", type=Path, nargs="+", required=True, help="replay stores (zarr directories)")
    parser.add_argument("--source", default=None, help="only episodes of this source (demo, online, ...)")
    parser.add_argument("--subtask", default=None, help="rank for this subtask's success instead (e.g. grasp)")
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 10, 20, 30], help="decision steps to score")
    parser.add_argument("--gamma", type=float, default=0.99, help="per-step discount of the return to go (the run's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if any(s < 0 for s in args.steps):
        parser.error("--steps must be >= 0")
    if not 0.0 < args.gamma <= 1.0:
        parser.error("--gamma must be in (0, 1]")

    import torch

    from sernf_policy.policy import Policy

    torch.set_num_threads(args.threads)
    policy = Policy.load(args.policy)
    if policy.critic is None:
        parser.error(f"{args.policy} has no critic")
    episodes = read_episodes(args.episodes, args.source)
    if not episodes:
        parser.error(f"no episodes{f' of source {args.source!r}' if args.source else ''} in {args.episodes}")
    cfg = policy.config
    rows = rank_episodes(policy_min_q(policy), episodes, args.steps, list(cfg.observation_spec),
                         (cfg.obs_history, cfg.prefix_len, cfg.horizon), args.subtask, args.gamma)
    outcome = args.subtask or "success"
    print(f"{args.policy}: min-Q of the recorded chunk against the return to go (gamma {args.gamma:g}) and, "
          f"among episodes not yet rewarded, their {outcome}; {len(episodes)} episodes from "
          f"{len(args.episodes)} store(s)")
    print(f"| step | scored | Spearman (Q, return to go) | not yet rewarded | with {outcome} | "
          f"mean Q, {outcome} | mean Q, not | AUC | p |")
    print("|---|---|---|---|---|---|---|---|---|")

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for r in rows:
        print(f"| {r['step']} | {r['scored']} | {fmt(r['spearman'], '.2f')} | {r['episodes']} | {r['successes']} | "
              f"{fmt(r['mean_score_success'], '.3f')} | {fmt(r['mean_score_failure'], '.3f')} | "
              f"{fmt(r['auc'], '.2f')} | {fmt(r['p'], '.2g')} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"policy": str(args.policy), "outcome": outcome, "gamma": args.gamma,
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
