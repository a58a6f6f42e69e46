"""The ``chronomoe`` subcommands, one ``run_<name>(args) -> exit code`` each (registered by :mod:`.parser`).

Each imports what it needs when it runs, so ``chronomoe --help`` starts fast (and only ``demo`` imports torch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError
from .options import EXIT_ERROR, EXIT_NO, EXIT_OK, output_option

if TYPE_CHECKING:
    from chronomoe.controller import ControlDecision

    from ..io import TelemetryWriter
    from ..report import RunData, RunSummary
    from ..snapshots import SystemSnapshot


def run_demo_command(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    options = {"output_dir": args.output_dir, "seed": args.seed, "quiet": args.quiet, "as_json": args.json}
    if args.steps is not None:
        options["steps"] = args.steps
    return run_demo(**options)


def run_summary(args: argparse.Namespace) -> int:
    from ..io.run_reader import open_run
    from ..report import format_summary, summarize_run

    summary = summarize_run(args.run_dir, args.mode)
    print(format_summary(summary))
    last = open_run(summary.run_dir).last_snapshot()
    dropped = 0 if last is None else last.dropped_records
    if dropped:
        print(f"warning: {dropped} records dropped after I/O errors while recording (the run's log names the files)")
    if _warn_about(summary):
        return EXIT_ERROR
    return EXIT_NO if summary.collapsed_layers else EXIT_OK


def _warn_about(summary: RunSummary) -> bool:
    """Print what the summary left out of ``snapshots.jsonl`` on stderr; whether it skipped corrupt lines (then
    what it shows cannot be trusted, and the command exits 2)."""
    from ..report import summary_warnings

    for warning in summary_warnings(summary):
        print(f"chronomoe: warning: {warning}", file=sys.stderr)
    return bool(summary.corrupt_lines)


def run_replay(args: argparse.Namespace) -> int:
    from ..alerts import AlertRules
    from ..io import EVENTS_FILE, MANIFEST_FILE, load_manifest
    from ..io.run_reader import open_run
    from ..progress import count_lines, progress_bar, show_progress
    from ..replay import changed_layers, format_transitions, recorded_rules, replay_run, require_run_dir

    run_dir = require_run_dir(args.run_dir)
    recorded = recorded_rules(run_dir)
    if args.rules is not None:
        rules, rules_origin = AlertRules.from_file(args.rules), str(args.rules)
    elif recorded is not None:
        rules, rules_origin = recorded, "the recording (run_manifest.json)"
    else:
        rules, rules_origin = AlertRules.default(), "the defaults (the run stored none)"

    writer = None
    if args.out is not None:
        with output_option("--out", args.out):
            writer = _replay_writer(args.out.resolve(), run_dir.resolve(), open_run(run_dir).storage)
        manifest = load_manifest(run_dir) if (run_dir / MANIFEST_FILE).is_file() else {}
        writer.write_manifest(
            {
                **manifest,
                "rules": rules.model_dump(),
                "replay": {"source": str(run_dir.resolve()), "window": args.window or "recorded"},
            }
        )
    evaluation = _ControllerEvaluation.of(args, rules)

    def on_snapshot(snapshot: SystemSnapshot) -> None:
        if writer is not None:
            writer.write_snapshot(snapshot)
        if evaluation is not None:
            decisions = evaluation.decide(snapshot)
            if writer is not None and decisions:
                writer.write_decisions(decisions)

    events = run_dir / EVENTS_FILE
    shown = events.is_file() and show_progress(events.stat().st_size)
    with progress_bar(count_lines(events) if shown else 0, unit="event", description=EVENTS_FILE, enabled=shown) as bar:
        result = replay_run(run_dir, rules, args.window, on_snapshot=on_snapshot, progress=bar.update)
    if writer is not None:
        writer.close()

    windows = "the recorded windows" if args.window is None else f"windows of {args.window} steps"
    print(
        f"replayed {result.events} events into {result.snapshots} snapshots ({windows}) with rules from {rules_origin}"
    )
    print("rules: " + ", ".join(f"{name}={value}" for name, value in rules.model_dump().items()))
    if result.unreplayed_events:
        print(f"{result.unreplayed_events} events after the last recorded snapshot of their mode were not replayed")
    if result.mismatched_snapshots:
        print(
            f"warning: the metrics of {result.mismatched_snapshots} snapshots differ from the recording: "
            "the event log does not hold what the recorded snapshots were built from"
        )
    if args.window is None:
        print(f"alert states differ from the recording in {result.changed_snapshots} of {result.snapshots} snapshots")
    changes = changed_layers(result.recorded_transitions, result.replayed_transitions)
    if not changes:
        print(f"transitions: same as recorded ({len(result.replayed_transitions)})")
    for change in changes:
        label = f"{change.mode} layer {change.layer_id}: "
        print(f"{label}recorded {format_transitions(change.recorded)}")
        print(f"{' ' * len(label)}replayed {format_transitions(change.replayed)}")
        if change.recorded_final != change.replayed_final:
            print(f"{' ' * len(label)}ends {change.replayed_final.value} (recorded: {change.recorded_final.value})")
    if evaluation is not None:
        evaluation.print_summary()
    if args.out is not None:
        print(f"wrote {args.out}")
    return EXIT_OK


class _ControllerEvaluation:
    """``replay --controller``: a controller in dry run over the replayed snapshots, and what it would have done."""

    def __init__(self, controller: Any) -> None:
        self.controller = controller
        self.decisions: list[ControlDecision] = []

    @classmethod
    def of(cls, args: argparse.Namespace, rules: Any) -> _ControllerEvaluation | None:
        if args.controller is None:
            if args.controller_config is not None:
                raise InvalidInputError("--controller-config", str(args.controller_config), "needs --controller")
            return None
        from pydantic import ValidationError

        from chronomoe.controller import PressureConfig, PressureController

        config = PressureConfig()
        if args.controller_config is not None:
            try:
                config = PressureConfig.model_validate_json(args.controller_config.read_bytes())
            except OSError as error:
                raise InvalidInputError("--controller-config", str(args.controller_config), str(error)) from None
            except ValidationError as error:
                first = error.errors()[0]
                where = ".".join(str(part) for part in first["loc"]) or "the document"
                raise InvalidInputError(
                    f"--controller-config {args.controller_config}: {where}", first.get("input"), first["msg"]
                ) from None
        return cls(PressureController(config, rules=rules, dry_run=True))

    def decide(self, snapshot: SystemSnapshot) -> list[ControlDecision]:
        decided = self.controller.on_snapshot(snapshot) or []
        self.decisions.extend(decided)
        return list(decided)

    def print_summary(self) -> None:
        from ..audit import audit_by_layer, format_table, layer_rows

        acted = [d for d in self.decisions if d.action != "none"]
        print(
            f"controller {self.controller.name} (config {self.controller.config_hash}, dry run): "
            f"{len(self.decisions)} decisions, {len(acted)} would have acted"
            + (f", the first at step {acted[0].step} on layer {acted[0].layer_id}" if acted else "")
        )
        print("(what it would have decided on the recorded routing, which did not respond to its bias)")
        print(format_table(layer_rows(audit_by_layer(self.decisions))))


def run_decisions(args: argparse.Namespace) -> int:
    from ..audit import audit_by_layer, decision_rows, format_table, layer_rows
    from ..io.run_reader import open_run
    from ..replay import require_run_dir

    run = open_run(require_run_dir(args.run_dir))
    run.require("decisions", " (the run had no controller?)")
    decisions = list(run.decisions())
    shown = [
        d
        for d in decisions
        if (args.layer is None or d.layer_id == args.layer) and (args.action is None or d.action == args.action)
    ]
    if args.last is not None:
        shown = shown[-args.last :]
    if args.all or args.action is not None or args.layer is not None or args.last is not None:
        print(format_table(decision_rows(shown)))
        print()
    print(format_table(layer_rows(audit_by_layer(shown))))
    return EXIT_OK


def _replay_writer(out: Path, run_dir: Path, storage: str) -> TelemetryWriter:
    """The writer of ``replay --out``, in the recording's storage."""
    from ..io import SNAPSHOTS_FILE, TelemetryWriter

    if out == run_dir:
        raise InvalidInputError("--out", str(out), "must differ from RUN_DIR (replay never changes the recording)")
    if (out / SNAPSHOTS_FILE).exists() or (out / "snapshots").exists():
        raise InvalidInputError("--out", str(out), "already holds snapshots; choose a new folder")
    if storage == "parquet":
        from ..io.parquet_writer import ParquetRunWriter

        return ParquetRunWriter(out.name, out.parent)
    return TelemetryWriter(out.name, out.parent)


