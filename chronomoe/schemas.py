"""JSON Schemas of the records ChronoMoE writes, and validation of a run folder against them.

The schemas are generated from the pydantic models (their serialised form,
i.e. what ``model_dump(mode="json")`` and the JSONL writer produce) and
committed in ``specs/schemas/<Name>.schema.json`` as package data. They are
part of the regression contract: ``tests/test_schemas.py`` fails when a model
changes and the committed schemas were not regenerated with::

    python -m chronomoe.schemas --write

``python -m chronomoe.schemas --check`` exits 1 when a committed schema is
out of date. :func:`validate_run` checks every record of a run folder
against the committed schemas and the models' own invariants (what
``chronomoe validate`` prints).

jsonschema is imported only by the validating functions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from .alerts import AlertRules, AlertTransition
from .controller import ControlDecision
from .errors import InvalidInputError
from .events import RoutingEvent
from .io import ALERTS_FILE, DECISIONS_FILE, EVENTS_FILE, MANIFEST_FILE, SNAPSHOTS_FILE
from .io.lines import numbered_lines
from .io.parse_errors import describe_parse_error
from .io.run_check import MANIFEST_RECORD_TYPE, FileCheck, RunCheck
from .lens import LensState
from .snapshots import SystemSnapshot

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

RECORD_MODELS: dict[str, type[BaseModel]] = {
    "AlertRules": AlertRules,
    "AlertTransition": AlertTransition,
    "ControlDecision": ControlDecision,
    "LensState": LensState,
    "RoutingEvent": RoutingEvent,
    "SystemSnapshot": SystemSnapshot,
}
"""Every record type with a committed schema (``SystemSnapshot``'s holds ``LayerSnapshot`` and ``AlertTransition``)."""

RUN_FILES: dict[str, str] = {
    EVENTS_FILE: "RoutingEvent",
    SNAPSHOTS_FILE: "SystemSnapshot",
    ALERTS_FILE: "AlertTransition",
    DECISIONS_FILE: "ControlDecision",
}
"""JSONL files of a run folder and the record type of their lines."""


def schema_file_name(name: str) -> str:
    return f"{name}.schema.json"


def _model(name: str) -> type[BaseModel]:
    model = RECORD_MODELS.get(name)
    if model is None:
        raise InvalidInputError("schema name", name, f"must be one of {', '.join(RECORD_MODELS)}")
    return model


def generate_schema(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of record type ``name``, generated from its model."""
    schema = _model(name).model_json_schema(mode="serialization")
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


def schema_text(schema: dict[str, Any]) -> str:
    """Canonical file text of a schema: 2-space indent, sorted keys, trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def packaged_schema_dir() -> Path:
    """``specs/schemas/`` of the installed package (the source tree's in an editable install)."""
    return Path(str(resources.files("chronomoe.specs"))) / "schemas"


def load_schema(name: str) -> dict[str, Any]:
    """The committed schema of record type ``name``."""
    _model(name)
    text = resources.files("chronomoe.specs").joinpath("schemas").joinpath(schema_file_name(name)).read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def write_schemas(directory: str | os.PathLike[str] | None = None) -> list[Path]:
    """Generate every schema into ``directory`` (default: the packaged ``specs/schemas/``)."""
    directory = packaged_schema_dir() if directory is None else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in RECORD_MODELS:
        path = directory / schema_file_name(name)
        path.write_text(schema_text(generate_schema(name)))
        written.append(path)
    return written


def stale_schemas(directory: str | os.PathLike[str] | None = None) -> list[str]:
    """Names whose file in ``directory`` is missing or differs from what the model generates now."""
    directory = packaged_schema_dir() if directory is None else Path(directory)
    stale = []
    for name in RECORD_MODELS:
        path = directory / schema_file_name(name)
        if not path.is_file() or path.read_text() != schema_text(generate_schema(name)):
            stale.append(name)
    return stale


def schema_validator(name: str) -> Any:
    """A ``jsonschema`` validator for the committed schema of ``name`` (needs the jsonschema package)."""
    import jsonschema

    schema = load_schema(name)
    validator_class = jsonschema.validators.validator_for(schema)
    return validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)


# -- validating a run folder ----------------------------------------------------
def validate_run(run_dir: str | os.PathLike[str], progress: Callable[[int], None] | None = None) -> RunCheck:
    """Check every record of a run folder against the committed schemas and the models.

    Each line of ``routing_events.jsonl``, ``snapshots.jsonl`` and
    ``alerts.jsonl`` must be JSON, valid against its record type's schema, and
    accepted by the model (which also checks invariants a schema cannot
    state, such as ``len(expert_token_counts) == n_experts``). The manifest
    must be a JSON object whose ``rules``, when present, are valid
    :class:`~chronomoe.alerts.AlertRules`. ``progress`` is called with the
    bytes consumed after each line.

    A Parquet run is checked part by part (:mod:`chronomoe.io.parquet_validate`).

    Raises :class:`~chronomoe.errors.InvalidInputError` when ``run_dir`` is not
    a folder or holds none of these files.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InvalidInputError("RUN_DIR", str(run_dir), "is not a folder")
    from .io.run_reader import detect_storage

    if detect_storage(run_dir) == "parquet":
        from .io.parquet_validate import check_parquet_tables

        checks = check_parquet_tables(run_dir, progress)
        if (run_dir / MANIFEST_FILE).is_file():
            checks.append(_check_manifest(run_dir / MANIFEST_FILE))
        if not checks:
            raise InvalidInputError("RUN_DIR", str(run_dir), "holds no telemetry (no table part, no manifest)")
        return RunCheck(run_dir, checks)
    checks = [
        _check_jsonl(run_dir / file_name, record_type, progress)
        for file_name, record_type in RUN_FILES.items()
        if (run_dir / file_name).is_file()
    ]
    if (run_dir / MANIFEST_FILE).is_file():
        checks.append(_check_manifest(run_dir / MANIFEST_FILE))
    if not checks:
        raise InvalidInputError(
            "RUN_DIR", str(run_dir), f"holds no telemetry ({', '.join([*RUN_FILES, MANIFEST_FILE])})"
        )
    notes = [
        f"no {name}: {readers} have nothing to read"
        for name, readers in ((SNAPSHOTS_FILE, "summary and report"), (EVENTS_FILE, "replay"))
        if not (run_dir / name).is_file()
    ]
    return RunCheck(run_dir, checks, notes)


def _check_jsonl(path: Path, record_type: str, progress: Callable[[int], None] | None) -> FileCheck:
    check = FileCheck(path, record_type)
    validator = schema_validator(record_type)
    model = RECORD_MODELS[record_type]
    order = _StepOrder(STEP_SEQUENCES[record_type])
    for line_number, line in numbered_lines(path):
        if progress is not None:
            progress(len(line))
        if not line.endswith(b"\n"):
            check.torn_line = line_number
            break
        if not line.strip():
            continue
        check.records += 1
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            check.add_error(line_number, f"not JSON: {error}")
            continue
        problem = _record_problem(value, validator, model)
        if problem is None:
            problem = order.problem(line_number, value)
            check.out_of_order += problem is not None
        if problem is not None:
            check.add_error(line_number, problem)
    return check


STEP_SEQUENCES: dict[str, tuple[tuple[str, ...], bool]] = {
    "RoutingEvent": (("mode", "layer_id"), True),
    "SystemSnapshot": (("mode",), True),
    "AlertTransition": (("mode", "layer_id"), True),
    "ControlDecision": (("mode",), False),
}
"""Per record type: the fields whose values name a sequence of records, and whether each step of a sequence
is recorded once (strictly increasing steps) or may hold several records (non-decreasing). One recording
writes every sequence in this order; readers (replay, summary) rely on it."""


class _StepOrder:
    """Checks that the records of each sequence of a file come in step order (see :data:`STEP_SEQUENCES`).

    Each record is compared with the highest step its sequence reached so
    far, so every record of a second recording of some steps is counted, not
    only the first.
    """

    def __init__(self, sequence: tuple[tuple[str, ...], bool]) -> None:
        self.keys, self.strict = sequence
        self.highest: dict[tuple[Any, ...], tuple[int, int]] = {}  # sequence -> (highest step, its line)

    def problem(self, line_number: int, record: dict[str, Any]) -> str | None:
        """Why a valid record is out of order (``None`` when it is in order)."""
        sequence = tuple(record.get(key, "TRAIN" if key == "mode" else None) for key in self.keys)
        step, highest = record["step"], self.highest.get(sequence)
        if highest is None or step > highest[0] or (step == highest[0] and not self.strict):
            self.highest[sequence] = (step, line_number)
            return None
        named = " ".join(f"{key}={value}" for key, value in zip(self.keys, sequence, strict=True))
        return (
            f"step {step} ({named}) is not after step {highest[0]} (line {highest[1]}): the file holds more than "
            "one recording of these steps (a reused run id?)"
        )


def _record_problem(value: Any, validator: Any, model: type[BaseModel]) -> str | None:
    """Why one parsed line is not a valid record (``None`` when it is)."""
    from jsonschema.exceptions import best_match

    schema_error = best_match(validator.iter_errors(value))
    if schema_error is not None:
        return f"schema: {schema_error.json_path}: {_abbreviate(schema_error.message)}"
    try:
        model.model_validate(value)
    except (ValidationError, ValueError) as error:
        return f"model: {describe_parse_error(error)}"
    return None


def _check_manifest(path: Path) -> FileCheck:
    check = FileCheck(path, MANIFEST_RECORD_TYPE)
    try:
        manifest = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as error:
        check.add_error(1, f"not JSON: {error}")
        return check
    check.records = 1
    if not isinstance(manifest, dict):
        check.add_error(1, f"must be a JSON object, got {type(manifest).__name__}")
    elif "rules" in manifest:
        problem = _record_problem(manifest["rules"], schema_validator("AlertRules"), AlertRules)
        if problem is not None:
            check.add_error(1, f"rules: {problem}")
    return check


def _abbreviate(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- python -m chronomoe.schemas ---------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chronomoe.schemas",
        description="Regenerate or check the committed JSON Schemas of ChronoMoE's records.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="regenerate every schema file")
    action.add_argument("--check", action="store_true", help="exit 1 when a committed schema is out of date")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help=f"schema folder (default: the package's specs/schemas/, here {packaged_schema_dir()})",
    )
    args = parser.parse_args(argv)
    if args.write:
        for path in write_schemas(args.dir):
            print(path)
        return 0
    stale = stale_schemas(args.dir)
    for name in stale:
        print(f"{schema_file_name(name)} is out of date: run python -m chronomoe.schemas --write", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
