"""An existing run folder: whether a run is recorded there, and what a new recording may do with it.

A :class:`~chronomoe.Monitor` asked to record run ``run_id`` into
``output_dir`` finds ``output_dir/run_id`` in one of two cases: free (absent,
or holding none of the run files of :mod:`chronomoe.io.paths`), or holding a
recorded run. Its ``on_existing_run`` option (:data:`ON_EXISTING_RUN`) says
what to do with a recorded run, and :func:`claim_run_folder` does it before
anything is written:

* ``"refuse"`` (the default): raise :class:`~chronomoe.errors.InvalidInputError`
  naming the folder and the ways out. Appending silently would mix two runs
  in one folder, which summaries would count twice and replay could not read.
* ``"resume"``: append to it. The steps recorded there (:func:`last_recorded_steps`)
  are returned, so the caller can check that the new records continue after them;
  a resume from a checkpoint taken earlier moves the records written after the
  checkpoint aside first (:func:`move_records_after`).
* ``"new"``: record into a new folder instead, ``run_id-2``, ``run_id-3``, ...
  (the first name not in ``output_dir``, created at once so that two processes
  cannot take the same one).

Records moved aside are appended to ``<file>.superseded`` next to their file,
never deleted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from ..alerts import AlertRules
from ..errors import InvalidInputError
from .lines import line_start, move_tail_aside, open_regular_file
from .paths import ALERTS_FILE, DECISIONS_FILE, EVENTS_FILE, MANIFEST_FILE, SNAPSHOTS_FILE, check_run_id
from .reader import load_manifest

logger = logging.getLogger(__name__)

OnExistingRun = Literal["refuse", "resume", "new"]
ON_EXISTING_RUN: tuple[OnExistingRun, ...] = ("refuse", "resume", "new")

RECORD_FILES = (EVENTS_FILE, SNAPSHOTS_FILE, ALERTS_FILE, DECISIONS_FILE)
"""The JSONL files of a run folder; each line is a record with a ``step``, in the order of their steps."""

RUN_FILES = (MANIFEST_FILE, *RECORD_FILES)
"""The files whose presence makes a folder hold a recorded run."""

RESUME_KEYS = ("created_at", "git_commit", "chronomoe_version", "python_version", "config", "monitor_config")
"""What a resumed run adds to its folder's manifest, in an entry of its ``resumes`` list."""

SUPERSEDED_SUFFIX = ".superseded"
"""Suffix of the file next to a JSONL file that receives the records a resume from a checkpoint replaced."""


@dataclass(frozen=True)
class RunFolder:
    """Where a run records and what was there before.

    Attributes:
        run_id: the run's id, the folder's name (``run_id-N`` after ``"new"`` picked a fresh one).
        run_dir: ``output_dir/run_id``.
        resumed: whether the folder held a recorded run that this one appends to.
        recorded_steps: for a resumed run, the step of the last record of each JSONL file holding one.
    """

    run_id: str
    run_dir: Path
    resumed: bool = False
    recorded_steps: dict[str, int] = field(default_factory=dict)


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds any of a run's files (:data:`RUN_FILES`)."""
    return any((run_dir / name).exists() for name in RUN_FILES)


def claim_run_folder(output_dir: Path, run_id: str, on_existing_run: OnExistingRun) -> RunFolder:
    """Apply ``on_existing_run`` to ``output_dir/run_id`` (see the module docstring); creates nothing else.

    Raises :class:`~chronomoe.errors.InvalidInputError` when the folder holds a
    run and the policy is ``"refuse"``, or for an unknown policy.
    """
    check_run_id(run_id)
    if on_existing_run not in ON_EXISTING_RUN:
        raise InvalidInputError("on_existing_run", on_existing_run, f"must be one of {', '.join(ON_EXISTING_RUN)}")
    run_dir = output_dir / run_id
    if not holds_run(run_dir):
        return RunFolder(run_id, run_dir)
    if on_existing_run == "resume":
        steps = last_recorded_steps(run_dir)
        logger.info("run %s: resuming in %s after its recorded steps %s", run_id, run_dir, steps)
        return RunFolder(run_id, run_dir, resumed=True, recorded_steps=steps)
    if on_existing_run == "new":
        fresh = _create_fresh_folder(output_dir, run_id)
        logger.warning("%s holds a recorded run; recording into %s instead (on_existing_run='new')", run_dir, fresh)
        return RunFolder(fresh.name, fresh)
    raise InvalidInputError(
        "run_id",
        run_id,
        f"{run_dir} already holds a recorded run. Pass on_existing_run='resume' to append to it (new steps must "
        f"come after the recorded ones), on_existing_run='new' to record into a new folder ({run_id}-2 or the "
        "next free name), or choose another run_id",
    )


