"""The scissors graph (sernf.graph.scissors_graph): its nodes in every mode, its parameter files,
launch file and run_graph arguments, and the lifecycle manager that brings it up (over DDS)."""

from __future__ import annotations

import importlib.util
import signal
import time
from pathlib import Path

import pytest
import yaml
from sernf.graph import (
    GRAPH_ARGUMENTS,
    GRAPHS,
    SCISSORS_ARGUMENTS,
    SOURCE_CONFIG_DIR,
    build_graph,
    missing_inputs,
    node_parameters,
    param_literal,
    scissors_graph,
)
from sernf.run_graph import main as run_graph_main
from sernf.run_graph import parse_launch_arguments, parse_overrides

ROOT = Path(__file__).resolve().parents[1]
ROBOT_DRIVERS = {"orca_hand_driver", "franka_bridge", "robot_mode_relay", "oak_front", "oak_under", "oak_left"}


def names(specs) -> set[str]:
    return {spec.name for spec in specs}


@pytest.mark.parametrize("sim", [False, True])
@pytest.mark.parametrize("learner", ["local", "remote", "none"])
@pytest.mark.parametrize("mode", ["rollout", "teleop"])
def test_nodes_per_mode_learner_and_sim(mode, learner, sim):
    specs = scissors_graph(mode=mode, learner=learner, sim=sim)
    expected = {"orca_hand_driver", "franka_bridge", "recorder", "lifecycle_manager"}
    expected |= {"sim_world"} if sim else {"robot_mode_relay", "oak_front", "oak_under", "oak_left"}
    expected |= {"policy"} if mode == "rollout" else {"teleop_rokoko"}
    # The learner learns from rollouts; teleoperation records bags for the offline stages.
    expected |= {"learner"} if (learner == "local" and mode == "rollout") else set()
    assert names(specs) == expected
    assert len(specs) == len(expected)  # each node once
    assert specs[-1].name == "lifecycle_manager"  # after the nodes it manages
    if sim:
        assert specs[0].name == "sim_world"  # the world first: its bus and topics are what the drivers open
    lifecycle = [s.name for s in specs if s.lifecycle]
    assert specs[-1].extra_parameters["node_names"] == lifecycle
    assert set(lifecycle) == ({"orca_hand_driver", "franka_bridge"} if sim
                              else {"orca_hand_driver", "franka_bridge", "oak_front", "oak_under", "oak_left"})


def test_parameter_files_in_order_with_the_users_last():
    robot = scissors_graph()
    assert {s.parameters_files for s in robot} == {("robot/scissors.yaml",)}
    sim = scissors_graph(sim=True, params_file="/home/me/site.yaml")
    assert {s.parameters_files for s in sim} == {("robot/scissors.yaml", "robot/scissors_sim.yaml", "/home/me/site.yaml")}
    args = sim[1].ros_args(Path("/cfg"))
    files = [args[i + 1] for i, a in enumerate(args) if a == "--params-file"]
    assert files == ["/cfg/robot/scissors.yaml", "/cfg/robot/scissors_sim.yaml", "/home/me/site.yaml"]


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="mode must be one of"):
        scissors_graph(mode="auto")
    with pytest.raises(ValueError, match="learner must be one of"):
        scissors_graph(learner="cloud")
    with pytest.raises(ValueError, match="checkpoint is the policy's"):
        scissors_graph(mode="teleop", checkpoint="/x")
    with pytest.raises(ValueError, match="params_file must be a .yaml"):
        scissors_graph(params_file="site.json")
    with pytest.raises(ValueError, match=r"not in the scissors graph: \['policy'\]"):
        scissors_graph(mode="teleop", extra_parameters={"policy": {"num_samples": 4}})
    with pytest.raises(ValueError, match="sim must be true or false"):
        build_graph("scissors", {"sim": "maybe"})
    with pytest.raises(ValueError, match=r"no argument\(s\) \['speed'\]"):
        build_graph("scissors", {"speed": "2"})
    with pytest.raises(ValueError, match=r"no argument\(s\) \['mode'\]"):
        build_graph("sim", {"mode": "teleop"})


