"""Moved to :mod:`sernf_data.store` (the data layer under the policy and the learner).

This module re-exports its public names so existing scripts keep working; new code imports
``sernf_data.store``.
"""

from sernf_data.store import (
    COMMIT_RECORD_KEY,
    EPISODE_SOURCES,
    LOCK_NAME,
    RECORD_FORMAT,
    SCHEMA_VERSION,
    STEP_KEYS,
    STORE_FORMAT,
    SUPPORTED_SCHEMA_VERSIONS,
    EpisodeStore,
    ReplayCorruptError,
    ReplaySchemaError,
    ReplaySnapshot,
    StoreSpec,
)

__all__ = [
    "COMMIT_RECORD_KEY",
    "EPISODE_SOURCES",
    "LOCK_NAME",
    "RECORD_FORMAT",
    "SCHEMA_VERSION",
    "STEP_KEYS",
    "STORE_FORMAT",
    "SUPPORTED_SCHEMA_VERSIONS",
    "EpisodeStore",
    "ReplayCorruptError",
    "ReplaySchemaError",
    "ReplaySnapshot",
    "StoreSpec",
]
