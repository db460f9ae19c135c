"""Simulated Dynamixel Protocol 2.0 bus on a pseudo-terminal (the ORCA hand's device boundary).

``SimulatedDynamixelBus`` serves 17 (or any number of) XC330-like servos; the ORCA driver talks
to it through dynamixel-sdk as to a USB serial adapter. ``python -m sernf_sim.dynamixel_bus``
serves one for manual bring-up.
"""

from .bus import GoalWrite, SimulatedDynamixelBus, present_block
from .servo import FirstOrderServos, JointBackend, JointModel, JointSpaceBackend

__all__ = ["FirstOrderServos", "GoalWrite", "JointBackend", "JointModel", "JointSpaceBackend",
           "SimulatedDynamixelBus", "present_block"]
