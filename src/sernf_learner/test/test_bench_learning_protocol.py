"""bench/learning.py's protocol (issue #14): the hand task's config, per-episode outcomes, the RL
methods' evaluation variants, paired comparisons, and the `--quick` form end to end (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
BENCH = REPO / "bench" / "learning.py"
HAND = REPO / "config" / "bench_hand.yaml"
POINT = REPO / "config" / "point_full.yaml"


@pytest.fixture(scope="module")
def bench(bench_script):
    return bench_script("learning")


def test_hand_config_quick_budgets_and_overrides(bench):
    base, demos = bench.load_bench_config(HAND, [])
    assert base.env.task == "hand_pick_place" and base.trainer.eval.episodes == 200
    assert demos == bench.HandDemos(num=120, expert_quality=None, box_prob=0.5, num_envs=20)
    quick, small = bench.load_bench_config(HAND, [("bench.hand_demos.box_prob", 1.0), ("il.steps", 7)], quick=True)
    assert small.num == 10 and small.box_prob == 1.0  # --set applies after the quick budgets
    assert quick.il.steps == 7 and quick.trainer.eval.episodes == 20 and quick.online_rl.iterations == 1
    point, none = bench.load_bench_config(POINT, [], quick=True)
    assert none is None and point.trainer.eval.episodes == 20 and point.data.generate_point_demos == 30
    with pytest.raises(bench.BenchError, match="box_prob"):
        bench.load_bench_config(HAND, [("bench.hand_demos.box_prob", 2)])
    with pytest.raises(bench.BenchError, match="only hand_demos"):
        bench.load_bench_config(HAND, [("bench.other", 1)])


def test_run_specs_plan_variants_for_rl_methods_and_imitation_flows(bench):
    base, demos = bench.load_bench_config(HAND, [])
    specs = {name: bench.run_spec(base, name, 3, 1, False, demos) for name in bench.METHODS}
    rl = {"sernf_offline", "sernf_full", "ablation_per_step_critic", "ablation_gaussian_actor"}
    assert {n for n, s in specs.items() if set(s["variants"]) == set(bench.VARIANTS)} == rl
    # Imitation-only flows also act by one sample, as the likelihood-free baselines do.
    assert {n for n, s in specs.items() if s["variants"] == {"il_one_sample": ("il", "single")}} == {
        "nf_il", "nf_il_more_demos"}
    assert specs["fm_il"]["variants"] == {} and specs["act_il"]["variants"] == {}
    assert specs["sernf_full"]["variants"] == {
        "il_most_likely": ("il", "most_likely"), "il_critic_best_of_n": ("critic_warmup", "best_of_n"),
        "rl_actor_most_likely": ("online_rl", "most_likely"), "rl_best_of_n": ("online_rl", "best_of_n")}
    assert specs["sernf_offline"]["variants"]["rl_best_of_n"] == ("offline_rl", "best_of_n")
    assert all(s["hand_demos"]["num"] == 120 for s in specs.values())
    assert specs["nf_il_more_demos"]["extra_demos"] == 60  # online RL's 6 x 10 rollouts
    assert specs["sernf_full"]["config"]["trainer"]["eval"]["stages"] == ["il", "online_rl"]
    with pytest.raises(bench.BenchError, match="records its demos"):
        bench.run_spec(base, "nf_il", 0, 1, False, None)
    point, _ = bench.load_bench_config(POINT, [])
    with pytest.raises(bench.BenchError, match="no bench.hand_demos"):
        bench.run_spec(point, "nf_il", 0, 1, False, demos)


def test_variants_reuse_trainer_evaluations_and_resume(bench, tmp_path):
    base, demos = bench.load_bench_config(HAND, [])
    spec = bench.run_spec(base, "sernf_offline", 0, 1, False, demos)
    spec = json.loads(json.dumps(spec))  # as the worker reads it from run.json
    trained = {
        "il": {"selection": "most_likely", "success_rate": 0.5, "subtask_success_rates": {}, "mean_return": 1.0,
               "num_episodes": 2, "episode_success": [1, 0]},
        "offline_rl": {"selection": "best_of_n", "success_rate": 1.0, "subtask_success_rates": {},
                       "mean_return": 2.0, "num_episodes": 2, "episode_success": [1, 1]},
    }
    folder = tmp_path / "eval_variants"
    folder.mkdir()
    # Two variants need their exported policy; pretend they were evaluated before a kill.
    for name in ("il_critic_best_of_n", "rl_actor_most_likely"):
        stage, selection = spec["variants"][name]
        (folder / f"{name}.json").write_text(json.dumps({"stage": stage, "selection": selection, "source": "earlier",
                                                         "success_rate": 0.0, "episode_success": [0, 0]}))
    config = bench.RunConfig.from_dict(spec["config"])
    out = bench.evaluate_variants(tmp_path, spec, config, trained)
    assert out["il_most_likely"]["episode_success"] == [1, 0] and out["il_most_likely"]["source"].startswith("trainer")
    assert out["rl_best_of_n"]["success_rate"] == 1.0 and out["rl_best_of_n"]["stage"] == "offline_rl"
    assert out["rl_actor_most_likely"]["source"] == "earlier"  # not redone
    assert json.loads((folder / "rl_best_of_n.json").read_text())["episode_success"] == [1, 1]
    # A variant not evaluated yet and not reusable loads its exported policy (absent here).
    (folder / "rl_actor_most_likely.json").unlink()
    with pytest.raises(Exception, match="policy_offline_rl"):
        bench.evaluate_variants(tmp_path, spec, config, trained)


def _result(seed: int, success: list[int], variants: dict | None = None, setting: str = "fixed") -> dict:
    return {"seed": seed, "success": sum(success) / len(success), "episode_success": success,
            "eval_setting": setting, "subtask_success": {}, "n_eval_episodes": len(success),
            "selection": "most_likely", "wall_s": 1.0, "offline_episodes": 8, "offline_successful_episodes": 4,
            "variants": {k: {"success_rate": sum(v) / len(v), "episode_success": v, "stage": "il"}
                         for k, v in (variants or {}).items()}}


def test_paired_comparisons_from_results(bench, tmp_path):
    runs = {
        "nf_il": {0: _result(0, [1, 0, 0, 0]), 1: _result(1, [0, 0, 1, 0])},
        "sernf_full": {0: _result(0, [1, 1, 1, 0], {"il_most_likely": [1, 0, 0, 0], "rl_best_of_n": [1, 1, 1, 0]}),
                       1: _result(1, [1, 1, 1, 1], {"il_most_likely": [0, 0, 1, 0], "rl_best_of_n": [1, 1, 1, 1]})},
        "sernf_offline": {0: _result(0, [1, 0, 0, 0], setting="other episodes")},
        "ablation_per_step_critic": {0: _result(0, [0, 0, 0, 0]), 1: _result(1, [0, 1, 0, 0])},
    }
    for name, seeds in runs.items():
        for seed, result in seeds.items():
            d = bench.run_dir(tmp_path, name, seed)
            d.mkdir(parents=True)
            (d / "result.json").write_text(json.dumps({"method": name, **result}))
    methods, missing = bench.aggregate(tmp_path, list(runs), [0, 1])
    assert missing == ["sernf_offline/seed1"]
    full = methods["sernf_full"]
    assert full["interval"]["mean"] == pytest.approx(0.875) and full["interval"]["n"] == 2
    assert full["variants"]["il_most_likely"]["success"] == [0.25, 0.25]
    rows = {(r["a"], r["b"]): r for r in bench.paired_comparisons(methods)}
    vs_il = rows[("sernf_full", "nf_il")]
    # seed 0: +0.5, seed 1: +0.75; A-only pairs 2 + 3, B-only 0 -> McNemar p = 2 / 2^5
    assert [s["difference"] for s in vs_il["per_seed"]] == [0.5, 0.75]
    assert vs_il["difference"]["mean"] == pytest.approx(0.625)
    assert vs_il["mcnemar"] == {"pairs": 8, "a_only": 5, "b_only": 0, "p_value": pytest.approx(2 / 32)}
    own_il = rows[("sernf_full:rl_best_of_n", "sernf_full:il_most_likely")]
    assert own_il["mcnemar"]["a_only"] == 5 and own_il["seeds"] == [0, 1]
    assert "different episodes" in rows[("sernf_offline", "nf_il")]["error"]
    assert "different episodes" in rows[("sernf_full", "sernf_offline")]["error"]
    # the ablation ordering is reported directly: full vs each ablation, seed by seed
    vs_ablation = rows[("sernf_full", "ablation_per_step_critic")]
    assert [s["difference"] for s in vs_ablation["per_seed"]] == [0.75, 0.75]
    assert vs_ablation["mcnemar"]["a_only"] == 6 and vs_ablation["mcnemar"]["b_only"] == 0
    assert ("ablation_per_step_critic", "sernf_full") not in rows
    table = bench.comparisons_table(bench.paired_comparisons(methods))
    assert "| sernf_full vs nf_il | 2 | +0.625 |" in table and "| 5 / 0 | 0.062 |" in table
    assert "| sernf_full | 0.250 [" in bench.variants_table(methods)
    assert "| nf_il | il | 0.250 ± 0.000 | 0.250, 0.250 | [0.250, 0.250] |" in bench.markdown_table(methods)
    bench.plot(methods, tmp_path / "p.png", "test")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _quick(config: Path, out: Path, methods: list[str], *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--config", str(config), "--methods", *methods, "--out", str(out),
         *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
    )


@pytest.mark.slow
def test_quick_benchmark_pairs_every_run_on_the_same_episodes(tmp_path):
    """`--quick` on the point task (IL vs full) and the hand task (offline): per-episode
    outcomes everywhere, the four variants, paired comparisons, resumable variants."""
    out = tmp_path / "point"
    proc = _quick(POINT, out, ["nf_il", "sernf_full"], "--seeds", "0")  # one seed: the suite's time budget
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "learning.json").read_text())
    assert report["quick"] and report["seeds"] == [0] and report["missing"] == []
    il, full = report["results"]["nf_il"], report["results"]["sernf_full"]
    runs = il["per_seed"] + full["per_seed"]
    assert all(len(r["episode_success"]) == 20 for r in runs)
    assert len({json.dumps(r["eval_setting"], sort_keys=True) for r in runs}) == 1  # the same episodes
    for r in full["per_seed"]:
        v = r["variants"]
        assert set(v) == {"il_most_likely", "il_critic_best_of_n", "rl_actor_most_likely", "rl_best_of_n"}
        assert v["il_most_likely"]["episode_success"] == r["stage_episode_success"]["il"]  # the trainer's own
        assert v["rl_best_of_n"]["episode_success"] == r["episode_success"]
        assert v["rl_actor_most_likely"]["source"] == "policy_online_rl evaluated after training"
        assert all(len(x["episode_success"]) == 20 for x in v.values())
    row = next(c for c in report["comparisons"] if (c["a"], c["b"]) == ("sernf_full", "nf_il"))
    pairs = [(a, b) for ra, rb in zip(full["per_seed"], il["per_seed"], strict=True)
             for a, b in zip(ra["episode_success"], rb["episode_success"], strict=True)]
    assert row["mcnemar"]["pairs"] == 20
    assert row["mcnemar"]["a_only"] == sum(a and not b for a, b in pairs)
    assert row["difference"]["mean"] == pytest.approx(full["mean"] - il["mean"])
    assert "Paired comparisons" in proc.stdout and "| sernf_full vs nf_il | 1 |" in proc.stdout

    # A killed worker: its result and one variant gone -> only that variant is evaluated again.
    run = out / "runs" / "sernf_full" / "seed0"
    kept = run / "eval_variants" / "il_critic_best_of_n.json"
    stamp = kept.stat().st_mtime_ns
    (run / "result.json").unlink()
    (run / "eval_variants" / "rl_actor_most_likely.json").unlink()
    again = _quick(POINT, out, ["nf_il", "sernf_full"], "--seeds", "0")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 already done, 1 to run" in again.stdout
    assert kept.stat().st_mtime_ns == stamp and (run / "eval_variants" / "rl_actor_most_likely.json").exists()
    assert json.loads((run / "result.json").read_text())["variants"].keys() == full["per_seed"][0]["variants"].keys()

    # The selection guards on the same runs: every setting on the same fixed episodes, compared
    # with the run's own IL policy; cached per setting.
    guards = subprocess.run(
        [sys.executable, str(REPO / "bench" / "selection_guards.py"), "--out", str(out), "--methods", "sernf_full",
         "--stages", "final", "--top-k", "4", "--max-disagreement", "0.1"],
        cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert guards.returncode == 0, guards.stdout + guards.stderr
    rows = {r["setting"]: r for r in json.loads((out / "selection_guards.json").read_text())["rows"]}
    assert set(rows) == {"best_of_n", "most_likely", "top_k=4", "max_disagreement=0.1"}
    for r in rows.values():
        assert r["stage"] == "online_rl" and r["seeds"] == [0] and r["vs_il"]["mcnemar"]["pairs"] == 20
    assert rows["best_of_n"]["vs_best_of_n"]["mcnemar"]["a_only"] == 0  # itself
    assert len(list((run / "eval_guards").glob("online_rl__*.json"))) == 4
    assert "| sernf_full | online_rl | top_k=4 |" in guards.stdout

    hand = tmp_path / "hand"
    proc = _quick(HAND, hand, ["sernf_offline"], "--seeds", "0")  # one seed: the suite's time budget
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((hand / "learning.json").read_text())
    assert report["hand_demos"]["box_prob"] == 0.5 and report["hand_demos"]["num"] == 10
    offline = report["results"]["sernf_offline"]
    assert offline["offline_episodes"] == [10] and set(offline["variants"]) == set(
        ["il_most_likely", "il_critic_best_of_n", "rl_actor_most_likely", "rl_best_of_n"])
    assert all(len(r["episode_success"]) == 20 for r in offline["per_seed"])
