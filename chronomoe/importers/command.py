"""``chronomoe import FORMAT ...``: the importers' subcommand of the ``chronomoe`` command."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError


def add_import_command(commands: Any) -> None:
    """Add ``import`` (with its formats: ``megatron``) to the ``chronomoe`` command's subparsers."""
    from ..cli.options import positive_int

    formats = commands.add_parser(
        "import",
        help="turn a training framework's own routing dumps into a run folder",
        description="Write a ChronoMoE run folder (events, snapshots through the alert machines, manifest) from "
        "routing a framework recorded itself, so summary, replay, report and validate work on it.",
    )
    formats.set_defaults(handler=_missing_format)
    megatron = formats.add_subparsers(dest="format", metavar="FORMAT").add_parser(
        "megatron",
        help="Megatron's tokens_per_expert/rank*.jsonl (--save-tokens-per-expert-interval)",
        description="Sum each iteration's microbatches and ranks per layer and write one snapshot per dumped "
        "iteration. Lines that cannot be counted are skipped and reported by reason with file and line. "
        "Pipeline-parallel dumps: import one stage's rank files at a time (stages number their layers from 0).",
    )
    megatron.set_defaults(handler=run_import_megatron)
    megatron.add_argument(
        "source", metavar="DIR", type=Path, help="Megatron's --save folder, or its tokens_per_expert folder"
    )
    megatron.add_argument("--run-id", metavar="ID", help="run folder name (default: megatron-<DIR's name>)")
    megatron.add_argument(
        "--output-dir", type=Path, default=Path("runs"), metavar="DIR", help="parent of the run folder (default: runs)"
    )
    for option, flag in (("--expert-parallel", "--expert-model-parallel-size"), ("--expert-tensor-parallel", None)):
        megatron.add_argument(
            option,
            type=positive_int,
            default=1,
            metavar="N",
            help=f"Megatron's {flag or '--expert-tensor-parallel-size'} (default 1)",
        )
    megatron.add_argument(
        "--top-k",
        type=positive_int,
        default=1,
        metavar="K",
        help="--moe-router-topk, stored in the events (default 1)",
    )
    megatron.add_argument("--rules", type=Path, metavar="RULES.json", help="alert rules (default: the defaults)")


def run_import_megatron(args: argparse.Namespace) -> int:
    """``chronomoe import megatron``: import, then print what was imported and what was skipped."""
    from ..alerts import AlertRules
    from ..cli.options import EXIT_OK, output_option
    from ..progress import progress_bar, show_progress
    from .megatron import MegatronLayout, import_megatron, rank_files

    layout = MegatronLayout(
        expert_parallel=args.expert_parallel, expert_tensor_parallel=args.expert_tensor_parallel, top_k=args.top_k
    )
    rules = AlertRules.from_file(args.rules) if args.rules is not None else None
    run_id = args.run_id or f"megatron-{args.source.resolve().name}"
    total = sum(path.stat().st_size for path in rank_files(args.source))
    with (
        output_option("--output-dir", args.output_dir),
        progress_bar(total, unit="B", description="import", enabled=show_progress(total)) as bar,
    ):
        result = import_megatron(args.source, args.output_dir, run_id, layout=layout, rules=rules, progress=bar.update)
    steps = f"steps {result.iterations[0]}..{result.iterations[-1]}" if result.iterations else "no step"
    print(
        f"imported {result.lines} lines of {len(result.rank_files)} rank files: {len(result.iterations)} "
        f"snapshots ({steps}), {len(result.n_experts)} layers"
    )
    print("layers: " + ", ".join(f"{name} -> {layer_id}" for name, layer_id in result.layer_ids.items()))
    for reason, count in sorted(result.skipped.items()):
        print(f"skipped {count} lines: {reason}")
    for example in result.examples:
        print(f"  {example}")
    if result.collapsed_layers:
        print(f"collapse_confirmed at the last snapshot: layers {', '.join(map(str, result.collapsed_layers))}")
    print(f"wrote {result.run_dir}")
    return EXIT_OK


def _missing_format(args: argparse.Namespace) -> int:
    raise InvalidInputError("FORMAT", None, "name the format to import: chronomoe import megatron DIR")
