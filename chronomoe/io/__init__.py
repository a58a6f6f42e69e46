"""JSONL telemetry files and the run manifest."""

from .jsonl import (
    ALERTS_FILE,
    EVENTS_FILE,
    MANIFEST_FILE,
    SNAPSHOTS_FILE,
    TelemetryWriter,
    check_run_id,
    iter_events,
    iter_records,
    load_events,
    load_manifest,
    load_snapshots,
    load_transitions,
)
from .manifest import create_run_manifest, get_git_commit

__all__ = [
    "ALERTS_FILE",
    "EVENTS_FILE",
    "MANIFEST_FILE",
    "SNAPSHOTS_FILE",
    "TelemetryWriter",
    "check_run_id",
    "create_run_manifest",
    "get_git_commit",
    "iter_events",
    "iter_records",
    "load_events",
    "load_manifest",
    "load_snapshots",
    "load_transitions",
]
