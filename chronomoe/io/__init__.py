"""JSONL telemetry files and the run manifest.

Modules: :mod:`~chronomoe.io.paths` (a run folder's layout),
:mod:`~chronomoe.io.lines` (bounded line reading, torn tails),
:mod:`~chronomoe.io.serialize` (the JSONL line of each record),
:mod:`~chronomoe.io.writer` (:class:`TelemetryWriter`),
:mod:`~chronomoe.io.reader` (the loaders), :mod:`~chronomoe.io.fast_events`
(the fast events loader), :mod:`~chronomoe.io.manifest` (the manifest's content),
:mod:`~chronomoe.io.run_reader` (:func:`~chronomoe.io.run_reader.open_run`: any run folder, either storage).
Parquet storage (needs pyarrow): :mod:`~chronomoe.io.parquet_writer`, :mod:`~chronomoe.io.parquet_reader`,
:mod:`~chronomoe.io.parquet_parts` (crash-safe part files), :mod:`~chronomoe.io.parquet_footer`,
:mod:`~chronomoe.io.parquet_schema`, :mod:`~chronomoe.io.parquet_records`, :mod:`~chronomoe.io.parquet_validate`,
and :mod:`~chronomoe.io.export` (``chronomoe export``).
"""

from .fast_events import iter_events
from .manifest import create_run_manifest, get_git_commit
from .paths import ALERTS_FILE, DECISIONS_FILE, EVENTS_FILE, MANIFEST_FILE, SNAPSHOTS_FILE, check_run_id
from .reader import iter_records, load_decisions, load_events, load_manifest, load_snapshots, load_transitions
from .writer import TelemetryWriter

__all__ = [
    "ALERTS_FILE",
    "DECISIONS_FILE",
    "EVENTS_FILE",
    "MANIFEST_FILE",
    "SNAPSHOTS_FILE",
    "TelemetryWriter",
    "check_run_id",
    "create_run_manifest",
    "get_git_commit",
    "iter_events",
    "iter_records",
    "load_decisions",
    "load_events",
    "load_manifest",
    "load_snapshots",
    "load_transitions",
]
