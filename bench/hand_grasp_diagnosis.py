"""Where a hand pick-and-place policy's grasp goes wrong: approach speed, reach, closing point.

Runs a policy (an exported ``policy_<stage>`` directory) or the scripted expert on the hand
task with one object strategy (box or cylinder), records the simulator's true state at every
chunk decision, and prints:

* success and grasp rate (the object was held at some point);
* the first chunk's mean commanded EE translation per step (mm; clipped as the env executes
  it) — the expert moves at up to 28 mm per step;
* how much of the initial horizontal distance to the object is covered after decisions 1-3;
* where the hand is when it first commands the fingers closed (past halfway between the
  expert's open and closed targets): horizontal distance to the object, height of the EE above
  the object's top, and the decision at which it happened; and, to tell a policy that picks
  an object from one that averages the two strategies, the distance of that point to the nearer
  of the two objects and to the midpoint between them (they stand ~20 cm apart).

The expert's own figures on the same layouts are the reference (``--expert demo`` is the
demonstrations' imperfect expert, ``--expert clean`` the noiseless one).

``--fit-demos REPLAY`` asks instead how well the policy reproduces its own *training* data: at
decision ``--step`` (0: the first) of every demonstration in the replay it gives the policy the
recorded observation and prefix and compares the chunk it chooses with the recorded one, as
cumulative end-effector translation paths over the H steps (clipped as the env executes them).
It prints the median path error, the median distance from each demonstration's chunk to the
nearest other demonstration's (what "fitted" can mean with this data) and the median length
of the demonstrations' paths.

Run:  .venv/bin/python bench/hand_grasp_diagnosis.py --policy RUN/policy_il --object cylinder
      .venv/bin/python bench/hand_grasp_diagnosis.py --expert demo --object cylinder
      .venv/bin/python bench/hand_grasp_diagnosis.py --policy RUN/policy_il --fit-demos RUN/offline_replay
Options: --episodes 50 --selection most_likely --sigma 0.1 --num-samples 16 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
for _pkg in ("sernf_policy", "sernf_learner", "sernf_sim"):
    try:
        __import__(_pkg)
    except ImportError:  # running from a source checkout without the colcon overlay
        sys.path.insert(0, str(_ROOT / "src" / _pkg))

sys.path.insert(0, str(_ROOT / "bench"))

from critic_ranking import decisions_at  # noqa: E402

from sernf_sim.evaluation import rollout_chunked  # noqa: E402
from sernf_sim.hand_pick_place import HAND_TIMING  # noqa: E402
from sernf_sim.hand_pick_place import model as M  # noqa: E402
from sernf_sim.hand_pick_place.env import POS, clip_action, make_env  # noqa: E402
from sernf_sim.hand_pick_place.expert import (  # noqa: E402
    CLOSED_HAND,
    OPEN_HAND,
    HandExpert,
    HandExpertConfig,
    default_demo_quality,
)

OBJECTS = {"box": 0, "cylinder": 1}
_MCP = [i for i, s in enumerate(M.FINGER_JOINTS) if s.name.endswith("_mcp") and not s.name.startswith("thumb")]
#: A finger command counts as "closing" past halfway between the open and closed mcp targets.
_CLOSING_MCP = float((OPEN_HAND[_MCP].mean() + CLOSED_HAND[_MCP].mean()) / 2)


class _Recorder:
    """Wraps an ``act_fn``: records the env's true state and the returned chunk per decision."""

    def __init__(self, env, act_fn) -> None:
        self.env, self.act_fn = env, act_fn
        self.states: list[dict[str, np.ndarray]] = []

    def reset(self, obs) -> None:
        self.states.clear()
        if hasattr(self.act_fn, "reset"):
            self.act_fn.reset(obs)

    def __call__(self, obs, prefix):
        env = self.env
        chunk = self.act_fn(obs, prefix)
        self.states.append({
            "ee": env.ee_pose()[:, :3].copy(),
            "objs": env.object_poses()[:, :, :3].copy(),  # [n, 2 objects, 3]
            "fingers": env.finger_targets()[:, _MCP].mean(axis=1),
            "held": env.object_contacts()["held"].copy(),  # [n, 2 objects]
            "chunk": np.asarray(chunk, dtype=np.float64).copy(),
        })
        return chunk


