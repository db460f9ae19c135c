"""Reward labeling for SERNF episodes: an rqt plugin and a standalone window sharing one widget.

Modules: ``episode_source`` (storage: stores, bags, label sets), ``label_model`` and
``live_model`` (pure, no Qt), ``qt`` (binding shim), ``timeline`` / ``widget`` (Qt widgets),
``live_node`` (the only rclpy module), ``plugin`` (rqt) and ``standalone`` (``sernf-label``).
"""

__version__ = "0.1.0"
TOOL_NAME = f"rqt_sernf_rewards {__version__}"
