"""MetricsLogger: flat scalars to JSON lines + TensorBoard, summary, resume truncation."""

from __future__ import annotations

import json
import math

from sernf_learner.metrics import MetricsLogger, RateMeter


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_scalars_go_to_jsonl_tensorboard_and_summary(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=True, progress=True)
    logger.start_stage("il", total=3)
    logger.log(1, {"il/nll": 3.0, "time/updates_per_s": 10.0}, stage_step=1)
    logger.log(2, {"il/nll": 1.0, "time/updates_per_s": 20.0}, stage_step=2)
    logger.start_stage("offline_rl", total=2)
    logger.log(3, {"critic/loss": float("nan"), "actor/q": 0.5}, stage_step=1)
    summary = logger.close(extra={"results": {"il": {"success_rate": 0.5}}})

    lines = read_lines(tmp_path / "metrics.jsonl")
    assert lines[0] == {"step": 1, "stage": "il", "il/nll": 3.0, "time/updates_per_s": 10.0}
    assert lines[2]["critic/loss"] is None  # NaN is written as null: the file stays valid JSON
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["stages"]["il"]["last"]["il/nll"] == 1.0
    assert on_disk["stages"]["il"]["mean"]["il/nll"] == 2.0
    assert on_disk["stages"]["offline_rl"]["last"]["critic/loss"] is None
    assert on_disk["results"]["il"]["success_rate"] == 0.5
    assert on_disk["wall_time_s"] >= 0


def test_a_running_stage_can_be_watched_before_it_ends(tmp_path):
    """metrics.jsonl lines and a provisional summary.json are on disk while the run goes on."""
    logger = MetricsLogger(tmp_path, tensorboard=False, progress=False, summary_every_s=0.0)
    logger.start_stage("il", total=100)
    logger.log(1, {"il/nll": 3.0}, stage_step=1)
    logger.log(2, {"il/nll": 2.0}, stage_step=2)
    # Read by another process' view of the files: no flush or close has been called.
    assert [line["il/nll"] for line in read_lines(tmp_path / "metrics.jsonl")] == [3.0, 2.0]
    partial = json.loads((tmp_path / "summary.json").read_text())
    assert partial["complete"] is False and partial["stages"]["il"]["last"]["il/nll"] == 2.0
    final = logger.close()
    assert final["complete"] is True
    assert json.loads((tmp_path / "summary.json").read_text())["complete"] is True


def test_tensorboard_holds_the_namespaced_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = MetricsLogger(tmp_path, tensorboard=True, progress=False)
    logger.start_stage("il", total=2)
    for step in (1, 2):
        logger.log(step, {"il/nll": float(step)}, stage_step=step)
    logger.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("il/nll")] == [1.0, 2.0]


def test_resume_drops_lines_logged_after_the_checkpoint(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False, progress=False)
    for step in range(1, 6):
        logger.log(step, {"il/nll": float(step)})
    logger.close()
    resumed = MetricsLogger(tmp_path, tensorboard=False, progress=False, resume_from_step=3)
    resumed.log(4, {"il/nll": 40.0})
    resumed.close()
    assert [(d["step"], d["il/nll"]) for d in read_lines(tmp_path / "metrics.jsonl")] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    fresh = MetricsLogger(tmp_path, tensorboard=False, progress=False)  # a new run starts a new file
    fresh.close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_rate_meter_reports_updates_per_second():
    meter = RateMeter(window=5)
    assert meter.tick() == 0.0
    rates = [meter.tick() for _ in range(10)]
    assert all(r > 0 and math.isfinite(r) for r in rates)
