"""SERNF bringup: launch files, parameter files and the node graph they describe."""
