"""policy_node without DDS traffic: message conversions, the config, parameter declaration."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import rclpy
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray

from sernf_data.ros.parameters import declare_config, field_docs
from sernf_policy.policy_node import PolicyNodeConfig
from sernf_policy.ros_conversions import (
    chunk_to_trajectory,
    float_array_to_vector,
    hand_command,
    image_to_rgb,
    joint_positions,
    pose_to_array,
    relative_pose_command,
    seconds_to_time,
    time_to_seconds,
)


def image(encoding: str, pixels: np.ndarray, pad: int = 0) -> Image:
    h, w, c = pixels.shape
    rows = np.concatenate([pixels.reshape(h, w * c), np.zeros((h, pad), np.uint8)], axis=1)
    return Image(height=h, width=w, encoding=encoding, step=w * c + pad, data=rows.tobytes())


def test_image_conversion_encodings_padding_and_bad_input():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (3, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image_to_rgb(image("rgb8", rgb)), rgb)
    np.testing.assert_array_equal(image_to_rgb(image("bgr8", rgb[:, :, ::-1].copy(), pad=5)), rgb)
    rgba = np.concatenate([rgb, np.full((3, 4, 1), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(image_to_rgb(image("rgba8", rgba)), rgb)
    with pytest.raises(ValueError, match="encoding 'mono8'"):
        image_to_rgb(image("mono8", rgb))
    short = image("rgb8", rgb)
    short.data = short.data[:-1]
    with pytest.raises(ValueError, match="bytes"):
        image_to_rgb(short)
    bad_step = image("rgb8", rgb)
    bad_step.step = 5
    with pytest.raises(ValueError, match="step"):
        image_to_rgb(bad_step)


def test_joint_positions_by_name_or_order():
    msg = JointState(name=["b", "a", "c"], position=[2.0, 1.0, 3.0])
    np.testing.assert_array_equal(joint_positions(msg, ["a", "b"]), [1.0, 2.0])
    with pytest.raises(ValueError, match=r"lacks joints \['d'\]"):
        joint_positions(msg, ["a", "d"])
    np.testing.assert_array_equal(joint_positions(JointState(position=[5.0, 6.0]), ["a", "b"]), [5.0, 6.0])
    with pytest.raises(ValueError, match="expected 2"):
        joint_positions(JointState(position=[5.0]), ["a", "b"])
    with pytest.raises(ValueError, match="names but"):
        joint_positions(JointState(name=["a", "b"], position=[1.0]), ["a"])


def test_poses_commands_and_trajectory():
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = 1.0, 2.0, 3.0
    pose.orientation.w, pose.orientation.x, pose.orientation.y, pose.orientation.z = 0.5, 0.1, 0.2, 0.3
    np.testing.assert_array_equal(pose_to_array(pose), [1, 2, 3, 0.5, 0.1, 0.2, 0.3])
    stamp = seconds_to_time(12.25)
    assert time_to_seconds(stamp) == pytest.approx(12.25)
    cmd = relative_pose_command(np.array([0.01, 0, 0, 1, 0, 0, 0]), stamp, "panda_EE")
    assert cmd.header.frame_id == "panda_EE" and cmd.pose.orientation.w == 1.0 and cmd.pose.position.x == 0.01
    np.testing.assert_array_equal(pose_to_array(cmd.pose), [0.01, 0, 0, 1, 0, 0, 0])
    joints = hand_command(np.array([0.1, 0.2]), ["a", "b"], stamp)
    assert list(joints.name) == ["a", "b"] and list(joints.position) == [0.1, 0.2]
    traj = chunk_to_trajectory(np.arange(12.0).reshape(4, 3), ["x", "y", "z"], Time(sec=3), 0.05)
    assert traj.header.stamp.sec == 3 and len(traj.points) == 4
    assert [p.time_from_start.nanosec for p in traj.points] == [0, 50_000_000, 100_000_000, 150_000_000]
    assert list(traj.points[2].positions) == [6.0, 7.0, 8.0]
    with pytest.raises(ValueError):
        chunk_to_trajectory(np.zeros((4, 2)), ["x", "y", "z"], Time(), 0.1)


def test_float_array_observation_is_its_data_and_empty_is_rejected():
    msg = Float32MultiArray()
    msg.data = [0.5, -1.0, 2.0]
    np.testing.assert_array_equal(float_array_to_vector(msg), [0.5, -1.0, 2.0])
    with pytest.raises(ValueError, match="no data"):
        float_array_to_vector(Float32MultiArray())


def test_every_config_field_has_a_docstring():
    docs = field_docs(PolicyNodeConfig)
    missing = [f.name for f in dataclasses.fields(PolicyNodeConfig) if not docs.get(f.name)]
    assert not missing


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(observation_keys=("a",), observation_types=(), observation_topics=()), "same length"),
        (dict(observation_keys=("a",), observation_types=("lidar",), observation_topics=("/x",)), "lidar"),
        (dict(observation_keys=("a", "a"), observation_types=("pose", "pose"), observation_topics=("/x", "/y")), "unique"),
        (dict(control_rate_hz=0.0), "control_rate_hz"),
        (dict(stale_after_s=-1.0), "stale_after_s"),
        (dict(selection="greedy"), "selection"),
        (dict(hand_index=7), "hand_joint_names"),
        (dict(max_episode_steps=0), "max_episode_steps"),
        (dict(subtasks=("a", "a")), "subtasks"),
        (dict(cuda_graph=True), "cuda_graph needs a CUDA device"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        PolicyNodeConfig(**kw)


def test_parameters_are_declared_from_the_dataclass(ros_env):
    context = rclpy.Context()
    rclpy.init(context=context, args=[
        "--ros-args", "-p", "control_rate_hz:=20.0", "-p", "observation_keys:=[cube]",
        "-p", "observation_types:=[pose_with_covariance]", "-p", "observation_topics:=[/cube_pose]",
        "-p", "hand_lower:=[-0.5]", "-p", "hand_upper:=[1.0]", "-p", "hand_joint_names:=[j0]",
        "-p", "hand_index:=7"])
    try:
        node = Node("policy", context=context)
        config = declare_config(node, PolicyNodeConfig)
        assert config.control_rate_hz == 20.0 and config.observation_topics == ("/cube_pose",)
        assert config.hand_lower == (-0.5,) and config.hand_joint_names == ("j0",)
        assert config.subtasks == () and config.stale_after_s == 0.2  # defaults
        descriptor = node.describe_parameter("stale_after_s")
        assert "older than" in descriptor.description and descriptor.read_only
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "config").glob("policy_*.yaml")))
def test_shipped_parameter_files_give_a_valid_config(ros_env, path):
    context = rclpy.Context()
    rclpy.init(context=context, args=["--ros-args", "--params-file", str(path)])
    try:
        node = Node("policy", context=context)
        config = declare_config(node, PolicyNodeConfig)
        assert config.observation_keys, f"{path.name} configures no observations"
        assert config.action_space_config().action_dim >= 1
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