def run_report(args: argparse.Namespace) -> int:
    from ..progress import progress_bar, show_progress
    from ..replay import require_run_dir
    from ..report import write_report
    from ..report.load import run_bytes

    run_dirs = [require_run_dir(path) for path in args.run_dirs]
    if args.output_dir is not None:
        with output_option("--output-dir", args.output_dir):
            args.output_dir.mkdir(parents=True, exist_ok=True)
    total = sum(run_bytes(path) for path in run_dirs)
    skipped_corrupt_lines = False

    def warn(run: RunData) -> None:
        nonlocal skipped_corrupt_lines
        for warning in run.warnings:
            print(f"chronomoe: warning: {run.run_dir}: {warning}", file=sys.stderr)
        skipped_corrupt_lines = skipped_corrupt_lines or bool(run.corrupt_lines)

    with progress_bar(total, unit="B", description="reading", enabled=show_progress(total)) as bar:
        written = write_report(
            run_dirs,
            args.output_dir,
            args.mode,
            layers=args.layers,
            max_columns=args.max_columns,
            figures=not args.no_figures,
            progress=bar.update,
            on_run=warn,
        )
    for path in written:
        print(path)
    # What the figures show lacks the skipped snapshots: exit 2, as summary does.
    return EXIT_ERROR if skipped_corrupt_lines else EXIT_OK


