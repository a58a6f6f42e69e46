"""The ``chronomoe`` argument parser: one subparser per subcommand of :mod:`.commands`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from .commands import (
    run_decisions,
    run_demo_command,
    run_export,
    run_replay,
    run_report,
    run_schema,
    run_summary,
    run_validate,
    run_watch,
)
from .options import (
    OneLineErrorParser,
    even_columns,
    layer_ids,
    mode_option,
    positive_float,
    positive_int,
    schema_name,
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="chronomoe",
        description="Routing-topology telemetry for Mixture-of-Experts training: inspect, replay, "
        "report and validate recorded runs.",
        epilog="RUN_DIR is a run folder written by chronomoe.Monitor or TelemetryWriter "
        "(routing_events.jsonl, snapshots.jsonl, alerts.jsonl, run_manifest.json). "
        "Exit codes: 0 success; 1 a collapsed layer (summary) or invalid records (validate); "
        "2 an error (missing run folder or file, no events, bad rules file, bad arguments) or corrupt lines "
        "skipped (summary, report).",
    )
    from .._version import __version__

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
        "--steps", type=positive_int, default=None, metavar="N", help="training steps (default: the demo's own)"
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
    mode_option(summary)

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
        type=positive_int,
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
    decisions.add_argument("--last", type=positive_int, metavar="N", help="only the last N decisions shown")

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
    mode_option(report)
    report.add_argument(
        "--layers",
        type=layer_ids,
        metavar="L1,L2,...",
        help="layers of the experts figure (default: the 4 in the worst shape)",
    )
    report.add_argument(
        "--max-columns",
        type=even_columns,
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
    mode_option(watch)
    watch.add_argument(
        "--interval", type=positive_float, default=1.0, metavar="SECONDS", help="how often to look (default: 1)"
    )
    watch.add_argument(
        "--history", type=positive_int, default=60, metavar="N", help="snapshots in the sparklines (default: 60)"
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
    schema.add_argument("name", nargs="?", type=schema_name, metavar="NAME", help="record type (default: all)")

    from ..importers.command import add_import_command

    add_import_command(commands)
    return parser
