"""SERNF data layer: the episode store (zarr), the observation/action spec, dataset operations
(copy/merge/filter/info) and demonstration conversion from rosbag2 (``sernf-bag2zarr``).

The bottom package of the workspace: the policy node, the learner, the converter and the
labeling tool all depend on it, and it depends on none of them. The core modules import no
rclpy and no torch.
"""
