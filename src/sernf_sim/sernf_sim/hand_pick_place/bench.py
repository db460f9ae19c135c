"""Throughput of the hand task: ``python -m sernf_sim.hand_pick_place.bench [--envs 10]``.

Measures control steps per second (one step = 0.1 s of simulated time per env) with the clean
scripted expert acting, in state-only mode and with both 84×84 cameras rendered (needs
``MUJOCO_GL=egl`` or ``osmesa``). Speed is measured here, never asserted in tests (docs/design.md §7).
"""

from __future__ import annotations

import argparse
import os
import time

from sernf_sim.hand_pick_place.env import make_env
from sernf_sim.hand_pick_place.expert import HandExpert


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", type=int, default=10)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--no-render", action="store_true", help="skip the rendering measurement")
    args = p.parse_args()
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
