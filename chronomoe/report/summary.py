"""A recorded run at its end, per layer: the data of ``chronomoe summary`` and its text table.

:func:`summarize_run` streams the snapshots (JSONL or Parquet) and keeps, per layer, the
last metrics, the current alert state and every transition.
:func:`summary_rows` turns that into text cells (also the HTML page's layer
table) and :func:`format_summary` into the aligned text ``chronomoe summary``
prints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..alerts import AlertState, AlertTransition
from ..errors import InvalidInputError
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
    count, first_step = 0, 0
    last_snapshot: SystemSnapshot | None = None
    for snapshot in iter_snapshots(run_dir, mode):
        if last_snapshot is None:
            first_step = snapshot.step
        count += 1
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
        snapshots=count,
        first_step=first_step,
        last_step=last_snapshot.step,
        layers=[layers[layer_id] for layer_id in sorted(layers)],
    )


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