def diagnose(env, act_fn, obj: str, episodes: int, timing: tuple[int, int, int], seed: int) -> dict:
    """The figures above for ``act_fn`` on ``env`` (``episodes`` = ``env.num_envs`` layouts, from ``seed``)."""
    if episodes != env.num_envs:  # the recorder keeps one batch: every layout runs at once
        raise ValueError(f"diagnose runs one batch: episodes ({episodes}) must equal env.num_envs ({env.num_envs})")
    T, P, H = timing
    rec = _Recorder(env, act_fn)
    result = rollout_chunked(env, rec, T, P, H, episodes, seed=seed, record=False)
    s = rec.states
    ee, objs = np.stack([d["ee"] for d in s]), np.stack([d["objs"] for d in s])  # [D, n, 3], [D, n, 2, 3]
    target = objs[:, :, OBJECTS[obj]]
    fingers = np.stack([d["fingers"] for d in s])  # [D, n]
    held = np.stack([d["held"] for d in s])[:, :, OBJECTS[obj]]  # [D, n]
    start = np.linalg.norm(ee[0, :, :2] - target[0, :, :2], axis=-1)
    covered = {f"covered_after_decision_{d}": float(np.median(
        1 - np.linalg.norm(ee[d, :, :2] - target[0, :, :2], axis=-1) / np.maximum(start, 1e-6)))
        for d in (1, 2, 3) if d < len(s)}
    first = clip_action(s[0]["chunk"], env.config.max_pos_delta, env.config.max_rot_delta)
    speed_mm = np.linalg.norm(first[:, :, POS], axis=-1).mean(axis=1) * 1000  # [n]
    top = M.TABLE_TOP_Z + 2 * (M.BOX_HALF[2] if obj == "box" else M.CYL_HALF_HEIGHT)
    at_close = []
    for e in range(env.num_envs):
        idx = np.nonzero(fingers[:, e] > _CLOSING_MCP)[0]
        if len(idx):
            d = int(idx[0])
            xy = ee[d, e, :2]
            nearer = np.linalg.norm(xy - objs[d, e, :, :2], axis=-1).min()
            midpoint = np.linalg.norm(xy - objs[d, e, :, :2].mean(axis=0))
            at_close.append((np.linalg.norm(xy - target[d, e, :2]), ee[d, e, 2] - top, d, nearer, midpoint))
    closes = np.array(at_close) if at_close else np.zeros((0, 5))

    def quartiles(v: np.ndarray) -> list[float] | None:
        return [float(x) for x in np.percentile(v, [25, 50, 75])] if len(v) else None

    return {
        "object": obj, "episodes": episodes,
        "success": float(np.mean([bool(m["success"]) for m in result.metadata])),
        "grasp": float(held.any(axis=0).mean()),
        "first_chunk_speed_mm_per_step": quartiles(speed_mm),
        **covered,
        "closed_fraction": len(at_close) / env.num_envs,
        "close_xy_distance_m": quartiles(closes[:, 0]),
        "close_height_above_top_m": quartiles(closes[:, 1]),
        "close_decision": quartiles(closes[:, 2]),
        "close_nearer_object_distance_m": quartiles(closes[:, 3]),
        "close_midpoint_distance_m": quartiles(closes[:, 4]),
    }


def _path(chunk: np.ndarray, max_pos_delta: float, max_rot_delta: float) -> np.ndarray:
    """Cumulative EE translation ``[..., H, 3]`` of raw chunks ``[..., H, A]`` as the env clips them."""
    return np.cumsum(clip_action(np.asarray(chunk, dtype=np.float64), max_pos_delta, max_rot_delta)[..., POS], axis=-2)