def test_checkpoint_and_overrides_reach_the_policy():
    specs = build_graph("scissors", {"checkpoint": "/data/ckpt/step_100", "learner": "none"},
                        {"policy": {"num_samples": 16}})
    policy = next(s for s in specs if s.name == "policy")
    assert policy.extra_parameters == {"num_samples": 16, "checkpoint": "/data/ckpt/step_100"}
    assert "-p" in policy.ros_args(SOURCE_CONFIG_DIR) and "checkpoint:=/data/ckpt/step_100" in policy.ros_args(
        SOURCE_CONFIG_DIR)
    assert node_parameters(policy, SOURCE_CONFIG_DIR)["checkpoint"] == "/data/ckpt/step_100"


def test_every_graph_has_its_argument_table():
    assert set(GRAPH_ARGUMENTS) == set(GRAPHS)
    assert set(SCISSORS_ARGUMENTS) == {"mode", "learner", "sim", "checkpoint", "params_file"}


# -- the parameter files, as each node will see them ----------------------------------------------

def effective(sim: bool, mode: str = "rollout") -> dict[str, dict]:
    return {s.name: node_parameters(s, SOURCE_CONFIG_DIR) for s in scissors_graph(mode=mode, sim=sim)}


def test_robot_parameters_fit_together():
    params = effective(sim=False)
    cameras = [params[f"oak_{n}"]["camera_name"] for n in ("front", "under", "left")]
    assert cameras == ["front", "under", "left"]
    assert all(params[f"oak_{n}"]["width"] == params[f"oak_{n}"]["height"] == 224 for n in cameras)
    images = [t for t, kind in zip(params["policy"]["observation_topics"], params["policy"]["observation_types"],
                                   strict=True) if kind == "image"]
    assert images == [f"/cameras/{n}/image_raw" for n in cameras]  # the policy sees what the cameras publish
    assert params["recorder"]["cameras"] == cameras
    assert params["franka_bridge"]["error_topic"] == params["robot_mode_relay"]["error_topic"]
    assert params["policy"]["replay_uri"] in params["learner"]["watch_stores"]
    assert params["policy"]["replay_uri"].startswith(params["learner"]["replay_root"] + "/")
    assert "/policy" in params["recorder"]["episode_authorities"]
    assert len(params["policy"]["hand_joint_names"]) == 17  # ORCA v1: 16 finger joints + wrist
    teleop = effective(sim=False, mode="teleop")["teleop_rokoko"]
    assert teleop["hand_command_topic"] == params["orca_hand_driver"]["command_topic"]


def test_sim_overlay_points_the_real_drivers_at_the_world():
    params = effective(sim=True)
    world = params["sim_world"]
    assert params["orca_hand_driver"]["port"] == world["bus_link"]
    assert params["orca_hand_driver"]["calibration_file"] == world["calibration_file"]
    assert world["cameras"] == params["recorder"]["cameras"] == ["front", "under", "left"]
    assert world.get("frame_id", "base") == params["franka_bridge"]["pose_frame"]
    assert params["franka_bridge"]["target_topic"] == "/franka/equilibrium_pose"
    assert params["policy"]["reward_sources"] == ["/sim_world"] and params["policy"]["reward_source_kinds"] == ["sim"]
    assert "/sim_world" in params["policy"]["episode_authorities"]
    assert "/sim_world" in params["recorder"]["episode_authorities"]
    assert params["policy"]["device"] == "cpu" and params["learner"]["device"] == "cpu"
    assert params["policy"]["checkpoint"]  # a CPU-sized checkpoint, not the robot's GPU one
    for name, values in params.items():
        assert values.get("use_sim_time") is False, f"{name} must run on wall-clock time in sim"
    # No robot path leaks into the simulation (the robot's /data and /etc keys).
    for name in ("policy", "learner", "recorder"):
        for key, value in params[name].items():
            for item in value if isinstance(value, list) else [value]:
                assert not str(item).startswith(("/data/", "/etc/")), f"{name}.{key} = {value} in sim"


