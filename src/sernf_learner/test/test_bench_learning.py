"""bench/learning.py: run specs per method, statistics, and a tiny end-to-end benchmark
(2 methods x 1 seed of config/point_full.yaml with a handful of updates and 10 eval episodes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sernf_learner.configs import load_config

REPO = Path(__file__).resolve().parents[3]
BENCH = REPO / "bench" / "learning.py"
CONFIG = REPO / "config" / "point_full.yaml"
TINY = {  # point_full.yaml shrunk to seconds
    "il.steps": 4, "critic_warmup.steps": 3, "offline_rl.steps": 2, "online_rl.iterations": 1,
    "online_rl.episodes_per_iteration": 4, "online_rl.updates_per_iteration": 2, "data.generate_point_demos": 8,
    "trainer.eval.episodes": 10, "trainer.eval.num_envs": 10, "env.num_envs": 4,
}


@pytest.fixture(scope="module")
def bench(bench_script):
    return bench_script("learning")


def test_run_specs_apply_each_methods_changes(bench):
    base = load_config(CONFIG)
    specs = {name: bench.run_spec(base, name, seed=2, threads=1, vary_demo_seed=False) for name in bench.METHODS}
    assert set(specs) == {"nf_il", "nf_il_more_demos", "sernf_offline", "sernf_full",
                          "ablation_per_step_critic", "ablation_gaussian_actor", "fm_il", "act_il"}
    actors = {"ablation_gaussian_actor": "gaussian", "fm_il": "flow_matching", "act_il": "act"}
    for name, spec in specs.items():
        cfg = spec["config"]
        assert cfg["seed"] == 2 and cfg["trainer"]["torch_num_threads"] == 1 and not cfg["trainer"]["progress"]
        assert spec["final_stage"] in cfg["trainer"]["eval"]["stages"]
        assert cfg["data"]["demo_seed"] == base.data.demo_seed  # one dataset for every method by default
        assert cfg["policy"]["critic_horizon"] == (1 if name == "ablation_per_step_critic" else None)
        assert cfg["policy"]["actor"] == actors.get(name, "flow")
        budget = base.online_rl.iterations * base.online_rl.episodes_per_iteration
        assert spec["extra_demos"] == (budget if name == "nf_il_more_demos" else 0)
    assert [specs[n]["final_stage"] for n in ("nf_il", "sernf_offline", "sernf_full")] == ["il", "offline_rl", "online_rl"]
    assert specs["fm_il"]["schedule"] == specs["act_il"]["schedule"] == "il"  # imitation-only baselines
    assert specs["nf_il_more_demos"]["extra_demo_seed"] != base.data.demo_seed
    assert bench.run_spec(base, "nf_il", 2, 1, vary_demo_seed=True)["config"]["data"]["demo_seed"] == 2


def test_comparison_plan_pairs_the_methods_the_protocol_names(bench):
    variants = {"nf_il": {"il_one_sample": {}}, "fm_il": {}, "nf_il_more_demos": {"il_one_sample": {}},
                "sernf_offline": {"rl_best_of_n": {}, "il_most_likely": {}}, "ablation_gaussian_actor": {},
                "sernf_full": {"rl_best_of_n": {}, "il_most_likely": {}, "rl_actor_most_likely": {},
                               "il_critic_best_of_n": {}}}
    pairs = {(bench._side_name(a), bench._side_name(b))
             for a, b in bench.comparison_plan({name: {"variants": v} for name, v in variants.items()})}
    assert {(name, "nf_il") for name in variants if name != "nf_il"} <= pairs
    assert ("fm_il", "nf_il:il_one_sample") in pairs
    # SERNF full against offline, the ablation, and the same episode budget spent on demonstrations.
    assert {("sernf_full", "sernf_offline"), ("sernf_full", "ablation_gaussian_actor"),
            ("sernf_full", "nf_il_more_demos")} <= pairs
    assert {("sernf_full:rl_best_of_n", "sernf_full:il_most_likely"),
            ("sernf_full:rl_actor_most_likely", "sernf_full:il_most_likely"),
            ("sernf_full:il_critic_best_of_n", "sernf_full:il_most_likely"),
            ("sernf_offline:rl_best_of_n", "sernf_offline:il_most_likely")} <= pairs
    assert ("sernf_offline", "nf_il_more_demos") not in pairs and ("fm_il", "sernf_full") not in pairs


def test_aggregate_reports_mean_sample_std_and_missing_runs(bench, tmp_path):
    for seed, success in ((0, 0.5), (1, 0.6), (2, 0.7)):
        d = bench.run_dir(tmp_path, "nf_il", seed)
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({
            "method": "nf_il", "seed": seed, "success": success, "subtask_success": {"reach": success},
            "n_eval_episodes": 200, "selection": "most_likely", "wall_s": 10.0 * (seed + 1),
            "offline_episodes": 200, "offline_successful_episodes": 110,
        }))
    methods, missing = bench.aggregate(tmp_path, ["nf_il", "sernf_full"], [0, 1, 2, 3])
    m = methods["nf_il"]
    assert m["success"] == [0.5, 0.6, 0.7] and m["seeds"] == [0, 1, 2]
    assert m["mean"] == pytest.approx(0.6) and m["std"] == pytest.approx(0.1)  # ddof = 1
    assert m["subtask_mean"] == {"reach": pytest.approx(0.6)} and m["wall_s_mean"] == pytest.approx(20.0)
    assert methods["sernf_full"]["mean"] is None
    assert missing == ["nf_il/seed3"] + [f"sernf_full/seed{s}" for s in range(4)]
    table = bench.markdown_table(methods)
    assert "| nf_il | il | 0.600 ± 0.100 | 0.500, 0.600, 0.700 |" in table
    assert "| sernf_full |" in table and "(no finished run)" in table
    bench.plot(methods, tmp_path / "p.png", "test")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _run(out: Path, methods: list[str], extra: dict | None = None) -> subprocess.CompletedProcess:
    sets = [a for k, v in {**TINY, **(extra or {})}.items() for a in ("--set", f"{k}={v}")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(BENCH), "--config", str(CONFIG), "--seeds", "0", "--methods", *methods,
         "--out", str(out), "--jobs", "2", "--threads", "1", *sets],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )


def test_benchmark_end_to_end_with_tiny_budgets(tmp_path):
    out = tmp_path / "bench"
    methods = ["nf_il_more_demos", "sernf_offline"]
    proc = _run(out, methods)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in methods:
        assert f"start {name} seed=0" in proc.stdout and f"done  {name} seed=0" in proc.stdout
    report = json.loads((out / "learning.json").read_text())
    assert {"schema", "command", "config", "seeds", "results", "missing", "jobs", "threads"} <= set(report)
    assert report["missing"] == [] and report["seeds"] == [0] and "--jobs 2" in report["command"]
    assert report["config"]["il"]["steps"] == TINY["il.steps"]
    for name in methods:
        r = report["results"][name]
        assert len(r["success"]) == 1 and 0.0 <= r["mean"] <= 1.0 and r["std"] == 0.0
        assert r["n_eval_episodes"] == [10] and set(r["subtask_success"]) == {"reach"}
        assert r["wall_s"][0] > 0 and r["per_seed"][0]["seed"] == 0
    more, offline = report["results"]["nf_il_more_demos"], report["results"]["sernf_offline"]
    assert more["selection"] == ["most_likely"] and offline["selection"] == ["best_of_n"]
    assert offline["per_seed"][0]["stage_success"].keys() == {"il", "offline_rl"}
    # IL on more demos: the base 8 episodes plus online RL's budget (1 iteration x 4 episodes).
    assert more["extra_demos"] == 4 and more["offline_episodes"] == [12] and offline["offline_episodes"] == [8]
    assert (out / "learning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| method | stages | success (mean ± std) |" in proc.stdout
    assert "| nf_il_more_demos | il |" in proc.stdout

    # Finished runs are skipped: nothing starts, the results stay.
    stamp = (out / "runs" / "sernf_offline" / "seed0" / "result.json").stat().st_mtime_ns
    again = _run(out, methods)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 already done, 0 to run" in again.stdout and "start " not in again.stdout
    assert (out / "runs" / "sernf_offline" / "seed0" / "result.json").stat().st_mtime_ns == stamp
    # Another config in the same directory is refused rather than mixed in.
    changed = _run(out, methods, {"il.steps": 5})
    assert changed.returncode == 2 and "another config" in changed.stderr
    # A run stored before a config field existed (here: trainer.eval.torch_threads, default 0)
    # is the same run: the field's default is what it ran with.
    spec_path = out / "runs" / "sernf_offline" / "seed0" / "run.json"
    spec = json.loads(spec_path.read_text())
    del spec["config"]["trainer"]["eval"]["torch_threads"]
    spec_path.write_text(json.dumps(spec))
    older = _run(out, methods)
    assert older.returncode == 0 and "2 already done, 0 to run" in older.stdout, older.stdout + older.stderr
    # ... but not when the stored value differs from what the command asks for.
    spec["config"]["trainer"]["eval"]["torch_threads"] = 2
    spec_path.write_text(json.dumps(spec))
    assert _run(out, methods).returncode == 2
    del spec["config"]["trainer"]["eval"]["torch_threads"]
    spec_path.write_text(json.dumps(spec))

    # A run finished before an evaluation was planned (here: NF IL by one sample) gets it on the
    # next call, without training again, and keeps its training times.
    run = out / "runs" / "nf_il_more_demos" / "seed0"
    assert more["variants"]["il_one_sample"]["selection"] == "single"
    for path, key in ((run / "run.json", "variants"), (run / "result.json", "variants")):
        stored = json.loads(path.read_text())
        del stored[key]["il_one_sample"]
        path.write_text(json.dumps(stored))
    (run / "eval_variants" / "il_one_sample.json").unlink()
    before = json.loads((run / "result.json").read_text())
    exported = {p: p.stat().st_mtime_ns for p in (run / "policy_il").rglob("*") if p.is_file()}
    grown = _run(out, methods)
    assert grown.returncode == 0, grown.stdout + grown.stderr
    assert "1 already done, 1 to run" in grown.stdout
    after = json.loads((run / "result.json").read_text())
    assert after["variants"]["il_one_sample"]["episode_success"] is not None
    assert after["stage_time_s"] == before["stage_time_s"] and after["wall_s"] > before["wall_s"]
    assert after["episode_success"] == before["episode_success"]
    assert {p: p.stat().st_mtime_ns for p in exported} == exported  # the imitation stage did not run again
    assert json.loads((run / "run.json").read_text())["variants"]["il_one_sample"] == ["il", "single"]
    # A stored plan that evaluates differently is another run.
    stored = json.loads((run / "run.json").read_text())
    stored["variants"]["il_one_sample"] = ["il", "most_likely"]
    (run / "run.json").write_text(json.dumps(stored))
    assert _run(out, methods).returncode == 2


def test_benchmark_runs_the_imitation_baselines(tmp_path):
    """fm_il and act_il: IL only, one sample per decision, no critic, exported policies that load."""
    from sernf_policy.policy import Policy

    out = tmp_path / "bench"
    methods = ["fm_il", "act_il", "nf_il"]
    proc = _run(out, methods, {"il.steps": 10, "trainer.log_every": 5})  # two logged IL updates
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "learning.json").read_text())
    assert report["missing"] == []
    # The NF policy is also evaluated by one sample, and paired with flow matching on that rule.
    one_sample = report["results"]["nf_il"]["variants"]["il_one_sample"]
    assert one_sample["selection"] == "single" and len(one_sample["success"]) == 1
    pairs = {(c["a"], c["b"]): c for c in report["comparisons"]}
    assert pairs[("fm_il", "nf_il:il_one_sample")]["mcnemar"]["pairs"] == 10
    assert ("fm_il", "nf_il") in pairs and ("act_il", "nf_il:il_one_sample") not in pairs
    assert "Imitation-only flows acting by one sample" in proc.stdout and "| nf_il | " in proc.stdout
    for name, actor in (("fm_il", "flow_matching"), ("act_il", "act")):
        r = report["results"][name]
        assert r["schedule"] == ["il"] and r["selection"] == ["single"] and r["n_eval_episodes"] == [10]
        assert r["per_seed"][0]["stage_success"].keys() == {"il"} and 0.0 <= r["mean"] <= 1.0
        directory = out / "runs" / name / "seed0"
        policy = Policy.load(directory / "policy_il")
        assert policy.config.actor == actor and policy.config.critic is None and policy.config.selection == "single"
        logged = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
        keys = set().union(*(entry.keys() for entry in logged))
        assert ("il/act_l1" in keys and "il/act_kl" in keys) if actor == "act" else "il/fm_mse" in keys
        assert "il/nll" not in keys  # no likelihood to report
    assert Policy.load(out / "runs" / "act_il" / "seed0" / "policy_il").config.act.chunk_len == 20