def _create_fresh_folder(output_dir: Path, run_id: str) -> Path:
    """Create and return ``output_dir/run_id-N`` for the smallest N >= 2 that names nothing yet."""
    number = 2
    while True:
        candidate = output_dir / f"{run_id}-{number}"
        try:
            candidate.mkdir(parents=True)  # not exist_ok: another process may be claiming the same name
        except FileExistsError:
            number += 1
            continue
        return candidate


def record_step(line: bytes) -> int | None:
    """The ``step`` of a JSONL record line, or ``None`` when the line holds no integer step."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if type(step) is int else None


def last_recorded_steps(run_dir: Path) -> dict[str, int]:
    """``{file name: step of its last record}`` for each JSONL file of ``run_dir`` that holds one.

    Reads each file backwards from its end, skipping a torn last line and
    lines without a step, so the cost is the few last lines, never the file.
    """
    steps = {}
    for name in RECORD_FILES:
        path = run_dir / name
        if path.is_file():
            with closing(_lines_from_the_end(path)) as lines:
                step = next((step for _, line in lines if (step := record_step(line)) is not None), None)
            if step is not None:
                steps[name] = step
    return steps


def move_records_after(run_dir: Path, last_steps: dict[str, int]) -> dict[str, int]:
    """Move the records of each file ``name`` of ``last_steps`` whose step is above ``last_steps[name]``
    to ``<file>.superseded``; ``{file name: records moved}`` for the files that had any.

    Used when a run resumes from a checkpoint older than the folder's last
    records: those were written after the checkpoint by the attempt that
    stopped, and the resumed run records those steps again. The files hold
    their records in step order, so the moved records are the file's last
    lines; they are found reading backwards, at a cost of their length.
    """
    moved = {}
    for name, last_step in last_steps.items():
        path = run_dir / name
        if not path.is_file():
            continue
        keep, count = None, 0
        with closing(_lines_from_the_end(path)) as lines:
            for offset, line in lines:
                step = record_step(line)
                if step is not None and step <= last_step:
                    break
                keep, count = offset, count + 1
        if keep is None:
            continue
        with open(path, "r+b", buffering=0) as handle:
            aside = move_tail_aside(path, handle.fileno(), keep, SUPERSEDED_SUFFIX)
        moved[name] = count
        logger.warning(
            "%s: moved its last %d records (after step %d, written after the checkpoint being resumed) to %s",
            path,
            count,
            last_step,
            aside,
        )
    return moved


def _lines_from_the_end(path: Path) -> Generator[tuple[int, bytes], None, None]:
    """``(offset, line)`` of the complete, non-blank lines of ``path``, last first, read from the end in blocks
    (close the iterator when leaving it early: it holds the file open)."""
    with open_regular_file(path) as handle:
        descriptor = handle.fileno()
        end = line_start(descriptor, os.fstat(descriptor).st_size)  # a torn tail is no record
        while end > 0:
            start = line_start(descriptor, end - 1)
            line = os.pread(descriptor, end - start, start)
            if not line.isspace():
                yield start, line
            end = start


def resumed_manifest(run_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest a resumed run writes: the folder's own (its run's identity, config and rules kept),
    with ``manifest``'s provenance appended to its ``resumes`` list; ``manifest`` itself when the folder
    has none.

    Raises :class:`~chronomoe.errors.InvalidInputError` when the folder's
    manifest records other alert rules than ``manifest``: a run keeps one set
    of rules, the one replay and reports read from its manifest.
    """
    path = run_dir / MANIFEST_FILE
    if not path.is_file():
        return manifest
    recorded = load_manifest(path)
    if "rules" in recorded and "rules" in manifest:
        try:
            before = AlertRules.model_validate(recorded["rules"]).model_dump()
        except ValueError as error:
            raise InvalidInputError(f"{path}:rules", recorded["rules"], str(error).splitlines()[0]) from None
        changes = {
            name: f"{before[name]} -> {value}" for name, value in manifest["rules"].items() if before[name] != value
        }
        if changes:
            raise InvalidInputError(
                "rules",
                changes,
                f"differ from the rules {path} records: a resumed run keeps its rules (replay and reports read "
                "them from the manifest). Resume with the recorded rules, or pass on_existing_run='new'",
            )
    resume = {key: manifest[key] for key in RESUME_KEYS if key in manifest}
    return {**recorded, "resumes": [*recorded.get("resumes", []), resume]}