def test_sim_overlay_has_sections_only_for_nodes_of_the_sim_graph():
    overlay = yaml.safe_load((ROOT / "config/robot/scissors_sim.yaml").read_text())
    in_sim = names(scissors_graph(mode="rollout", sim=True)) | names(scissors_graph(mode="teleop", sim=True))
    assert set(overlay) <= in_sim


# -- preflight and run_graph arguments ------------------------------------------------------------

def test_missing_inputs_name_the_policy_and_learner_files(tmp_path):
    specs = scissors_graph(sim=True)
    missing = missing_inputs(specs, SOURCE_CONFIG_DIR, cwd=tmp_path)
    assert missing == ["policy.checkpoint = results/scissors_sim/train/policy_offline_rl",
                       "learner.initial_checkpoint = results/scissors_sim/train/policy_offline_rl",
                       "learner.offline_store_uri = results/scissors_sim/train/offline_replay"]
    (tmp_path / "results/scissors_sim/train/policy_offline_rl").mkdir(parents=True)
    (tmp_path / "results/scissors_sim/train/offline_replay").mkdir(parents=True)
    assert missing_inputs(specs, SOURCE_CONFIG_DIR, cwd=tmp_path) == []
    remote = scissors_graph(sim=True, learner="remote", checkpoint="s3://bucket/ckpt")
    assert missing_inputs(remote, SOURCE_CONFIG_DIR, cwd=tmp_path / "empty") == []  # URLs: the node checks


def test_launch_style_arguments_and_typed_overrides():
    assert parse_launch_arguments(["mode:=teleop", "sim:=true", "params_file:=/a/b.yaml"]) == {
        "mode": "teleop", "sim": "true", "params_file": "/a/b.yaml"}
    with pytest.raises(ValueError, match="name:=value"):
        parse_launch_arguments(["mode=teleop"])
    with pytest.raises(ValueError, match="twice"):
        parse_launch_arguments(["sim:=true", "sim:=false"])
    assert parse_overrides(["policy.num_samples=8", "policy.stale_after_s=0.5", "recorder.cameras=[front, left]",
                            "learner.device=cpu", "policy.auto_start_episode=true", "policy.checkpoint="]) == {
        "policy": {"num_samples": 8, "stale_after_s": 0.5, "auto_start_episode": True, "checkpoint": ""},
        "recorder": {"cameras": ["front", "left"]}, "learner": {"device": "cpu"}}
    with pytest.raises(ValueError, match="node.param=value"):
        parse_overrides(["num_samples=8"])


def test_parameter_literals_read_back_as_ros_parses_them():
    assert param_literal(["a", "b"]) == "[a, b]"
    assert param_literal("true") == '"true"' and param_literal("10") == '"10"' and param_literal("") == '""'
    assert param_literal(True) == "true" and param_literal(0.5) == "0.5" and param_literal("/x/y") == "/x/y"
    for value in ("true", "10", "", "a, b", "s3://bucket/x", "/x/y"):
        assert yaml.safe_load(param_literal(value)) == value


def test_run_graph_refuses_bad_arguments_and_missing_inputs(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as bad:
        run_graph_main(["scissors", "mode:=dance"])
    assert bad.value.code == 2 and "mode must be one of" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # a checkout without results/
    assert run_graph_main(["scissors", "sim:=true", "--config-dir", str(SOURCE_CONFIG_DIR)]) == 2
    err = capsys.readouterr().err
    assert "policy.checkpoint = results/scissors_sim/train/policy_offline_rl" in err and "sernf-train" in err


def test_launch_file_builds_the_same_nodes_as_the_graph(tmp_path):
    from test_launch_files import _recorded_launch

    (tmp_path / "sernf").mkdir()
    (tmp_path / "sernf" / "config").symlink_to(ROOT / "config")
    arguments = {"mode": "rollout", "learner": "remote", "sim": "true", "checkpoint": "/c", "params_file": "/p.yaml"}
    nodes = _recorded_launch(ROOT / "launch" / "scissors.launch.py", tmp_path, arguments)
    specs = build_graph("scissors", arguments)
    config = tmp_path / "sernf" / "config"
    assert [(n["package"], n["executable"], n["name"]) for n in nodes] == [
        (s.package, s.executable, s.name) for s in specs]
    for node, spec in zip(nodes, specs, strict=True):
        assert node["parameters"] == [str(config / "robot/scissors.yaml"), str(config / "robot/scissors_sim.yaml"),
                                      "/p.yaml", spec.extra_parameters]


# -- the lifecycle manager over DDS ---------------------------------------------------------------

def _wait_for(predicate, timeout: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for proc in procs:
            assert proc.poll() is None, f"a process exited while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.2)


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


class DiagnosticsListener:
    """The test's own rclpy context, collecting the manager's /diagnostics statuses."""

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node("scissors_test_listener", context=self.context)
        self.statuses: list = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self.statuses.extend(m.status), 50)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_until(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.1)
        return predicate()

    def probe_status(self, level: int, text: str) -> bool:
        return any(s.name == "lifecycle_manager: /probe" and s.level == level and text in s.message
                   for s in self.statuses)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.context)


