"""Training metrics: flat namespaced scalars to TensorBoard and a JSON-lines file.

Every stage returns ``dict[str, float]`` from ``update(batch)`` with flat, namespaced keys
(``il/nll``, ``critic/loss``, ``actor/q``, ``online/success``, ``time/updates_per_s``, ...).
:class:`MetricsLogger` writes them, unchanged, to

- ``<out>/metrics.jsonl``: one JSON object per logged step, ``{"step": ..., "stage": ..., key: value}``;
- ``<out>/tb/``: TensorBoard event files (``torch.utils.tensorboard.SummaryWriter``), one scalar
  per key; the global step runs on across stages so curves of successive stages line up;
- ``<out>/summary.json``: the last and the mean value of every key per stage, plus wall time,
  written atomically every ``summary_every_s`` while the run goes on (``"complete": false``) and
  at :meth:`close` (``"complete": true``).

Lines reach ``metrics.jsonl`` as they are logged (line-buffered), so a run can be watched with
``tail -f`` or read by a plotting script while it trains.

A tqdm bar shows progress per stage with the update rate and a few chosen scalars.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from pathlib import Path

from tqdm.auto import tqdm

# Keys shown in the progress bar when present (the rest only go to the files).
_BAR_KEYS = ("il/nll", "critic/loss", "actor/q", "actor/bc_nll", "online/success", "distill/nll")


def _finite(value: float) -> float | None:
    """JSON has no NaN/inf; write them as null so the file stays parseable by any reader."""
    return value if math.isfinite(value) else None


class MetricsLogger:
    """Write flat scalar metrics to TensorBoard + JSON lines and show a tqdm bar.

    Args:
        out_dir: run directory; created if missing.
        tensorboard: write TensorBoard event files (off in small tests to save time).
        progress: show a tqdm bar.
        resume_from_step: continue an interrupted run: keep ``metrics.jsonl`` lines up to this
            global step (drop those logged after the checkpoint, which will be redone) and
            purge later TensorBoard events, so the files read like one uninterrupted run.
        summary_every_s: rewrite ``summary.json`` at most this often while logging.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        tensorboard: bool = True,
        progress: bool = True,
        resume_from_step: int | None = None,
        summary_every_s: float = 10.0,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.out_dir / "metrics.jsonl"
        if resume_from_step is not None and self.jsonl_path.exists():
            self._truncate_after(resume_from_step)
        else:
            self.jsonl_path.write_text("")
        # Line-buffered: every record is in the file as soon as it is logged.
        self._jsonl = self.jsonl_path.open("a", encoding="utf-8", buffering=1)
        self.summary_every_s = float(summary_every_s)
        self._summary_t = time.perf_counter()
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # heavy import; only when used

            self._writer = SummaryWriter(log_dir=str(self.out_dir / "tb"), purge_step=resume_from_step)
        self._progress = progress
        self._bar: tqdm | None = None
        self._stage = ""
        self._stage_t0 = time.perf_counter()
        self._t0 = time.perf_counter()
        self._last: dict[str, dict[str, float]] = defaultdict(dict)
        self._sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def _truncate_after(self, step: int) -> None:
        kept = []
        for line in self.jsonl_path.read_text(encoding="utf-8").splitlines():
            if line.strip() and json.loads(line).get("step", 0) <= step:
                kept.append(line)
        self.jsonl_path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")

    def start_stage(self, stage: str, total: int, initial: int = 0, unit: str = "upd") -> None:
        """Open a progress bar for ``stage`` (``total`` units, ``initial`` already done)."""
        self.close_bar()
        self._stage = stage
        self._stage_t0 = time.perf_counter()
        if self._progress:
            self._bar = tqdm(total=total, initial=initial, desc=stage, unit=unit, dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, float], stage_step: int | None = None) -> None:
        """Record ``metrics`` at global ``step``; move the bar to ``stage_step`` units done."""
        clean = {k: float(v) for k, v in metrics.items()}
        record = {"step": int(step), "stage": self._stage}
        record.update({k: _finite(v) for k, v in clean.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in clean.items():
                self._writer.add_scalar(key, value, global_step=step)
        for key, value in clean.items():
            self._last[self._stage][key] = value
            if math.isfinite(value):
                self._sums[self._stage][key] += value
                self._counts[self._stage][key] += 1
        if self._bar is not None:
            if stage_step is not None:
                self._bar.update(stage_step - self._bar.n)
            shown = {k.split("/", 1)[-1]: f"{clean[k]:.3g}" for k in _BAR_KEYS if k in clean}
            if shown:
                self._bar.set_postfix(shown, refresh=False)
        if time.perf_counter() - self._summary_t >= self.summary_every_s:
            self._write_summary(self.summary(), complete=False)

    def flush(self) -> None:
        """Push everything logged so far to disk, including a provisional ``summary.json``."""
        self._jsonl.flush()
        self._write_summary(self.summary(), complete=False)
        if self._writer is not None:
            self._writer.flush()

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def summary(self) -> dict:
        """Last and mean value of every metric, per stage, plus total wall time."""
        stages = {}
        for stage, last in self._last.items():
            means = {
                k: self._sums[stage][k] / self._counts[stage][k]
                for k in last
                if self._counts[stage][k] > 0
            }
            stages[stage] = {
                "last": {k: _finite(v) for k, v in last.items()},
                "mean": means,
            }
        return {"wall_time_s": time.perf_counter() - self._t0, "stages": stages}

    def close(self, extra: dict | None = None) -> dict:
        """Close files and write ``summary.json`` (atomically); returns the summary."""
        self.close_bar()
        summary = self.summary()
        if extra:
            summary.update(extra)
        summary["complete"] = True
        self._write_summary(summary, complete=True)
        self._jsonl.close()
        if self._writer is not None:
            self._writer.close()
        return summary


    def _write_summary(self, summary: dict, complete: bool) -> None:
        summary = dict(summary, complete=complete)
        tmp = self.out_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.out_dir / "summary.json")
        self._summary_t = time.perf_counter()


class RateMeter:
    """Updates per second over the last ``window`` updates (``time/updates_per_s``)."""

    def __init__(self, window: int = 50) -> None:
        self.window = window
        self._times: list[float] = []

    def tick(self) -> float:
        now = time.perf_counter()
        self._times.append(now)
        if len(self._times) > self.window + 1:
            self._times.pop(0)
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-9)
