"""Converting a run folder from one storage to the other (``chronomoe export RUN --to parquet``).

:func:`export_run` reads every table through :func:`~chronomoe.io.run_reader.open_run`
(each record validated) and writes it into a new run folder with the other
storage's writer, table by table, in the order read, each record once; the
manifest is copied with its ``storage`` set. Rows are written in batches of
:data:`EXPORT_BATCH_ROWS` (:data:`EXPORT_BATCH_SNAPSHOTS` snapshots): larger
row groups than a run's snapshot cadence makes, which read faster. The
source is never changed.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from .paths import MANIFEST_FILE
from .run_reader import STORAGES, TABLES, JsonlRunReader, RunReader, Storage, open_run
from .writer import TelemetryWriter

EXPORT_BATCH_ROWS = 16_384
"""Events, transitions or decisions per row group of an export."""
EXPORT_BATCH_SNAPSHOTS = 256
"""Snapshots per row group of an export."""


@dataclass
class ExportResult:
    """What :func:`export_run` wrote: records per table, and where."""

    out_dir: Path
    storage: Storage
    records: dict[str, int] = field(default_factory=dict)


def export_run(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    to: Storage = "parquet",
    progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Write the run in ``run_dir`` into the new folder ``out_dir`` with storage ``to``.

    ``progress`` is called with the number of records written after each batch. Raises
    :class:`~chronomoe.errors.InvalidInputError` when ``to`` is not a storage, the run already has it, or
    ``out_dir`` already holds a run; :class:`~chronomoe.errors.CorruptRecordError` for a record its model rejects
    (what was written so far stays in ``out_dir``).
    """
    if to not in STORAGES:
        raise InvalidInputError("--to", to, f"must be one of {', '.join(STORAGES)}")
    source = open_run(run_dir)
    if source.storage == to:
        raise InvalidInputError("--to", to, f"the run in {run_dir} is already stored as {to}")
    out = Path(out_dir)
    if out.resolve() == Path(run_dir).resolve():
        raise InvalidInputError("--out", str(out), "must differ from RUN_DIR (export never changes the recording)")
    if out.exists() and any(out.iterdir()):
        raise InvalidInputError("--out", str(out), "already exists and is not empty; choose a new folder")
    writer = _writer(to, out)
    result = ExportResult(out, to)
    try:
        manifest = source.manifest()
        if manifest or (Path(run_dir) / MANIFEST_FILE).is_file():
            writer.write_manifest({key: value for key, value in manifest.items() if key != "storage"})
        for table in TABLES:
            if not source.has(table):
                continue
            result.records[table] = 0
            batch_size = EXPORT_BATCH_SNAPSHOTS if table == "snapshots" else EXPORT_BATCH_ROWS
            for batch in _batches(_records(source, table), batch_size):
                written = writer.write_records(table, batch)
                result.records[table] += written
                if progress is not None:
                    progress(written)
    finally:
        writer.close()
    return result


def count_records(run_dir: str | os.PathLike[str]) -> int:
    """About the number of records :func:`export_run` writes from ``run_dir`` (the total of its ``progress``
    calls), without parsing one: the lines of the JSONL files (a torn last line counted too), the rows of the
    Parquet parts' complete row groups."""
    source = open_run(run_dir)
    total = 0
    for table in TABLES:
        if not source.has(table):
            continue
        if isinstance(source, JsonlRunReader):
            with open(Path(run_dir) / source.FILES[table], "rb") as handle:
                total += sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
            continue
        from .parquet_parts import read_part
        from .parquet_reader import ParquetRunReader

        assert isinstance(source, ParquetRunReader)
        for part in source.parts(table):
            file = read_part(part)
            total += 0 if file is None else file.metadata.num_rows
    return total


def _writer(storage: Storage, out: Path) -> TelemetryWriter:
    if storage == "parquet":
        from .parquet_writer import ParquetRunWriter

        return ParquetRunWriter(out.name, out.parent, on_error="raise")
    return TelemetryWriter(out.name, out.parent, on_error="raise")


def _records(source: RunReader, table: str) -> Iterator[Any]:
    readers: dict[str, Callable[[], Iterator[Any]]] = {
        "routing_events": source.events,
        "snapshots": source.snapshots,
        "alerts": source.transitions,
        "decisions": source.decisions,
    }
    return readers[table]()


def _batches(records: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(records)
    while batch := list(itertools.islice(iterator, size)):
        yield batch
