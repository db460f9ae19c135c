"""The SERNF node graphs: which nodes run, with which parameter files and remappings.

This module is the single source of truth for a graph. `launch/*.launch.py` turns it into
`launch_ros` Node actions on a full ROS 2 install; `sernf.run_graph` starts the very same
processes on machines without `launch_ros` (PyPI-wheel ROS, CI). Neither keeps its own copy
of node names, executables, parameter files or remappings. Pure Python: no ROS imports.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# Top-level config/ folder in a source checkout; on an install it is share/sernf/config
# (the bringup package installs it there), found through ament_index by the launch file.
SOURCE_CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"


@dataclass(frozen=True)
class NodeSpec:
    """One node process of a graph."""

    package: str
    """ROS package that installs the executable."""
    executable: str
    """Console script name (`ros2 run <package> <executable>`)."""
    module: str
    """Python module whose `main()` is that executable (used where `ros2 run` is missing)."""
    name: str
    """Node name; also the key under which its parameters sit in the parameter files."""
    parameters_files: tuple[str, ...]
    """Parameter files inside config/ (`<node name>: ros__parameters: ...`), applied in order: a
    later file overrides an earlier one (robot file, then the sim overlay, then the user's). An
    absolute path is used as it is."""
    remappings: tuple[tuple[str, str], ...] = ()
    """Topic remappings (from, to)."""
    extra_parameters: dict[str, object] = field(default_factory=dict)
    """Parameters that override the files (set by the caller, e.g. a run directory)."""
    lifecycle: bool = False
    """A lifecycle node (driver, camera) that the graph's lifecycle_manager brings to active."""

    def __post_init__(self) -> None:
        for attribute in ("package", "executable", "module", "name", "parameters_files"):
            if not getattr(self, attribute):
                raise ValueError(f"NodeSpec.{attribute} must not be empty")
        if isinstance(self.parameters_files, str):
            raise ValueError("NodeSpec.parameters_files is a tuple of file names, not one string")
        for name in self.parameters_files:
            if not str(name).endswith(".yaml"):
                raise ValueError(f"parameter files must be .yaml files, got {name!r}")

    @property
    def parameters_file(self) -> str:
        """The first (base) parameter file."""
        return self.parameters_files[0]

    def parameter_paths(self, config_dir: Path) -> list[Path]:
        """The parameter files as paths (relative names resolved in ``config_dir``)."""
        return [config_dir / name for name in self.parameters_files]

    def ros_args(self, config_dir: Path) -> list[str]:
        """`--ros-args` for starting this node as a plain process."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        for path in self.parameter_paths(config_dir):
            args += ["--params-file", str(path)]
        for source, target in self.remappings:
            args += ["-r", f"{source}:={target}"]
        for key, value in self.extra_parameters.items():
            args += ["-p", f"{key}:={param_literal(value)}"]
        return args


def param_literal(value: object) -> str:
    """A parameter value as `-p name:=<literal>` takes it (ROS parses the literal as YAML):
    strings that YAML would read as something else ('true', '10', '') are quoted."""
    import yaml

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(param_literal(item) for item in value) + "]"
    if isinstance(value, str):
        try:
            reads_back = yaml.safe_load(value) == value
        except yaml.YAMLError:
            reads_back = False
        return value if reads_back and value and "," not in value else json.dumps(value)
    return str(value)


def _check_overrides(graph: str, specs: list[NodeSpec], extra: dict[str, dict[str, object]]) -> None:
    unknown = set(extra) - {spec.name for spec in specs}
    if unknown:
        raise ValueError(f"overrides for nodes not in the {graph} graph: {sorted(unknown)} "
                         f"(its nodes: {[spec.name for spec in specs]})")


def sim_graph(extra_parameters: dict[str, dict[str, object]] | None = None) -> list[NodeSpec]:
    """The simulated robot, the policy and the learner (config/sim.yaml).

    `extra_parameters` maps a node name to parameter overrides (e.g. run directories).
    """
    extra = extra_parameters or {}
    specs = [
        NodeSpec(package="sernf_sim", executable="sim_robot_node",
                 module="sernf_sim.sim_robot_node", name="sim_robot",
                 parameters_files=("sim.yaml",), extra_parameters=extra.get("sim_robot", {})),
        NodeSpec(package="sernf_policy", executable="policy_node",
                 module="sernf_policy.policy_node", name="policy",
                 parameters_files=("sim.yaml",), extra_parameters=extra.get("policy", {})),
        NodeSpec(package="sernf_learner", executable="learner_node",
                 module="sernf_learner.learner_node", name="learner",
                 parameters_files=("sim.yaml",), extra_parameters=extra.get("learner", {})),
    ]
    _check_overrides("sim", specs, extra)
    return specs


SCISSORS_MODES = ("rollout", "teleop")
"""teleop: the operator drives the robot with the gloves and records demonstrations;
rollout: the policy drives it, its episodes are recorded, labeled and (with a learner) trained on."""
SCISSORS_LEARNERS = ("local", "remote", "none")
"""local: learner_node on this machine; remote: on the training server (started there, not
here); none: no online learning (collect or evaluate only)."""
SCISSORS_PARAMETERS = "robot/scissors.yaml"
"""Every node's parameters on the robot."""
SCISSORS_SIM_PARAMETERS = "robot/scissors_sim.yaml"
"""The overlay for sim:=true, applied after SCISSORS_PARAMETERS."""


def scissors_graph(mode: str = "rollout", learner: str = "local", sim: bool = False, checkpoint: str = "",
                   params_file: str | None = None,
                   extra_parameters: dict[str, dict[str, object]] | None = None) -> list[NodeSpec]:
    """The scissors retrieval system of the paper (appendix E1): Franka + ORCA hand, three OAK
    cameras, the policy at 10 Hz, recording, the learner.

    Robot side in both modes: the hand driver, the Franka bridge, the three cameras, the
    recorder and the lifecycle manager that brings drivers and cameras to active. `mode`
    adds teleop_rokoko (teleop) or the policy (rollout); `learner` adds learner_node (local)
    or nothing (remote: it runs on the training server; none). With `sim` the world
    (`sernf_sim` sim_world) stands behind the device boundaries: it serves the hand's Dynamixel
    bus, the Franka controller's topics and the camera images, so the cameras and the franka_ros2
    state relay are not started, while the drivers, policy, recorder and learner run unchanged.

    `checkpoint` is the policy's starting checkpoint (rollout), `params_file` a parameter file
    applied after the shipped ones, `extra_parameters` maps a node name to parameter overrides.
    """
    if mode not in SCISSORS_MODES:
        raise ValueError(f"mode must be one of {SCISSORS_MODES}, got {mode!r}")
    if learner not in SCISSORS_LEARNERS:
        raise ValueError(f"learner must be one of {SCISSORS_LEARNERS}, got {learner!r}")
    if not isinstance(sim, bool):
        raise ValueError(f"sim must be a bool, got {sim!r}")
    if checkpoint and mode != "rollout":
        raise ValueError("checkpoint is the policy's: give it with mode rollout")
    if mode == "teleop" and learner == "local":
        # Teleoperation records demonstrations (bags, converted offline); nothing reaches the
        # learner's replay topic, so a learner here would only wait.
        learner = "none"
    if params_file is not None and not str(params_file).endswith(".yaml"):
        raise ValueError(f"params_file must be a .yaml file, got {params_file!r}")
    files = (SCISSORS_PARAMETERS, *((SCISSORS_SIM_PARAMETERS,) if sim else ()),
             *((str(params_file),) if params_file else ()))
    extra = {node: dict(values) for node, values in (extra_parameters or {}).items()}

    def node(package: str, executable: str, module: str, name: str, lifecycle: bool = False) -> NodeSpec:
        return NodeSpec(package=package, executable=executable, module=module, name=name,
                        parameters_files=files, extra_parameters=extra.get(name, {}), lifecycle=lifecycle)

    specs: list[NodeSpec] = []
    if sim:
        specs.append(node("sernf_sim", "sim_world", "sernf_sim.sim_world_node", "sim_world"))
    specs += [
        node("orca_hand_driver", "orca_hand_driver", "orca_hand_driver.orca_hand_node", "orca_hand_driver",
             lifecycle=True),
        node("franka_bridge", "franka_bridge", "franka_bridge.franka_bridge_node", "franka_bridge", lifecycle=True),
    ]
    if not sim:
        specs.append(node("franka_bridge", "robot_mode_relay", "franka_bridge.robot_mode_relay_node",
                          "robot_mode_relay"))
        specs += [node("oak_camera", "oak_camera", "oak_camera.oak_camera_node", f"oak_{camera}", lifecycle=True)
                  for camera in SCISSORS_CAMERAS]
    specs.append(node("sernf_data", "recorder", "sernf_data.episode_bag_recorder_node", "recorder"))
    if mode == "teleop":
        specs.append(node("teleop_rokoko", "teleop_rokoko", "teleop_rokoko.teleop_node", "teleop_rokoko"))
    else:
        if checkpoint:
            extra.setdefault("policy", {})["checkpoint"] = checkpoint
        specs.append(node("sernf_policy", "policy_node", "sernf_policy.policy_node", "policy"))
    if learner == "local":
        specs.append(node("sernf_learner", "learner_node", "sernf_learner.learner_node", "learner"))
    # The manager's node list comes from the graph itself, so it cannot drift from it.
    managed = [spec.name for spec in specs if spec.lifecycle]
    extra.setdefault("lifecycle_manager", {}).setdefault("node_names", managed)
    specs.append(node("sernf", "lifecycle_manager", "sernf.lifecycle_manager_node", "lifecycle_manager"))
    _check_overrides("scissors", specs, extra)
    return specs


SCISSORS_CAMERAS = ("front", "under", "left")
"""The paper's three views (appendix E1): the OAK-D Lite in front, the OAK-1 Lites under the
hand and facing left; node oak_<name> publishes /cameras/<name>/image_raw."""


def node_parameters(spec: NodeSpec, config_dir: Path) -> dict[str, object]:
    """The parameters node ``spec`` starts with: its section of each parameter file in order
    (a later file overrides an earlier one, as ROS applies them), then its extra parameters."""
    import yaml

    params: dict[str, object] = {}
    for path in spec.parameter_paths(config_dir):
        with open(path, encoding="utf-8") as fh:
            sections = yaml.safe_load(fh) or {}
        params.update(((sections.get(spec.name) or {}).get("ros__parameters")) or {})
    params.update(spec.extra_parameters)
    return params


#: Module -> the parameters naming local inputs that must exist before that node can start.
_REQUIRED_INPUTS = {
    "sernf_learner.learner_node": ("initial_checkpoint", "offline_store_uri"),
    "sernf_policy.policy_node": ("checkpoint",),
}


def missing_inputs(specs: list[NodeSpec], config_dir: Path, cwd: Path | None = None) -> list[str]:
    """Local files a graph needs before it can start (the learner's offline-stage policy and
    demonstrations, the policy's starting checkpoint), each as 'node.parameter = path', for
    those that do not exist. Empty values (nothing to load) and URLs are not checked here (the
    nodes validate them themselves)."""
    cwd = cwd or Path.cwd()
    missing = []
    for spec in specs:
        for key in _REQUIRED_INPUTS.get(spec.module, ()):
            value = str(node_parameters(spec, config_dir).get(key) or "")
            if value and "://" not in value and not (cwd / Path(value).expanduser()).exists():
                missing.append(f"{spec.name}.{key} = {value}")
    return missing


GRAPHS = {"sim": sim_graph, "scissors": scissors_graph}
"""Graph name → builder, for `python -m sernf.run_graph <name>`."""

SCISSORS_ARGUMENTS: dict[str, tuple[str, str]] = {
    "mode": ("rollout", "teleop: the gloves drive the robot and demonstrations are recorded; "
                        "rollout: the policy drives it, episodes are recorded and labeled"),
    "learner": ("local", "local: learner_node on this machine; remote: it runs on the training "
                         "server (not started here); none: no online learning"),
    "sim": ("false", "true: the simulated world behind the device boundaries (real drivers); "
                     "false: the robot"),
    "checkpoint": ("", "the policy's starting checkpoint directory or URL (rollout); empty: the "
                       "parameter file's, or wait for the learner's announcement"),
    "params_file": ("", "a parameter file applied after the shipped ones (your serials, paths, "
                        "workspace box); relative names are looked up in the config folder"),
}
"""Launch arguments of the scissors graph: name → (default, description). The launch file
declares exactly these and `run_graph` accepts them as `name:=value`."""

GRAPH_ARGUMENTS: dict[str, dict[str, tuple[str, str]]] = {"sim": {}, "scissors": SCISSORS_ARGUMENTS}
"""Graph name → its launch arguments."""


def parse_bool(text: str, name: str) -> bool:
    """A launch argument's true/false (as `ros2 launch` users write it)."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {text!r}")


def build_graph(name: str, arguments: Mapping[str, str] | None = None,
                extra_parameters: dict[str, dict[str, object]] | None = None) -> list[NodeSpec]:
    """Graph ``name`` from launch-style string arguments (`ros2 launch` / `run_graph` ones);
    missing arguments take their defaults, unknown ones are refused."""
    if name not in GRAPHS:
        raise ValueError(f"no graph {name!r} (graphs: {sorted(GRAPHS)})")
    declared = GRAPH_ARGUMENTS[name]
    given = dict(arguments or {})
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ValueError(f"the {name} graph has no argument(s) {unknown} (its arguments: {sorted(declared)})")
    if name == "sim":
        return sim_graph(extra_parameters)
    values = {key: given.get(key, default) for key, (default, _) in declared.items()}
    return scissors_graph(mode=values["mode"], learner=values["learner"], sim=parse_bool(values["sim"], "sim"),
                          checkpoint=values["checkpoint"], params_file=values["params_file"] or None,
                          extra_parameters=extra_parameters)
