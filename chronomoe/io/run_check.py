"""What ``chronomoe validate`` finds: per file (:class:`FileCheck`, with its :class:`LineError` s) and for the
run (:class:`RunCheck`, whose :meth:`RunCheck.verdict` is the command's last line). Filled by
:func:`chronomoe.schemas.validate_run` (JSONL) and :mod:`chronomoe.io.parquet_validate` (Parquet)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MANIFEST_RECORD_TYPE = "run manifest"
"""The ``record_type`` of the manifest's check (the manifest is no record)."""

MAX_REPORTED_ERRORS = 20
"""Errors listed per file (all are counted)."""


@dataclass
class LineError:
    """One invalid line of a JSONL file (``line`` counts from 1)."""

    line: int
    message: str


@dataclass
class FileCheck:
    """Validation result of one file of a run folder.

    ``errors`` lists the first :data:`MAX_REPORTED_ERRORS` invalid lines;
    ``error_count`` counts them all. ``torn_line`` is the line number of a
    last line without its newline (a crash mid-write): loaders skip it, so it
    is reported but is not an error. ``out_of_order`` counts the records
    (errors too) whose step repeats or precedes an earlier one of their
    sequence (:data:`STEP_SEQUENCES`).
    """

    path: Path
    record_type: str
    records: int = 0
    error_count: int = 0
    errors: list[LineError] = field(default_factory=list)
    torn_line: int | None = None
    note: str | None = None  # what else a reader should know: a Parquet part still growing, or torn
    out_of_order: int = 0

    def add_error(self, line: int, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(LineError(line, message))


@dataclass
class RunCheck:
    """Validation result of a run folder: one :class:`FileCheck` per file present, and what the folder lacks.

    ``notes`` say which readers a missing file leaves without input; a folder
    without any record (a manifest alone) is invalid: there is nothing to read.
    """

    run_dir: Path
    files: list[FileCheck]
    notes: list[str] = field(default_factory=list)

    @property
    def records(self) -> int:
        """Records of the JSONL files (the manifest is no record)."""
        return sum(check.records for check in self.files if check.record_type != MANIFEST_RECORD_TYPE)

    @property
    def error_count(self) -> int:
        return sum(check.error_count for check in self.files) + (0 if self.records else 1)

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def verdict(self) -> str:
        """The last line ``chronomoe validate`` prints: ``valid``, or why not."""
        if not self.records:
            return "invalid: nothing recorded (no routing event, snapshot, transition or decision)"
        if self.ok:
            return "valid"
        out_of_order = sum(check.out_of_order for check in self.files)
        counts = {
            "fail their schema or model": self.error_count - out_of_order,
            "repeat or precede an earlier step of their sequence": out_of_order,
        }
        reasons = ", ".join(f"{count} {reason}" for reason, count in counts.items() if count)
        return f"invalid: {self.error_count} records: {reasons}"
