"""The commands the README shows work as written on a fresh checkout (where they can run here):
every `sernf-*` command it names is on PATH after `source env.sh` and answers `--help`; the
simulated graph says how to make its inputs when they are missing, and starts once
`--offline-only` made them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def in_env(command: str, timeout: float = 120.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``command`` in a fresh bash that sources env.sh, as a user would."""
    return subprocess.run(["bash", "-c", f"source env.sh && {command}"], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


def readme_commands() -> list[str]:
    names = sorted(set(re.findall(r"\b(sernf-[a-z0-9]+)\b", README.read_text(encoding="utf-8"))))
    assert names, "the README names no sernf-* command"
    return names


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_is_on_path_and_answers_help(command):
    result = in_env(f"command -v {command} && {command} --help")
    assert result.returncode == 0, f"{command}: {result.stderr[-2000:]}"
    assert "usage" in result.stdout.lower(), result.stdout[-2000:]


def test_makefile_targets_named_in_readme_exist():
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, flags=re.M))
    named = set(re.findall(r"`make ([a-z][a-z0-9-]*)", README.read_text(encoding="utf-8")))
    assert named and named <= targets, f"README names make targets the Makefile lacks: {sorted(named - targets)}"


def test_sim_graph_without_inputs_says_how_to_make_them(tmp_path):
    # A checkout without results/: run_graph refuses with the command that makes the inputs.
    missing = tmp_path / "nothing"
    result = in_env("python -m sernf.run_graph sim "
                    f"--set learner.initial_checkpoint={missing}/policy --set learner.offline_store_uri={missing}/demos")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "make sim-data" in result.stderr and f"{missing}/policy" in result.stderr


@pytest.mark.slow
@pytest.mark.ros
def test_offline_only_demo_makes_what_the_sim_graph_needs(tmp_path, ros_env):
    out = tmp_path / "sim"
    made = in_env(f"python -m sernf.demo --config config/demo_tiny.yaml --out {out} --offline-only --no-progress",
                  timeout=900, env=ros_env)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    policy, demos = out / "train" / "policy_offline_rl", out / "train" / "offline_replay"
    assert (policy / "config.json").exists() and (demos / "zarr.json").exists()
    # The graph starts on them (it runs until stopped; a node that fails to start ends it).
    overrides = (f"--set learner.initial_checkpoint={policy} --set learner.offline_store_uri={demos} "
                 f"--set learner.output_dir={tmp_path / 'learner'} --set learner.replay_root={tmp_path / 'replay'} "
                 f"--set learner.watch_stores=[{tmp_path / 'replay' / 'online.zarr'}] "
                 f"--set policy.replay_uri={tmp_path / 'replay' / 'online.zarr'} "
                 f"--set policy.checkpoint_roots=[{tmp_path}]")
    proc = subprocess.Popen(["bash", "-c", f"source env.sh && exec python -m sernf.run_graph sim {overrides}"],
                            cwd=REPO, env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            # The policy node loads the learner's first (offline) checkpoint: the whole chain is up.
            if "[policy]" in line and "running checkpoint" in line:
                break
        log = "".join(lines)
        assert proc.poll() is None, f"the graph stopped:\n{log[-4000:]}"
        assert "[run_graph] started" in log, log[-4000:]
        assert any("[policy]" in ln and "running checkpoint" in ln for ln in lines), log[-4000:]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
