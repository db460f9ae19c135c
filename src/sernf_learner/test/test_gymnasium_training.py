"""The trainer on a user's gymnasium task: demos recorded with record_demonstrations, the run
config naming the env by its gymnasium id (YAML), IL → critic warm-up → offline RL → online RL
with evaluation, then distillation of the result (teacher kind "checkpoint") through
``Trainer(env_factory=...)``."""

from __future__ import annotations

import json

import gymnasium
import numpy as np
import pytest
import yaml
from gymnasium import spaces

from sernf_data.store import EpisodeStore
from sernf_learner.configs import EnvConfig, RunConfig, load_config
from sernf_learner.trainer import Trainer, make_env
from sernf_sim.gymnasium_task import GymnasiumEnvConfig, GymnasiumTask, record_demonstrations

ENV_ID = "SernfTestReach-v0"
MAX_STEP = 0.1


class Reach(gymnasium.Env):
    """A point steps (≤ MAX_STEP per axis) to a goal; ``is_success`` within 0.1 of it."""

    metadata = {"render_modes": [], "render_fps": 10}

    def __init__(self, time_limit: int = 30):
        self.observation_space = spaces.Box(-2.0, 2.0, (4,), np.float32)
        self.action_space = spaces.Box(-MAX_STEP, MAX_STEP, (2,), np.float32)
        self.time_limit = time_limit

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1.0, -0.5, 2)
        self.goal = self.np_random.uniform(0.5, 1.0, 2)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.pos = np.clip(self.pos + np.asarray(action, dtype=np.float64), -2, 2)
        self.t += 1
        reached = bool(np.linalg.norm(self.pos - self.goal) < 0.1)
        return self._obs(), float(reached), reached, self.t >= self.time_limit and not reached, {"is_success": reached}

    def _obs(self):
        return np.concatenate([self.pos, self.goal]).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def registered():
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point=Reach)
    yield
    gymnasium.registry.pop(ENV_ID, None)


def run_config(tmp_path, demos) -> dict:
    tiny = dict(obs_history=1, prefix_len=2, horizon=4, token_dim=16, flow_layers=2, flow_hidden=16, flow_heads=2,
                critic_d_model=16, critic_heads=2, critic_layers=1, critic_ff=16, num_samples=4)
    return {
        "seed": 0,
        "policy": tiny,
        "data": {"offline_uri": str(demos), "gamma": 0.99},
        "env": {"task": "gymnasium", "num_envs": 4, "seed": 1, "gymnasium": {"id": ENV_ID}},
        "trainer": {"checkpoint_every": 100, "log_every": 5, "tensorboard": False, "progress": False, "torch_num_threads": 1,
                    "eval": {"episodes": 8, "num_envs": 4, "num_samples": 4}},
        "il": {"steps": 30, "batch_size": 32},
        "critic_warmup": {"steps": 10, "batch_size": 32},
        "offline_rl": {"steps": 10, "batch_size": 32},
        "online_rl": {"iterations": 2, "episodes_per_iteration": 4, "updates_per_iteration": 5, "batch_size": 32,
                      "num_samples": 4, "eval_every": 1, "eval_episodes": 4},
        "distill": {"iterations": 2, "episodes_per_iteration": 4, "updates_per_iteration": 3, "batch_size": 32,
                    "buffer_capacity": 500},
    }


def test_gymnasium_task_through_every_stage(tmp_path):
    rng = np.random.default_rng(0)

    def sloppy_expert(obs):  # half the steps random: successes and time-outs, as SERNF wants
        greedy = np.clip(obs[2:] - obs[:2], -MAX_STEP, MAX_STEP)
        return greedy if rng.random() > 0.5 else rng.uniform(-MAX_STEP, MAX_STEP, 2)

    demos = tmp_path / "demos"
    recorded = record_demonstrations(GymnasiumTask.make(ENV_ID, 4), sloppy_expert, demos, num_episodes=24, seed=3)
    assert 0 < recorded.success_rate < 1

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run_config(tmp_path, demos)))
    config = load_config(path)
    assert config.env.gymnasium == GymnasiumEnvConfig(id=ENV_ID)
    env = make_env(config, 2, 0)
    assert isinstance(env, GymnasiumTask) and env.num_envs == 2 and env.control_hz == 10.0

    out = tmp_path / "run"
    summary = Trainer(config, out, "full").run()
    results = summary["results"]
    assert set(results) == {"il", "critic_warmup", "offline_rl", "online_rl"}
    for stage, result in results.items():
        assert result["num_episodes"] == 8 and 0.0 <= result["success_rate"] <= 1.0, stage
        assert 1 <= result["mean_length"] <= 30, stage
    assert results["il"]["selection"] == "most_likely" and results["online_rl"]["selection"] == "best_of_n"
    # Online RL collected its episodes on the gymnasium envs, in the executed (clipped) form.
    online = EpisodeStore(str(out / "online_replay"), mode="r")
    assert online.num_episodes == 2 * 4
    assert np.abs(online.load_arrays().arrays["action"]).max() <= MAX_STEP + 1e-7
    metas = [online.episode_metadata(i) for i in online.episode_ids()]
    assert all(m["source"] == "online" and "seed" in m["extra"]["config"] for m in metas)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum("eval/success" in line for line in lines) >= 2  # online evaluations every iteration

    # Distillation of the RL policy (teacher kind "checkpoint") on the user's own task object,
    # with a success predicate instead of the info key.
    reached = []

    def factory(num_envs: int, seed: int) -> GymnasiumTask:
        def success(obs, reward, terminated, truncated, info):
            reached.append(terminated)
            return terminated

        return GymnasiumTask(Reach, num_envs, seed=seed, success_fn=success)

    distill = RunConfig.from_dict({**run_config(tmp_path, demos),
                                   "teacher": {"kind": "checkpoint", "checkpoint": str(out / "policy_online_rl")}})
    summary = Trainer(distill, tmp_path / "distill", "distill", env_factory=factory).run()
    assert summary["results"]["distill"]["num_episodes"] == 8
    assert reached, "the factory's task was not the one stepped"
    assert (tmp_path / "distill" / "policy_distill").is_dir()


def test_gymnasium_env_settings_are_validated():
    with pytest.raises(ValueError, match="needs env.gymnasium.id"):
        EnvConfig(task="gymnasium")
    with pytest.raises(ValueError, match="only read by task 'gymnasium'"):
        EnvConfig(task="point", gymnasium=GymnasiumEnvConfig(id="Pendulum-v1"))
    with pytest.raises(ValueError, match="kwargs"):
        EnvConfig(task="gymnasium", gymnasium=GymnasiumEnvConfig(id="Pendulum-v1"), task_overrides={"x": 1})
    with pytest.raises(ValueError, match="unknown field"):
        RunConfig.from_dict({"env": {"task": "gymnasium", "gymnasium": {"id": "Pendulum-v1", "name": "x"}}})
    with pytest.raises(ValueError, match="generate_point_demos"):
        RunConfig.from_dict({"env": {"task": "gymnasium", "gymnasium": {"id": "Pendulum-v1"}},
                             "data": {"generate_point_demos": 5}})
    with pytest.raises(ValueError, match="env_factory"):
        Trainer(RunConfig(), "/nonexistent", "il", env_factory="Pendulum-v1")