def run_watch(args: argparse.Namespace) -> int:
    from ..watch import watch_run

    return watch_run(args.run_dir, mode=args.mode, interval=args.interval, history=args.history, plain=args.plain)


def run_validate(args: argparse.Namespace) -> int:
    from ..progress import progress_bar, show_progress
    from ..replay import require_run_dir
    from ..schemas import RUN_FILES, validate_run

    run_dir = require_run_dir(args.run_dir)
    total = sum((run_dir / name).stat().st_size for name in RUN_FILES if (run_dir / name).is_file())
    with progress_bar(total, unit="B", description=run_dir.name, enabled=show_progress(total)) as bar:
        check = validate_run(run_dir, progress=bar.update)
    for file_check in check.files:
        name = str(file_check.path.relative_to(run_dir))
        status = "ok" if not file_check.error_count else f"{file_check.error_count} invalid"
        print(f"{name}: {file_check.records} record{'' if file_check.records == 1 else 's'}, {status}")
        for error in file_check.errors:
            print(f"  {name}:{error.line}: {error.message}")
        if file_check.error_count > len(file_check.errors):
            print(f"  ... and {file_check.error_count - len(file_check.errors)} more")
        if file_check.torn_line is not None:
            print(f"  {name}:{file_check.torn_line}: torn last line (a crash mid-write; loaders skip it)")
        if file_check.note is not None:
            print(f"  {name}: {file_check.note}")
    for note in check.notes:
        print(f"note: {note}")
    print(check.verdict())
    return EXIT_OK if check.ok else EXIT_NO


def run_export(args: argparse.Namespace) -> int:
    from ..io.export import count_records, export_run
    from ..progress import progress_bar, show_progress
    from ..replay import require_run_dir

    run_dir = require_run_dir(args.run_dir)
    out = args.out if args.out is not None else run_dir.with_name(f"{run_dir.name}-{args.to}")
    size = sum(path.stat().st_size for path in run_dir.rglob("*") if path.is_file())
    shown = show_progress(size)
    total = count_records(run_dir) if shown else 0
    with output_option("--out", out), progress_bar(total, unit="record", description="export", enabled=shown) as bar:
        result = export_run(run_dir, out, args.to, progress=bar.update)
    tables = ", ".join(f"{records} {table}" for table, records in result.records.items())
    print(f"wrote {result.out_dir} ({args.to}): {tables}")
    return EXIT_OK


def run_schema(args: argparse.Namespace) -> int:
    from ..schemas import RECORD_MODELS, load_schema, schema_text

    if args.name is None:
        print(schema_text({name: load_schema(name) for name in RECORD_MODELS}), end="")
    else:
        print(schema_text(load_schema(args.name)), end="")
    return EXIT_OK
