"""Throughput and expert success of the hand task:
``python -m sernf_sim.hand_pick_place.bench [--envs 10] [--success [--episodes 100]]``.

Measures control steps per second (one step = 0.1 s of simulated time per env) with the clean
scripted expert acting, in state-only mode and with both 84×84 cameras rendered (needs
``MUJOCO_GL=egl`` or ``osmesa``). Speed is measured here, never asserted in tests (docs/design.md §7).

``--success`` instead measures the scripted expert's success rate with the task's chunk timing:
the clean expert and the default demonstration quality, on the 10 fixed test layouts and on
``--episodes`` random layouts, in the nominal and the shifted variant (the figures to compare
when the hand or the expert changes).
"""

from __future__ import annotations

import argparse
import os
import time

from sernf_sim.evaluation import rollout_chunked
from sernf_sim.hand_pick_place import HAND_TIMING
from sernf_sim.hand_pick_place.config import test_configs
from sernf_sim.hand_pick_place.env import make_env
from sernf_sim.hand_pick_place.expert import HandExpert, HandExpertConfig, default_demo_quality


def measure(num_envs: int, render: bool, steps: int, seed: int = 0) -> dict[str, float]:
    """Run ``steps`` vectorized steps (resetting when all episodes ended); returns rates."""
    env = make_env(num_envs=num_envs, render_images=render)
    expert = HandExpert(env, seed=seed)
    obs = env.reset(seed=seed)
    expert.reset(obs)
    t_env = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        if env.done.all():
            obs = env.reset()
            expert.reset(obs)
        action = expert.act(obs)
        t1 = time.perf_counter()
        obs, *_ = env.step(action)
        t_env += time.perf_counter() - t1
    total = time.perf_counter() - t0
    return {
        "vector_steps_per_s": steps / t_env,
        "env_steps_per_s": steps * num_envs / t_env,
        "real_time_factor": steps * num_envs / t_env / env.control_hz,
        "with_expert_env_steps_per_s": steps * num_envs / total,
    }


def success_rates(random_episodes: int, seed: int = 7, num_envs: int = 10) -> list[dict]:
    """Expert success per (expert, variant, layouts): clean and default demo quality, nominal
    and shifted, the 10 test layouts and ``random_episodes`` random ones (chunk timing
    :data:`HAND_TIMING`)."""
    t, p, h = HAND_TIMING
    rows = []
    for expert_name, config in (("clean", HandExpertConfig()), ("demo", default_demo_quality())):
        for variant in ("nominal", "shifted"):
            for layouts in ("test", "random"):
                env = make_env(variant, num_envs=num_envs)
                expert = HandExpert(env, config, seed=1)
                if layouts == "test":
                    kw = dict(num_episodes=len(test_configs()), configs=test_configs(), seed=0)
                else:
                    kw = dict(num_episodes=random_episodes, seed=seed)
                r = rollout_chunked(env, expert.chunk_act_fn(h), t, p, h, **kw)
                rows.append(
                    dict(
                        expert=expert_name,
                        variant=variant,
                        layouts=layouts,
                        episodes=kw["num_episodes"],
                        success=r.success_rate,
                        grasp=r.subtask_success_rates["grasp"],
                        mean_length=r.mean_length,
                    )
                )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", type=int, default=10)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--no-render", action="store_true", help="skip the rendering measurement")
    p.add_argument("--success", action="store_true", help="measure the expert's success instead")
    p.add_argument("--episodes", type=int, default=100, help="random layouts per --success row")
    args = p.parse_args()
    if args.success:
        for r in success_rates(args.episodes, num_envs=args.envs):
            print(
                f"{r['expert']:>5} {r['variant']:>7} {r['layouts']:>6} ({r['episodes']:3d} episodes): "
                f"success {r['success']:.2f}, grasp {r['grasp']:.2f}, "
                f"mean length {r['mean_length']:.1f} steps"
            )
        return
    modes = [False] if args.no_render else [False, True]
    for render in modes:
        if render and os.environ.get("MUJOCO_GL") not in ("egl", "osmesa"):
            print("rendering: skipped (set MUJOCO_GL=egl or osmesa)")
            continue
        r = measure(args.envs, render, args.steps)
        mode = "rendering 2x84x84" if render else "state-only"
        print(
            f"{mode:>18}: {r['env_steps_per_s']:8.0f} env-steps/s "
            f"({r['vector_steps_per_s']:.1f} steps/s of {args.envs} envs, "
            f"{r['real_time_factor']:.0f}x real time; {r['with_expert_env_steps_per_s']:.0f} "
            "env-steps/s including the expert)"
        )


if __name__ == "__main__":
    main()
