"""The ``chronomoe`` command: demo, summary, replay, report, watch, decisions, validate, export, import, schema.

Exit codes: 0 success; 1 the answer is "no" (``summary``: a layer is
collapse_confirmed; ``validate``: invalid or repeated records, or nothing
recorded); 2 the command could not run (missing run folder or file, no
events, bad rules file, bad arguments) or ``summary``/``report`` skipped
corrupt lines; 141 the reader of the output went away (as a Unix tool ended
by SIGPIPE). Errors are one line on stderr, never a traceback.

The subcommands' modules (and torch, for ``demo`` only) are imported when a
subcommand runs, so ``chronomoe --help`` starts fast.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ChronoMoEError, InvalidInputError
from .events import MODES

if TYPE_CHECKING:
    from chronomoe.controller import ControlDecision

    from .io import TelemetryWriter
    from .report import RunData, RunSummary
    from .snapshots import SystemSnapshot

EXIT_OK = 0
EXIT_NO = 1
EXIT_ERROR = 2
EXIT_BROKEN_PIPE = 128 + 13
"""The status of a process ended by SIGPIPE, as shells report it: what ``chronomoe`` returns when the reader of
its output goes away."""


# -- subcommands -----------------------------------------------------------------------------
def run_demo_command(args: argparse.Namespace) -> int:
    from .demo import run_demo

    options = {"output_dir": args.output_dir, "seed": args.seed, "quiet": args.quiet, "as_json": args.json}
    if args.steps is not None:
        options["steps"] = args.steps
    return run_demo(**options)


def run_summary(args: argparse.Namespace) -> int:
    from .io.run_reader import open_run
    from .report import format_summary, summarize_run

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
    from .report import summary_warnings

    for warning in summary_warnings(summary):
        print(f"chronomoe: warning: {warning}", file=sys.stderr)
    return bool(summary.corrupt_lines)


def run_replay(args: argparse.Namespace) -> int:
    from .alerts import AlertRules
    from .io import EVENTS_FILE, MANIFEST_FILE, load_manifest
    from .io.run_reader import open_run
    from .progress import count_lines, progress_bar, show_progress
    from .replay import changed_layers, format_transitions, recorded_rules, replay_run, require_run_dir

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
        with _output_option("--out", args.out):
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
        from .audit import audit_by_layer, format_table, layer_rows

        acted = [d for d in self.decisions if d.action != "none"]
        print(
            f"controller {self.controller.name} (config {self.controller.config_hash}, dry run): "
            f"{len(self.decisions)} decisions, {len(acted)} would have acted"
            + (f", the first at step {acted[0].step} on layer {acted[0].layer_id}" if acted else "")
        )
        print("(what it would have decided on the recorded routing, which did not respond to its bias)")
        print(format_table(layer_rows(audit_by_layer(self.decisions))))


def run_decisions(args: argparse.Namespace) -> int:
    from .audit import audit_by_layer, decision_rows, format_table, layer_rows
    from .io.run_reader import open_run
    from .replay import require_run_dir

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
    from .io import SNAPSHOTS_FILE, TelemetryWriter

    if out == run_dir:
        raise InvalidInputError("--out", str(out), "must differ from RUN_DIR (replay never changes the recording)")
    if (out / SNAPSHOTS_FILE).exists() or (out / "snapshots").exists():
        raise InvalidInputError("--out", str(out), "already holds snapshots; choose a new folder")
    if storage == "parquet":
        from .io.parquet_writer import ParquetRunWriter

        return ParquetRunWriter(out.name, out.parent)
    return TelemetryWriter(out.name, out.parent)


def run_report(args: argparse.Namespace) -> int:
    from .progress import progress_bar, show_progress
    from .replay import require_run_dir
    from .report import write_report
    from .report.load import run_bytes

    run_dirs = [require_run_dir(path) for path in args.run_dirs]
    if args.output_dir is not None:
        with _output_option("--output-dir", args.output_dir):
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
    from .watch import watch_run

    return watch_run(args.run_dir, mode=args.mode, interval=args.interval, history=args.history, plain=args.plain)


def run_validate(args: argparse.Namespace) -> int:
    from .progress import progress_bar, show_progress
    from .replay import require_run_dir
    from .schemas import RUN_FILES, validate_run

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
    from .io.export import count_records, export_run
    from .progress import progress_bar, show_progress
    from .replay import require_run_dir

    run_dir = require_run_dir(args.run_dir)
    out = args.out if args.out is not None else run_dir.with_name(f"{run_dir.name}-{args.to}")
    size = sum(path.stat().st_size for path in run_dir.rglob("*") if path.is_file())
    shown = show_progress(size)
    total = count_records(run_dir) if shown else 0
    with _output_option("--out", out), progress_bar(total, unit="record", description="export", enabled=shown) as bar:
        result = export_run(run_dir, out, args.to, progress=bar.update)
    tables = ", ".join(f"{records} {table}" for table, records in result.records.items())
    print(f"wrote {result.out_dir} ({args.to}): {tables}")
    return EXIT_OK


def run_schema(args: argparse.Namespace) -> int:
    from .schemas import RECORD_MODELS, load_schema, schema_text

    if args.name is None:
        print(schema_text({name: load_schema(name) for name in RECORD_MODELS}), end="")
    else:
        print(schema_text(load_schema(args.name)), end="")
    return EXIT_OK


# -- helpers ---------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


class _OneLineErrorParser(argparse.ArgumentParser):
    """Bad arguments give one line on stderr (not the usage block) and exit code 2, like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@contextmanager
