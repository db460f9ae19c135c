"""SERNF simulated tasks (point task, MuJoCo dexterous hand), scripted experts, evaluation; sim_robot_node."""
