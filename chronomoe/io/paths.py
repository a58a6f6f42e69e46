"""A run folder's layout: ``output_dir/run_id/`` and the names of the files it holds.

* ``routing_events.jsonl``: one :class:`~chronomoe.events.RoutingEvent` a line;
* ``snapshots.jsonl``: one :class:`~chronomoe.snapshots.SystemSnapshot` a line;
* ``alerts.jsonl``: one :class:`~chronomoe.alerts.AlertTransition` a line;
* ``decisions.jsonl``: one :class:`~chronomoe.controller.ControlDecision` a line (the audit trail);
* ``run_manifest.json``: run metadata, replaced atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InvalidInputError

EVENTS_FILE = "routing_events.jsonl"
SNAPSHOTS_FILE = "snapshots.jsonl"
ALERTS_FILE = "alerts.jsonl"
DECISIONS_FILE = "decisions.jsonl"
MANIFEST_FILE = "run_manifest.json"


def check_run_id(run_id: str) -> str:
    """Refuse a run_id that is not one safe path component ('', '.', '..', '/abs', 'a/b', NUL)."""
    if (
        not isinstance(run_id, str)
        or run_id in ("", ".", "..")
        or any(separator in run_id for separator in ("/", "\\", "\0"))
        or os.path.isabs(run_id)
    ):
        raise InvalidInputError("run_id", run_id, "must be a single, non-empty path component")
    return run_id


def file_in(path: str | os.PathLike[str], default_name: str) -> Path:
    """``path`` itself when it is a file path, ``path / default_name`` when it is a (run) folder."""
    path = Path(path)
    return path / default_name if path.is_dir() else path
