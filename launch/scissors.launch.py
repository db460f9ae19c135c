"""The scissors retrieval system (paper, appendix E1): on the robot, or in simulation.

    ros2 launch sernf scissors.launch.py                     # the robot, rollout, local learner
    ros2 launch sernf scissors.launch.py sim:=true           # the simulated world, real drivers
    ros2 launch sernf scissors.launch.py mode:=teleop        # gloves drive the robot, record demos

Arguments: mode:=rollout|teleop, learner:=local|remote|none, sim:=true|false, checkpoint:=DIR,
params_file:=FILE (`ros2 launch sernf scissors.launch.py --show-args` describes them).

The graph (which nodes, which parameter files, in which mode) is `sernf.graph.scissors_graph`;
this file only turns it into launch_ros Node actions once the arguments are known.
`python -m sernf.run_graph scissors mode:=... sim:=...` starts the same processes where
launch_ros is unavailable.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from sernf.graph import SCISSORS_ARGUMENTS, build_graph

from launch import LaunchDescription


def _nodes(context, *args, **kwargs) -> list:
    arguments = {name: LaunchConfiguration(name).perform(context) for name in SCISSORS_ARGUMENTS}
    config_dir = Path(get_package_share_directory("sernf")) / "config"
    nodes = []
    for spec in build_graph("scissors", arguments):
        nodes.append(Node(
            package=spec.package,
            executable=spec.executable,
            name=spec.name,
            parameters=[*(str(path) for path in spec.parameter_paths(config_dir)), spec.extra_parameters],
            remappings=list(spec.remappings),
            output="screen",
        ))
    return nodes


def generate_launch_description() -> LaunchDescription:
    declared = [DeclareLaunchArgument(name, default_value=default, description=description)
                for name, (default, description) in SCISSORS_ARGUMENTS.items()]
    return LaunchDescription([*declared, OpaqueFunction(function=_nodes)])
