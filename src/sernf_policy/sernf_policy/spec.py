"""Moved to :mod:`sernf_data.spec` (the observation contract lives in the data layer).

This module re-exports its public names so existing imports keep working; new code imports
``sernf_data.spec``. Still torch-free.
"""

from sernf_data.spec import (
    CACHED_FEATURES_SUFFIX,
    KEY_PATTERN,
    STEP_ARRAY_KEYS,
    ObsKeySpec,
    check_observations,
    parse_observation_spec,
)

__all__ = [
    "CACHED_FEATURES_SUFFIX",
    "KEY_PATTERN",
    "STEP_ARRAY_KEYS",
    "ObsKeySpec",
    "check_observations",
    "parse_observation_spec",
]