@pytest.mark.ros
def test_lifecycle_manager_retries_until_the_device_appears_then_deactivates_on_ctrl_c(processes, tmp_path):
    listener = DiagnosticsListener()
    try:
        _bring_up_and_shut_down(processes, tmp_path, listener)
    finally:
        listener.close()


def _bring_up_and_shut_down(processes, tmp_path: Path, listener: DiagnosticsListener) -> None:
    from diagnostic_msgs.msg import DiagnosticStatus

    device, state_log = tmp_path / "bus", tmp_path / "probe_states.log"
    probe = processes.python("probe", str(ROOT / "tests" / "lifecycle_probe_node.py"), "--ros-args",
                             "-r", "__node:=probe", "-p", f"device:={device}", "-p", f"state_log:={state_log}")
    manager = processes.python("manager", "-m", "sernf.lifecycle_manager_node", "--ros-args",
                               "-p", "node_names:=[probe]", "-p", "retry_period_s:=0.3",
                               "-p", "retry_max_period_s:=1.0", "-p", "transition_timeout_s:=20.0")
    # The manager keeps asking while the device is missing, with the probe's own reason.
    _wait_for(lambda: _lines(state_log).count("refused") >= 2, 90.0, "two refused configures", [probe, manager])
    assert "active" not in _lines(state_log)
    _wait_for(lambda: "cannot open" in processes.log(manager), 30.0, "the refusal's reason in the manager's log",
              [manager])
    log = processes.log(manager)
    assert f"/probe: configure refused: cannot open {device}: no such device; retry" in log, log[-3000:]
    assert listener.spin_until(lambda: listener.probe_status(DiagnosticStatus.WARN, "cannot open"), 30.0), [
        (s.name, s.level, s.message) for s in listener.statuses[-5:]]
    device.write_text("")  # the pseudo-terminal appears
    _wait_for(lambda: _lines(state_log)[-2:] == ["inactive", "active"], 60.0, "configure + activate",
              [probe, manager])
    _wait_for(lambda: "all 1 managed nodes are active" in processes.log(manager), 30.0, "the manager's report")
    assert listener.spin_until(lambda: listener.probe_status(DiagnosticStatus.OK, "active"), 30.0)
    manager.send_signal(signal.SIGINT)
    manager.wait(timeout=60)
    assert manager.returncode == 0, processes.log(manager)[-3000:]
    assert _lines(state_log)[-1] == "deactivated", _lines(state_log)
    assert probe.poll() is None  # the node itself keeps running (its process is not the manager's)
    assert "/probe: deactivated" in processes.log(manager)


@pytest.mark.ros
def test_lifecycle_manager_refuses_an_empty_node_list(processes):
    manager = processes.python("manager", "-m", "sernf.lifecycle_manager_node")
    assert manager.wait(timeout=60) == 1
    assert "node_names is empty" in processes.log(manager)


def test_every_node_of_every_shape_is_importable():
    missing = {s.module for mode in ("rollout", "teleop") for sim in (False, True)
               for s in scissors_graph(mode=mode, sim=sim) if importlib.util.find_spec(s.module) is None}
    assert not missing, missing


