"""A recorded run at its end, per layer: the data of ``chronomoe summary`` and its text table.

:func:`summarize_run` streams the snapshots (JSONL or Parquet) and keeps, per layer, the
last metrics, the current alert state and every transition.
:func:`summary_rows` turns that into text cells (also the HTML page's layer
table) and :func:`format_summary` into the aligned text ``chronomoe summary``
prints; :func:`summary_warnings` says what in the file could not be taken
as it stands (corrupt lines, steps recorded more than once).

A snapshot whose step is not above the previous one's was recorded by a
later recording of those steps (the folder of a reused run id, or of a
resume that recorded them again): it supersedes the snapshots at and after
its step, which are left out of the summary and counted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..alerts import AlertState, AlertTransition
from ..errors import CorruptRecordError, InvalidInputError
from ..io import SNAPSHOTS_FILE
from ..replay import iter_snapshots, require_run_dir
from ..snapshots import LayerSnapshot, SystemSnapshot


@dataclass
class LayerSummary:
    """One layer at the end of a run: its last data-holding metrics, its state, its transitions."""

    layer_id: int
    n_experts: int
    state: AlertState
    last: LayerSnapshot | None = None
    last_step: int | None = None
    transitions: list[AlertTransition] = field(default_factory=list)


@dataclass
class RunSummary:
    """A run's snapshots of one mode, reduced to one :class:`LayerSummary` per layer (by layer id)."""

    run_dir: Path
    run_id: str
    model_name: str
    mode: str
    snapshots: int
    first_step: int
    last_step: int
    layers: list[LayerSummary]
    corrupt_lines: list[CorruptRecordError] = field(default_factory=list)
    superseded_snapshots: int = 0
    superseded_steps: tuple[int, int] | None = None  # lowest and highest step recorded more than once

    @property
    def collapsed_layers(self) -> list[int]:
        return [layer.layer_id for layer in self.layers if layer.state is AlertState.COLLAPSE_CONFIRMED]

    @property
    def transitions(self) -> list[AlertTransition]:
        """Every transition of every layer, by step then layer."""
        return sorted(
            (transition for layer in self.layers for transition in layer.transitions),
            key=lambda t: (t.step, t.layer_id),
        )


def summarize_run(run_dir: str | os.PathLike[str], mode: str = "TRAIN") -> RunSummary:
    """Stream the run's snapshots (either storage) and summarise its ``mode`` snapshots per layer.

    Raises :class:`~chronomoe.errors.InvalidInputError` when the folder or the
    file is missing or holds no snapshot of ``mode``.
    """
    run_dir = require_run_dir(run_dir)
    layers: dict[int, LayerSummary] = {}
    steps: list[int] = []
    superseded: list[int] = []
    corrupt_lines: list[CorruptRecordError] = []
    last_snapshot: SystemSnapshot | None = None
    for snapshot in iter_snapshots(run_dir, mode, on_corrupt=corrupt_lines.append):
        if steps and steps[-1] >= snapshot.step:  # a later recording of these steps: it supersedes them
            while steps and steps[-1] >= snapshot.step:
                superseded.append(steps.pop())
            for summary in layers.values():
                summary.transitions = [t for t in summary.transitions if t.step < snapshot.step]
        steps.append(snapshot.step)
        last_snapshot = snapshot
        for layer in snapshot.layers:
            summary = layers.setdefault(
                layer.layer_id, LayerSummary(layer.layer_id, layer.n_experts, layer.alert_state)
            )
            summary.state = layer.alert_state
            if not layer.no_data:
                summary.last, summary.last_step, summary.n_experts = layer, snapshot.step, layer.n_experts
        for transition in snapshot.transitions:
            layers[transition.layer_id].transitions.append(transition)
    if last_snapshot is None:
        raise InvalidInputError("RUN_DIR", str(run_dir), f"holds no {mode} snapshots")
    return RunSummary(
        run_dir=run_dir,
        run_id=last_snapshot.run_id,
        model_name=last_snapshot.model_name,
        mode=mode,
        snapshots=len(steps),
        first_step=steps[0],
        last_step=last_snapshot.step,
        layers=[layers[layer_id] for layer_id in sorted(layers)],
        corrupt_lines=corrupt_lines,
        superseded_snapshots=len(superseded),
        superseded_steps=(min(superseded), max(superseded)) if superseded else None,
    )


def summary_warnings(summary: RunSummary) -> list[str]:
    """What the summary could not take from ``snapshots.jsonl`` as it stands, one line each (none: [])."""
    return record_warnings(summary.corrupt_lines, summary.superseded_steps, summary.superseded_snapshots, summary.mode)


def record_warnings(
    corrupt_lines: Sequence[CorruptRecordError],
    superseded_steps: tuple[int, int] | None,
    superseded_snapshots: int,
    mode: str,
) -> list[str]:
    """The warnings of a reader of ``snapshots.jsonl`` (summary, report) that skipped ``corrupt_lines`` and left
    out ``superseded_snapshots`` earlier recordings of the steps ``superseded_steps`` (lowest, highest)."""
    warnings = []
    if corrupt_lines:
        first = corrupt_lines[0]
        warnings.append(
            f"{SNAPSHOTS_FILE}: {len(corrupt_lines)} corrupt line(s) skipped (first: line "
            f"{first.line_number}: {first.reason}); the figures leave those snapshots out. "
            "`chronomoe validate RUN_DIR` lists them"
        )
    if superseded_steps is not None:
        low, high = superseded_steps
        warnings.append(
            f"{SNAPSHOTS_FILE}: steps {low}..{high} are recorded more than once (a reused run id, or a resume that "
            f"recorded them again); the last recording of each is shown, {superseded_snapshots} earlier "
            f"{mode} snapshot(s) left out. `chronomoe validate RUN_DIR` lists them"
        )
    return warnings


def summary_rows(summary: RunSummary) -> list[list[str]]:
    """The summary table as text cells, header first."""
    rows = [["layer", "Neff/n", "Top2", "dead", "nearly dead", "state", "transitions (step source->dest)"]]
    for layer in summary.layers:
        last = layer.last
        metrics = (
            ["no data", "-", "-", "-"]
            if last is None
            else [
                f"{last.n_effective:.2f}/{layer.n_experts}",
                f"{last.top2_share:.3f}",
                str(last.dead_expert_count),
                str(last.nearly_dead_count),
            ]
        )
        changes = ", ".join(f"{t.step} {t.source.value}->{t.dest.value}" for t in layer.transitions) or "-"
        rows.append([str(layer.layer_id), *metrics, layer.state.value, changes])
    return rows


def format_summary(summary: RunSummary) -> str:
    """The text ``chronomoe summary`` prints: a heading, the aligned table, the verdict."""
    rows = summary_rows(summary)
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    lines = [
        f"run {summary.run_id}"
        + (f" ({summary.model_name})" if summary.model_name else "")
        + f": {summary.snapshots} {summary.mode} snapshots, steps {summary.first_step}..{summary.last_step}",
        "",
    ]
    for row in rows:
        cells = [
            cell.rjust(width) if column < 5 else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=False))  # the last column is not padded
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    collapsed = summary.collapsed_layers
    lines.append("")
    lines.append(
        f"collapse_confirmed: layer{'s' if len(collapsed) > 1 else ''} {', '.join(map(str, collapsed))}"
        if collapsed
        else "no layer is collapse_confirmed"
    )
    return "\n".join(lines)
