"""``chronomoe validate`` of a Parquet run: every part's schema against ``specs/parquet/``, every row against its model.

One :class:`~chronomoe.schemas.FileCheck` per part file. A part that cannot
be read, or whose Arrow schema differs from the committed one, is an error
(row 0); a row its model rejects is an error naming its row (from 1). A
growing part (``.parquet.partial``: a writer still running, or one that
crashed) is read through its complete frames and reported with a note, and
so are the torn bytes after its last complete frame: readers skip them, the
next writer of that rank moves them aside. Neither is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CorruptRecordError
from ..events import RoutingEvent
from .parquet_parts import PARTIAL_SUFFIX, read_part, scan_frames
from .parquet_reader import ParquetRunReader
from .parquet_schema import EVENTS_TABLE, TABLE_MODELS, table_layout
from .parse_errors import PARSE_ERRORS, describe_parse_error
from .run_reader_base import TABLES

if TYPE_CHECKING:
    from .run_check import FileCheck


def check_parquet_tables(run_dir: Path, progress: Callable[[int], None] | None = None) -> list[FileCheck]:
    """A check of every part of every table of the Parquet run in ``run_dir`` (see the module docstring);
    ``progress`` is called with each part's size once it is checked."""
    reader = ParquetRunReader(run_dir)
    return [_check_part(table, path, progress) for table in TABLES for path in reader.parts(table)]


def _check_part(table: str, path: Path, progress: Callable[[int], None] | None) -> FileCheck:
    from .run_check import FileCheck

    check = FileCheck(path, TABLE_MODELS[table].__name__)
    if path.name.endswith(PARTIAL_SUFFIX):
        scan = scan_frames(path.read_bytes())
        check.note = f"growing part (not sealed): {len(scan.footers)} complete row groups"
        if scan.torn_bytes:
            check.note += f", then {scan.torn_bytes} torn bytes (a crash mid-write; readers skip them)"
    try:
        file = read_part(path)
    except CorruptRecordError as error:
        check.add_error(0, error.reason)
        return check
    if file is not None:
        schema = file.schema_arrow.remove_metadata()
        width = schema.field("expert_token_counts").type.list_size if table == EVENTS_TABLE else None
        expected = table_layout(table, width)
        if not schema.equals(expected.schema):
            check.add_error(0, f"schema differs from specs/parquet/{table}.txt: {schema}")
        else:
            model = TABLE_MODELS[table]
            for number, row in enumerate(file.read().to_pylist(), start=1):
                check.records += 1
                try:
                    if model is RoutingEvent:
                        model.model_validate(row)
                    else:
                        model.model_validate(expected.from_row(row))
                except PARSE_ERRORS as error:
                    check.add_error(number, f"model: {describe_parse_error(error)}")
    if progress is not None:
        progress(path.stat().st_size)
    return check