# -- every node's parameters load into its config, typed and valid --------------------------------

def _shapes():
    return [(mode, sim) for mode in ("rollout", "teleop") for sim in (False, True)]


@pytest.mark.parametrize(("mode", "sim"), _shapes(), ids=lambda v: str(v))
def test_every_node_builds_its_config_from_the_parameter_files(ros_env, mode, sim):
    """Each node's parameter sections, in the graph's file order plus its extra parameters, give
    a valid config (right types, __post_init__ checks): what the node does at start."""
    import dataclasses

    import rclpy
    from rclpy.node import Node

    from sernf_data.ros.parameters import declare_config

    for spec in scissors_graph(mode=mode, sim=sim, learner="local"):
        classes = importlib.import_module(spec.module).PARAMETERS
        classes = classes if isinstance(classes, tuple) else (classes,)
        context = rclpy.Context()
        args = spec.ros_args(SOURCE_CONFIG_DIR)
        rclpy.init(context=context, args=args)
        try:
            node = Node(spec.name, context=context)
            try:
                for cls in classes:
                    assert dataclasses.is_dataclass(declare_config(node, cls))
            except Exception as exc:  # noqa: BLE001 - re-raised with the node's name
                raise AssertionError(f"{spec.name} ({spec.module}) with {args}: {exc}") from exc
            finally:
                node.destroy_node()
        finally:
            rclpy.shutdown(context=context)


@pytest.mark.ros
def test_run_graph_stops_the_lifecycle_manager_first_so_the_drivers_are_deactivated(ros_env, tmp_path):
    import os

    from sernf.graph import NodeSpec
    from sernf.run_graph import GraphProcesses

    device, state_log = tmp_path / "bus", tmp_path / "probe_states.log"
    device.write_text("")
    (tmp_path / "graph.yaml").write_text(yaml.safe_dump({
        "probe": {"ros__parameters": {"device": str(device), "state_log": str(state_log)}},
        "lifecycle_manager": {"ros__parameters": {"node_names": ["probe"], "retry_period_s": 0.3}},
    }))
    specs = [NodeSpec(package="sernf", executable="probe", module="lifecycle_probe_node", name="probe",
                      parameters_files=("graph.yaml",), lifecycle=True),
             NodeSpec(package="sernf", executable="lifecycle_manager", module="sernf.lifecycle_manager_node",
                      name="lifecycle_manager", parameters_files=("graph.yaml",))]
    env = dict(ros_env, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), ros_env.get("PYTHONPATH", "")]))
    graph = GraphProcesses(specs, tmp_path, env=env, log_dir=tmp_path)
    with graph:
        _wait_for(lambda: _lines(state_log)[-1:] == ["active"], 90.0, "the probe to be active",
                  list(graph.procs.values()))
    # Ctrl-C of the whole graph: the manager went first and deactivated the probe, then the
    # probe itself was stopped.
    assert _lines(state_log)[-1] == "deactivated", (_lines(state_log), (tmp_path / "lifecycle_manager.log").read_text())
    assert graph.exited()["lifecycle_manager"] == 0


def test_policy_hand_limits_are_the_orca_hand_models():
    """The policy clips commands and checks joint observations against hand_lower/upper: they
    must be the hand model's ranges (the simulated hand has the same), in the driver's order."""
    import math

    model = yaml.safe_load((ROOT / "src/orca_hand_driver/config/orca_v1_right.yaml").read_text())
    joints = model["joints"]
    for path in (ROOT / "config/robot/scissors.yaml", ROOT / "config/policy_scissors.yaml"):
        policy = yaml.safe_load(path.read_text())["policy"]["ros__parameters"]
        assert policy["hand_joint_names"] == [j["name"] for j in joints], path
        for key, bound in (("hand_lower", 0), ("hand_upper", 1)):
            want = [math.radians(j["range_deg"][bound]) for j in joints]
            assert policy[key] == pytest.approx(want, abs=1e-3), (path, key)
