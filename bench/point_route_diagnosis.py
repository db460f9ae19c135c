"""Does a point-task policy keep the two routes apart at its first decision?

The point task's demonstrations go around the obstacle above or below it (50/50 per episode),
so from a start state the expert's first chunk ends well to one side of the straight line to
the goal, never on it. A policy that averages the routes puts its chunks between them, on the
line, and drives into the obstacle. For 200 start states (the task's random layouts, seed
``--layout-seed``) this prints the distribution of the first chunk's displacement
perpendicular to the start->goal line (arena units; positive = left of the line, above the
obstacle for the default layout), as fractions per 0.1-wide bin, and the fraction within 0.05
of the line ("on the line"):

* the demonstrations' expert (quality 1, four draws of the route per start);
* the policy's candidates: ``--num-samples`` per start at each ``--sigma``;
* the candidate it would execute by the most likely of those (``selection="most_likely"``), and
  the fraction of starts whose candidates include both routes (beyond 0.1 on either side).

Run:  .venv/bin/python bench/point_route_diagnosis.py --policy RUN/policy_il [--sigma 1.0 0.7]
Options: --num-samples 64 --starts 200 --layout-seed 5 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
for _pkg in ("sernf_policy", "sernf_sim"):
    try:
        __import__(_pkg)
    except ImportError:  # running from a source checkout without the colcon overlay
        sys.path.insert(0, str(_ROOT / "src" / _pkg))

from sernf_sim.point_expert import ExpertConfig, PointExpert  # noqa: E402
from sernf_sim.point_task import PointTask, PointTaskConfig  # noqa: E402

BIN_EDGES = np.round(np.linspace(-0.6, 0.6, 13), 6)
ON_LINE = 0.05
"""Within this distance of the start->goal line after one chunk: between the routes (the clean
expert's first chunks end 0.15-0.35 to one side)."""


def start_states(starts: int, seed: int, T: int, P: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """First observation history ``{key: [n, T, ...]}`` (the reset observation repeated, as at an
    episode's first decision), a zero prefix ``[n, P, 2]`` and the unit normal ``[n, 2]`` of each
    start->goal line."""
    env = PointTask(num_envs=starts, seed=seed, config=PointTaskConfig())
    obs = env.reset(seed=seed)
    state = obs["state"]
    direction = state[:, 2:4] - state[:, :2]
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    normal = np.stack([-direction[:, 1], direction[:, 0]], axis=1)
    history = {k: np.repeat(v[:, None], T, axis=1) for k, v in obs.items()}
    return history, np.zeros((starts, P, 2), np.float32), normal


def offsets(chunks: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Displacement perpendicular to the line after the whole chunk: ``chunks [n, ..., H, 2]``
    (per-step displacements) -> ``[n, ...]``."""
    end = chunks.sum(axis=-2)
    return np.einsum("n...a,na->n...", end, normal)


def summarize(offset: np.ndarray) -> dict[str, object]:
    """Bin fractions over :data:`BIN_EDGES` (clipped into the outer bins) and the on-line fraction."""
    flat = np.clip(np.asarray(offset, dtype=np.float64).ravel(), BIN_EDGES[0] + 1e-9, BIN_EDGES[-1] - 1e-9)
    counts, _ = np.histogram(flat, BIN_EDGES)
    return {"bins": (counts / max(flat.size, 1)).round(4).tolist(), "on_line": float(np.mean(np.abs(flat) < ON_LINE))}


def both_routes_fraction(offset: np.ndarray, beyond: float = 0.1) -> float:
    """Fraction of starts (rows of ``offset [n, S]``) with candidates beyond ``beyond`` on both sides."""
    return float(np.mean((offset > beyond).any(axis=1) & (offset < -beyond).any(axis=1)))


def expert_offsets(history: dict[str, np.ndarray], prefix: np.ndarray, normal: np.ndarray, H: int,
                   draws: int = 4) -> np.ndarray:
    """The clean expert's first-chunk offsets ``[n, draws]`` (each draw picks the routes anew)."""
    out = []
    for seed in range(draws):
        chunk_fn = PointExpert(PointTaskConfig(), ExpertConfig(), seed=seed).chunk_act_fn(H)
        chunk_fn.reset({k: v[:, -1] for k, v in history.items()})
        out.append(offsets(chunk_fn(history, prefix), normal))
    return np.stack(out, axis=1)


def policy_offsets(policy, history: dict[str, np.ndarray], prefix: np.ndarray, normal: np.ndarray,
                   num_samples: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The policy's candidates' offsets ``[n, S]`` and the most likely candidate's ``[n]``."""
    import torch

    with torch.inference_mode():
        obs = {k: torch.as_tensor(v, device=policy.device) for k, v in history.items()}
        prefix_norm = policy.action_normalizer.normalize(torch.as_tensor(prefix, device=policy.device))
        chunks, log_prob = policy.sample(obs, prefix_norm, num_samples, sigma)
        raw = policy.action_normalizer.unnormalize(chunks).float().cpu().numpy()
    off = offsets(raw, normal)
    return off, off[np.arange(off.shape[0]), log_prob.argmax(dim=1).cpu().numpy()]


def _row(name: str, summary: dict[str, object]) -> str:
    return f"| {name} | " + " | ".join(f"{f:.2f}" for f in summary["bins"]) + f" | **{summary['on_line']:.2f}** |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True, help="an exported policy directory (e.g. RUN/policy_il)")
    parser.add_argument("--sigma", type=float, nargs="+", default=[1.0, 0.7], help="sampling temperatures")
    parser.add_argument("--num-samples", type=int, default=64, help="candidates per start")
    parser.add_argument("--starts", type=int, default=200, help="start states (random layouts)")
    parser.add_argument("--layout-seed", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    import torch

    from sernf_policy.policy import Policy

    torch.set_num_threads(args.threads)
    policy = Policy.load(args.policy).eval()
    if not policy.config.has_likelihood:
        parser.error(f"--policy: actor {policy.config.actor!r} has no likelihood, so no most-likely candidate")
    cfg = policy.config
    history, prefix, normal = start_states(args.starts, args.layout_seed, cfg.obs_history, cfg.prefix_len)
    figures: dict[str, object] = {"bin_edges": BIN_EDGES.tolist(), "policy": str(args.policy)}
    figures["expert"] = summarize(expert_offsets(history, prefix, normal, cfg.horizon))
    rows = [_row("expert (clean, 4 route draws)", figures["expert"])]
    for sigma in args.sigma:
        cand, chosen = policy_offsets(policy, history, prefix, normal, args.num_samples, sigma)
        figures[f"sigma={sigma}"] = {"candidates": summarize(cand), "most_likely": summarize(chosen),
                                     "both_routes": both_routes_fraction(cand)}
        rows.append(_row(f"candidates, σ {sigma}", figures[f"sigma={sigma}"]["candidates"]))
        rows.append(_row(f"most likely of {args.num_samples}, σ {sigma}", figures[f"sigma={sigma}"]["most_likely"]))
    header = "| first chunk | " + " | ".join(f"{a:+.1f}..{b:+.1f}" for a, b in zip(BIN_EDGES[:-1], BIN_EDGES[1:], strict=True)) \
        + f" | within {ON_LINE} of the line |"
    print(header)
    print("|---" * (len(BIN_EDGES) + 1) + "|")
    print("\n".join(rows))
    for sigma in args.sigma:
        print(f"σ {sigma}: starts whose candidates include both routes: {figures[f'sigma={sigma}']['both_routes']:.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