def _output_option(option: str, path: Path) -> Iterator[None]:
    """Name the command-line option when its output folder cannot be made or written."""
    try:
        yield
    except OSError as error:
        raise InvalidInputError(option, str(path), error.strerror or str(error)) from None


def _integers(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"must be comma-separated layer ids such as 0,5,17, got {text!r}")
    return values


def _even_columns(text: str) -> int:
    value = _positive_int(text)
    if value < 2 or value % 2:
        raise argparse.ArgumentTypeError(f"must be an even integer >= 2, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _mode_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode",
        type=str.upper,  # the records say TRAIN and INFER; --mode infer means the same
        choices=MODES,
        default="TRAIN",
        help="which snapshots: TRAIN or INFER, in any case (default: TRAIN)",
    )


def _schema_name(text: str) -> str:
    from .schemas import RECORD_MODELS

    if text not in RECORD_MODELS:
        raise argparse.ArgumentTypeError(f"unknown record type {text!r}; choose from {', '.join(RECORD_MODELS)}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(
        prog="chronomoe",
        description="Routing-topology telemetry for Mixture-of-Experts training: inspect, replay, "
        "report and validate recorded runs.",
        epilog="RUN_DIR is a run folder written by chronomoe.Monitor or TelemetryWriter "
        "(routing_events.jsonl, snapshots.jsonl, alerts.jsonl, run_manifest.json). "
        "Exit codes: 0 success; 1 a collapsed layer (summary) or invalid records (validate); "
        "2 an error (missing run folder or file, no events, bad rules file, bad arguments) or corrupt lines "
        "skipped (summary, report).",
    )
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"chronomoe {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], summary: str, description: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=description)
        sub.set_defaults(handler=handler)
        return sub

    demo = command(
        "demo",
        run_demo_command,
        "train a small MoE that collapses, recording it",
        "Train a small Mixture-of-Experts language model on CPU with ChronoMoE attached and write its "
        "run folders (needs torch). Prints what the alerts saw.",
    )
    demo.add_argument(
        "--output-dir", default="runs", metavar="DIR", help="parent folder of the run folders (default: runs)"
    )
    demo.add_argument(
        "--steps", type=_positive_int, default=None, metavar="N", help="training steps (default: the demo's own)"
    )
    demo.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default: 0)")
    demo.add_argument("--quiet", action="store_true", help="print only the final verdict")
    demo.add_argument("--json", action="store_true", help="print only every arm's final layers and loss, as JSON")

    summary = command(
        "summary",
        run_summary,
        "per-layer table of the run's last metrics, states and transitions",
        "Print one row per MoE layer: last Neff / n_experts, Top2 share, dead and nearly dead experts, "
        "alert state, and the step of each alert transition. Exit code 0 when no layer is "
        "collapse_confirmed, 1 when any is (usable in scripts and CI of training jobs), 2 when corrupt lines "
        "of snapshots.jsonl were skipped (counted on stderr).",
    )
    summary.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="the run folder")
    _mode_option(summary)

    replay = command(
        "replay",
        run_replay,
        "re-run the alert logic over the recorded events with other rules or windows",
        "Rebuild snapshots and alert transitions from routing_events.jsonl, streaming (memory flat in the "
        "log's length, progress bar on large logs), and print what changed against the recorded alerts. "
        "By default it uses the recorded rules and the recorded snapshot windows (events with step in "
        "(previous snapshot step, snapshot step]), which reproduces the recording exactly.",
    )
    replay.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="the run folder")
    replay.add_argument(
        "--rules",
        type=Path,
        metavar="RULES.json",
        help="alert rules as JSON (keys of chronomoe.AlertRules; missing keys take the defaults; "
        "see `chronomoe schema AlertRules`). Default: the rules stored in run_manifest.json",
    )
    replay.add_argument(
        "--window",
        type=_positive_int,
        metavar="N",
        help="snapshot every N steps (windows ((k-1)N, kN], the last one partial) instead of at the recorded snapshots",
    )
    replay.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="write the replayed snapshots.jsonl, alerts.jsonl, run_manifest.json (and decisions.jsonl with "
        "--controller) to this new folder",
    )
    replay.add_argument(
        "--controller",
        choices=["pressure"],
        help="run this controller in dry run over the replayed snapshots and show what it would have decided, "
        "and when (judge a policy on past runs before enabling it)",
    )
    replay.add_argument(
        "--controller-config",
        type=Path,
        metavar="CONFIG.json",
        help="the controller's policy as JSON (fields of chronomoe.controller.PressureConfig; missing fields take "
        "the defaults)",
    )

    decisions = command(
        "decisions",
        run_decisions,
        "the controller's audit trail: decisions per layer, or one row per decision",
        "Summarise decisions.jsonl per layer (decisions, actions, how many changed the model, the first and "
        "last action, the largest pressure, the bias magnitude). With --all, --layer, --action or --last, also "
        "print one row per decision: step, layer, alert state, pressure, action, max |bias| after, applied, reason.",
    )
    decisions.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="the run folder")
    decisions.add_argument("--all", action="store_true", help="one row per decision")
    decisions.add_argument("--layer", type=int, metavar="L", help="only the decisions of layer L")
    decisions.add_argument("--action", metavar="ACTION", help="only decisions with this action (adjust, none, ...)")
    decisions.add_argument("--last", type=_positive_int, metavar="N", help="only the last N decisions shown")

    report = command(
        "report",
        run_report,
        "interactive HTML page and PNG figures of one or several runs",
        "Write report.html, one self-contained page that works offline (heatmaps of the alert state, Neff/n, "
        "Top2 and MaxVio per layer over the steps; each layer's expert loads; the loss with alert transitions "
        "and controller actions; the controller's pressure and bias from decisions.jsonl; tables), and PNG "
        "figures for papers (overview, experts, loss, controller; needs matplotlib: pip install "
        "'chronomoe[report]'). Several runs are aligned on their steps and compared in one table. Long runs "
        "are drawn in columns of several snapshots, as the page says. Progress bar on large runs.",
    )
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", type=Path, help="the run folder(s)")
    report.add_argument(
        "-o",
        "--output-dir",
        type=Path,
        metavar="DIR",
        help="where to write (default: RUN_DIR/report; with several runs FIRST_RUN_DIR/report-compare)",
    )
    _mode_option(report)
    report.add_argument(
        "--layers",
        type=_integers,
        metavar="L1,L2,...",
        help="layers of the experts figure (default: the 4 in the worst shape)",
    )
    report.add_argument(
        "--max-columns",
        type=_even_columns,
        default=512,
        metavar="N",
        help="most time columns of the heatmaps, an even number (default: 512); longer runs are drawn in "
        "columns of several snapshots",
    )
    report.add_argument("--no-figures", action="store_true", help="write report.html only (no matplotlib needed)")

    watch = command(
        "watch",
        run_watch,
        "follow a run folder while training writes it",
        "Follow RUN_DIR like tail -f: each layer's alert state, Neff/n and Top2 sparklines over the last "
        "snapshots, the latest transitions and controller decisions, refreshed as records arrive. Starts from "
        "the end of the files (however long the run), skips a torn last line until it is complete, ends on "
        "Ctrl-C (exit code 0). On a terminal it redraws one screen (needs rich: pip install 'chronomoe[watch]'); "
        "otherwise, or with --plain, it prints one line per snapshot and per transition.",
    )
    watch.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="the run folder")
    _mode_option(watch)
    watch.add_argument(
        "--interval", type=_positive_float, default=1.0, metavar="SECONDS", help="how often to look (default: 1)"
    )
    watch.add_argument(
        "--history", type=_positive_int, default=60, metavar="N", help="snapshots in the sparklines (default: 60)"
    )
    watch.add_argument("--plain", action="store_true", help="print lines instead of redrawing a screen")

    validate = command(
        "validate",
        run_validate,
        "check every record against the JSON Schemas in specs/",
        "Check each line of routing_events.jsonl, snapshots.jsonl, alerts.jsonl and decisions.jsonl against "
        "its record type's JSON Schema and model, that each sequence of records comes in step order with "
        "each step once, and the manifest's rules; list invalid lines with their numbers (the first 20 per "
        "file), a torn last line and the files readers need that are missing. Exit code 0 when valid, 1 on "
        "invalid or repeated records or when nothing is recorded.",
    )
    validate.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="the run folder")

    export = command(
        "export",
        run_export,
        "convert a run folder to the other storage (JSONL <-> Parquet)",
        "Write every record of RUN_DIR (events, snapshots, transitions, decisions, the manifest) into a new run "
        "folder in the other storage, each record validated and written once; RUN_DIR is not changed. Parquet "
        "needs pyarrow: pip install 'chronomoe[parquet]'.",
    )
    export.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="the run folder")
    export.add_argument("--to", choices=("parquet", "jsonl"), required=True, help="the storage to write")
    export.add_argument(
        "--out", type=Path, metavar="DIR", help="the new run folder (default: RUN_DIR-parquet or RUN_DIR-jsonl)"
    )

    schema = command(
        "schema",
        run_schema,
        "print the JSON Schemas of the records",
        "Print the JSON Schema of one record type, or of all as one JSON object keyed by type. Types: "
        "AlertRules, AlertTransition, ControlDecision, LensState, RoutingEvent, SystemSnapshot.",
    )
    schema.add_argument("name", nargs="?", type=_schema_name, metavar="NAME", help="record type (default: all)")

    from .importers.command import add_import_command

    add_import_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    try:
        status: int = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, rather than at exit
        return status
    except BrokenPipeError:
        return _reader_went_away()
    except (ChronoMoEError, OSError, ValueError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"chronomoe {args.command}: error: {message}", file=sys.stderr)
    except ImportError as error:
        print(f"chronomoe {args.command}: error: missing dependency: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"chronomoe {args.command}: interrupted", file=sys.stderr)
    return EXIT_ERROR


def command_line() -> str:
    """How to call this installation's ``chronomoe`` command from the current shell, for hints printed to users.

    ``chronomoe`` when that name on the PATH is this installation's; else the
    path of its script (relative to the working folder when under it, as
    ``.venv/bin/chronomoe``); else ``python -m chronomoe.cli``.
    """
    script = Path(sys.executable).parent / "chronomoe"  # not resolved: a virtualenv's python is a link
    if not script.is_file():
        return f"{Path(sys.executable).name} -m chronomoe.cli"
    on_path = shutil.which("chronomoe")
    if on_path is not None and Path(on_path).resolve() == script.resolve():
        return "chronomoe"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def _reader_went_away() -> int:
    """Exit as a Unix tool does when the reader of its output goes away (``chronomoe summary RUN | head -n 1``):
    no message, the status of a process ended by SIGPIPE (128 + 13), and nothing more written to the pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush at exit must not fail again
    os.close(devnull)
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