def fit_to_demos(act_fn, episodes, obs_keys, step: int, timing: tuple[int, int, int], max_pos_delta: float,
                 max_rot_delta: float) -> dict:
    """How well ``act_fn`` reproduces the recorded chunk at decision ``step`` of each episode
    (``[(steps {key: [L, ...]}, metadata)]`` as a replay store returns them); the figures of
    ``--fit-demos`` (metres). Episodes too short for a whole chunk at this step are left out; the
    history before step 0 repeats o_0, as in training (:func:`critic_ranking.decisions_at`)."""
    _, P, H = timing
    d = decisions_at(episodes, step, obs_keys, timing)
    if len(d.chunk) < 2:
        raise ValueError(f"need at least 2 episodes with {step + P + H} steps, got {len(d.chunk)}")
    recorded = _path(d.chunk, max_pos_delta, max_rot_delta)  # [n, H, 3]
    chosen = _path(act_fn(d.obs, d.prefix), max_pos_delta, max_rot_delta)
    apart = np.linalg.norm(recorded[:, None] - recorded[None], axis=-1).mean(-1)  # [n, n]
    np.fill_diagonal(apart, np.inf)
    return {
        "step": step, "demonstrations": len(d.chunk),
        "path_error_m": float(np.median(np.linalg.norm(chosen - recorded, axis=-1).mean(-1))),
        "nearest_other_demo_m": float(np.median(apart.min(axis=1))),
        "demo_path_length_m": float(np.median(np.linalg.norm(recorded[:, -1], axis=-1))),
    }


def run_fit(policy_dir: Path, replay: str, step: int, selection: str, sigma: float, num_samples: int) -> dict:
    """:func:`fit_to_demos` of an exported policy on the demonstrations of a replay store."""
    from sernf_data.store import EpisodeStore
    from sernf_learner.online_rl import policy_act_fn
    from sernf_policy.policy import Policy

    policy = Policy.load(policy_dir)
    policy.config.selection = selection
    store = EpisodeStore(replay)
    episodes = [store.read_episode(i) for i in store.episode_ids()]
    demos = [(steps, meta) for steps, meta in episodes if meta.get("source") == "demo"]
    env_config = make_env("nominal", num_envs=1, render_images=False, seed=0).config
    timing = (policy.config.obs_history, policy.config.prefix_len, policy.config.horizon)
    return fit_to_demos(policy_act_fn(policy, num_samples, sigma), demos, list(policy.config.observation_spec), step,
                        timing, env_config.max_pos_delta, env_config.max_rot_delta)


def run(policy_dir: Path | None, expert: str | None, obj: str, episodes: int, selection: str,
        sigma: float, num_samples: int, seed: int = 99) -> dict:
    """Build the env and the actor (policy or expert) and :func:`diagnose` it."""
    if (policy_dir is None) == (expert is None):
        raise ValueError("give exactly one of a policy directory and an expert")
    if obj not in OBJECTS:
        raise ValueError(f"object must be one of {sorted(OBJECTS)}, got {obj!r}")
    env = make_env("nominal", num_envs=episodes, render_images=False, seed=seed)
    if expert is not None:
        box_prob = 1.0 if obj == "box" else 0.0
        cfg = {"clean": HandExpertConfig(box_prob=box_prob), "demo": default_demo_quality(box_prob=box_prob)}[expert]
        timing = (HAND_TIMING.T, HAND_TIMING.P, HAND_TIMING.H)
        act_fn = HandExpert(env, cfg, seed=seed).chunk_act_fn(timing[2])
    else:
        from sernf_learner.online_rl import policy_act_fn
        from sernf_policy.policy import Policy

        policy = Policy.load(policy_dir)
        policy.config.selection = selection
        timing = (policy.config.obs_history, policy.config.prefix_len, policy.config.horizon)
        act_fn = policy_act_fn(policy, num_samples, sigma)
    return diagnose(env, act_fn, obj, episodes, timing, seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--policy", type=Path, help="an exported policy directory (e.g. RUN/policy_il)")
    who.add_argument("--expert", choices=["clean", "demo"], help="the scripted expert instead")
    parser.add_argument("--object", choices=sorted(OBJECTS), default="cylinder")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--selection", choices=["most_likely", "single", "best_of_n"], default="most_likely")
    parser.add_argument("--sigma", type=float, default=0.1)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--fit-demos", metavar="REPLAY", help="with --policy: compare its chunks with the "
                        "recorded ones of this replay's demonstrations instead of running episodes")
    parser.add_argument("--step", type=int, default=0, help="with --fit-demos: the decision step (0: the first)")
    args = parser.parse_args()
    if args.fit_demos and args.policy is None:
        parser.error("--fit-demos needs --policy")
    if args.step < 0:
        parser.error("--step must be >= 0")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.fit_demos:
        out = run_fit(args.policy, args.fit_demos, args.step, args.selection, args.sigma, args.num_samples)
    else:
        out = run(args.policy, args.expert, args.object, args.episodes, args.selection, args.sigma, args.num_samples)
    for key, value in out.items():
        print(f"{key:32s} {value}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
