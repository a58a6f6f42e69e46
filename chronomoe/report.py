"""Reading a recorded run: the per-layer summary table and the visual report.

:func:`summarize_run` streams ``snapshots.jsonl`` and keeps, per layer, the
last metrics, the current alert state and every transition (what
``chronomoe summary`` prints). :func:`write_report` draws PNG figures with
matplotlib (the optional extra ``chronomoe[report]``, imported only there) and
one self-contained HTML page that embeds them with the transitions table
(``chronomoe report``).
"""

from __future__ import annotations

import base64
import html
import importlib.util
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from .alerts import AlertRules, AlertState, AlertTransition
from .errors import InvalidInputError
from .io import MANIFEST_FILE, SNAPSHOTS_FILE, load_manifest
from .replay import iter_snapshots, recorded_rules, require_file, require_run_dir
from .snapshots import LayerSnapshot

STATE_COLORS = {
    AlertState.NOMINAL: "#d9ead3",
    AlertState.PRE_COLLAPSE: "#f6b26b",
    AlertState.COLLAPSE_CONFIRMED: "#cc4125",
}
NO_DATA_COLOR = "#e0e0e0"
DEFAULT_HEATMAP_STEPS = 4
"""Snapshots shown in the share heatmaps when no steps are chosen: evenly spaced, first and last included."""


# -- summary -------------------------------------------------------------------------
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


def summarize_run(run_dir: str | os.PathLike, mode: str = "TRAIN") -> RunSummary:
    """Stream ``snapshots.jsonl`` and summarise its ``mode`` snapshots per layer.

    Raises :class:`~chronomoe.errors.InvalidInputError` when the folder or the
    file is missing or holds no snapshot of ``mode``.
    """
    run_dir = require_run_dir(run_dir)
    require_file(run_dir, SNAPSHOTS_FILE)
    layers: dict[int, LayerSummary] = {}
    count, first, last_snapshot = 0, None, None
    for snapshot in iter_snapshots(run_dir, mode):
        count += 1
        first = snapshot.step if first is None else first
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
        raise InvalidInputError("RUN_DIR", str(run_dir), f"holds no {mode} snapshots in {SNAPSHOTS_FILE}")
    return RunSummary(
        run_dir=run_dir,
        run_id=last_snapshot.run_id,
        model_name=last_snapshot.model_name,
        mode=mode,
        snapshots=count,
        first_step=first,
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
            for column, (cell, width) in enumerate(zip(row, widths))
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


# -- series for the figures ----------------------------------------------------------
@dataclass
class LayerSeries:
    """One layer's metrics over the run's snapshots (NaN where ``no_data``); arrays ``[n_snapshots]``."""

    layer_id: int
    n_experts: int
    n_effective: np.ndarray
    top2_share: np.ndarray
    states: list[AlertState | None]  # None where no_data


@dataclass
class RunSeries:
    """All layers of one mode over time; ``steps`` ``[n_snapshots]``."""

    steps: np.ndarray
    layers: list[LayerSeries]


class _LayerPoint(NamedTuple):
    """The scalars of one layer at one snapshot that the figures plot (metrics NaN where no data)."""

    n_experts: int
    n_effective: float
    top2_share: float
    state: AlertState | None  # None where no_data


def collect_series(run_dir: Path, mode: str) -> RunSeries:
    """Stream the snapshots of ``mode`` into per-layer arrays (a layer missing from a snapshot is no data)."""
    steps: list[int] = []
    points: dict[int, dict[int, _LayerPoint]] = {}
    for position, snapshot in enumerate(iter_snapshots(run_dir, mode)):
        steps.append(snapshot.step)
        for layer in snapshot.layers:
            points.setdefault(layer.layer_id, {})[position] = _LayerPoint(
                layer.n_experts,
                math.nan if layer.no_data else layer.n_effective,
                math.nan if layer.no_data else layer.top2_share,
                None if layer.no_data else layer.alert_state,
            )
    missing = _LayerPoint(0, math.nan, math.nan, None)
    layers = []
    for layer_id in sorted(points):
        series = [points[layer_id].get(position, missing) for position in range(len(steps))]
        with_data = [point for point in series if point.state is not None]
        layers.append(
            LayerSeries(
                layer_id=layer_id,
                n_experts=with_data[-1].n_experts if with_data else max(p.n_experts for p in series),
                n_effective=np.array([point.n_effective for point in series]),
                top2_share=np.array([point.top2_share for point in series]),
                states=[point.state for point in series],
            )
        )
    return RunSeries(np.array(steps, dtype=np.int64), layers)


def shares_at(run_dir: Path, mode: str, steps: Sequence[int]) -> dict[int, np.ndarray]:
    """Share matrices ``[n_layers, max_experts]`` (NaN padding) at the snapshots of ``steps``."""
    wanted = set(steps)
    matrices = {}
    for snapshot in iter_snapshots(run_dir, mode):
        if snapshot.step in wanted:
            width = max(layer.n_experts for layer in snapshot.layers)
            matrix = np.full((max(layer.layer_id for layer in snapshot.layers) + 1, width), np.nan)
            for layer in snapshot.layers:
                if not layer.no_data:
                    matrix[layer.layer_id, : layer.n_experts] = layer.utilization_shares
            matrices[snapshot.step] = matrix
    return matrices


def heatmap_steps(steps: np.ndarray, chosen: Sequence[int] | None) -> list[int]:
    """Snapshot steps for the share heatmaps: the snapshot at or just after each chosen step, else evenly spaced."""
    if chosen:
        positions = np.searchsorted(steps, np.asarray(chosen), side="left").clip(0, len(steps) - 1)
    else:
        positions = np.linspace(0, len(steps) - 1, min(DEFAULT_HEATMAP_STEPS, len(steps))).round().astype(int)
    return sorted({int(steps[position]) for position in positions})


# -- figures ------------------------------------------------------------------------------
def _window_edges(steps: np.ndarray) -> np.ndarray:
    """Edges ``[n + 1]`` of the windows ``(previous step, step]``; the first window is as wide as the second."""
    first_width = steps[1] - steps[0] if len(steps) > 1 else 1
    return np.concatenate([[steps[0] - first_width], steps]).astype(float)


def _shade_states(axes, edges: np.ndarray, states: list[AlertState | None]) -> None:
    for position, state in enumerate(states):
        if state in (AlertState.PRE_COLLAPSE, AlertState.COLLAPSE_CONFIRMED):
            axes.axvspan(edges[position], edges[position + 1], color=STATE_COLORS[state], alpha=0.45, lw=0)


def _state_legend_handles():
    from matplotlib.patches import Patch

    return [
        Patch(color=STATE_COLORS[AlertState.PRE_COLLAPSE], alpha=0.45, label="pre_collapse"),
        Patch(color=STATE_COLORS[AlertState.COLLAPSE_CONFIRMED], alpha=0.45, label="collapse_confirmed"),
    ]


def plot_neff(series: RunSeries, rules: AlertRules, path: Path) -> Path:
    """Neff per layer over steps (one panel per layer), alert states shaded, PRE_COLLAPSE threshold dashed."""
    from matplotlib.figure import Figure

    columns = min(4, len(series.layers))
    rows = math.ceil(len(series.layers) / columns)
    figure = Figure(figsize=(3.6 * columns, 2.4 * rows + 0.6), layout="constrained")
    panels = figure.subplots(rows, columns, squeeze=False, sharex=True)
    edges = _window_edges(series.steps)
    for axes, layer in zip(panels.flat, series.layers):
        _shade_states(axes, edges, layer.states)
        axes.plot(
            series.steps, layer.n_effective, color="#1f4e79", lw=1.6, marker="." if len(series.steps) < 60 else None
        )
        axes.axhline(rules.neff_ratio * layer.n_experts, color="#7f7f7f", ls="--", lw=1)
        axes.set_ylim(0, layer.n_experts * 1.05)
        axes.set_xlim(edges[0], edges[-1])
        axes.set_title(f"layer {layer.layer_id} ({layer.n_experts} experts)", fontsize=10)
        axes.grid(alpha=0.3)
    for axes in panels.flat[len(series.layers) :]:
        axes.set_visible(False)
    for axes in panels[:, 0]:
        axes.set_ylabel("Neff")
    for axes in panels[-1, :]:
        axes.set_xlabel("step")
    from matplotlib.lines import Line2D

    figure.legend(
        handles=[
            *_state_legend_handles(),
            Line2D([], [], color="#7f7f7f", ls="--", label=f"PRE_COLLAPSE: Neff < {rules.neff_ratio:g} x n"),
        ],
        loc="outside upper center",
        ncols=3,
        frameon=False,
    )
    figure.savefig(path, dpi=110)
    return path


def plot_top2(series: RunSeries, rules: AlertRules, path: Path) -> Path:
    """Top2 share of every layer over steps, with the PRE_COLLAPSE and COLLAPSE_CONFIRMED thresholds."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.2), layout="constrained")
    axes = figure.subplots()
    many = len(series.layers) > 10
    colormap = colormaps["viridis"] if many else colormaps["tab10"]
    ids = [layer.layer_id for layer in series.layers]
    norm = Normalize(min(ids), max(max(ids), min(ids) + 1))
    for index, layer in enumerate(series.layers):
        color = colormap(norm(layer.layer_id)) if many else colormap(index % 10)
        axes.plot(series.steps, layer.top2_share, color=color, lw=1.5, label=f"layer {layer.layer_id}")
    axes.axhline(rules.pre_top2, color="#e69138", ls="--", lw=1, label=f"PRE_COLLAPSE Top2 > {rules.pre_top2:g}")
    axes.axhline(
        rules.confirm_top2, color="#cc4125", ls="--", lw=1, label=f"COLLAPSE_CONFIRMED Top2 > {rules.confirm_top2:g}"
    )
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("step")
    axes.set_ylabel("Top2 share")
    axes.set_title("Top2 share per layer")
    axes.grid(alpha=0.3)
    if many:
        figure.colorbar(ScalarMappable(norm, colormap), ax=axes, label="layer")
        axes.legend(handles=axes.get_lines()[-2:], loc="lower right", fontsize=8)
    else:
        axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    figure.savefig(path, dpi=110)
    return path


def plot_shares(matrices: dict[int, np.ndarray], path: Path) -> Path:
    """Layer x expert heatmaps of utilisation shares at the chosen steps (grey: padding or no data)."""
    from matplotlib import colormaps
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure

    steps = sorted(matrices)
    n_layers, width = max(m.shape[0] for m in matrices.values()), max(m.shape[1] for m in matrices.values())
    panel_width = min(4.5, 1.2 + 0.22 * width)
    figure = Figure(figsize=(panel_width * len(steps) + 1.2, 1.4 + 0.28 * n_layers + 0.6), layout="constrained")
    panels = figure.subplots(1, len(steps), squeeze=False, sharey=True)[0]
    colormap = colormaps["magma"].with_extremes(bad=NO_DATA_COLOR)
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
    image = None
    for axes, step in zip(panels, steps):
        matrix = np.full((n_layers, width), np.nan)
        source = matrices[step]
        matrix[: source.shape[0], : source.shape[1]] = source
        image = axes.imshow(
            np.ma.masked_invalid(matrix), cmap=colormap, norm=norm, aspect="auto", interpolation="nearest"
        )
        axes.set_title(f"step {step}", fontsize=10)
        axes.set_xlabel("expert")
        axes.set_yticks(range(n_layers) if n_layers <= 24 else range(0, n_layers, max(1, n_layers // 12)))
        if width <= 32:
            axes.set_xticks(range(width))
            axes.tick_params(axis="x", labelsize=7)
    panels[0].set_ylabel("layer")
    figure.colorbar(image, ax=list(panels), label="share of the window's tokens (sqrt scale)")
    figure.suptitle("Expert utilisation shares")
    figure.savefig(path, dpi=110)
    return path


def plot_states(series: RunSeries, path: Path) -> Path:
    """Alert state of every layer (rows) over the snapshot windows (columns)."""
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    order = [None, AlertState.NOMINAL, AlertState.PRE_COLLAPSE, AlertState.COLLAPSE_CONFIRMED]
    codes = np.array([[order.index(state) for state in layer.states] for layer in series.layers])
    colors = [NO_DATA_COLOR, *(STATE_COLORS[state] for state in order[1:])]
    n_layers = len(series.layers)
    figure = Figure(figsize=(8, 1.6 + 0.25 * n_layers), layout="constrained")
    axes = figure.subplots()
    ids = [layer.layer_id for layer in series.layers]
    axes.pcolormesh(
        _window_edges(series.steps),
        np.arange(n_layers + 1) - 0.5,
        codes,
        cmap=ListedColormap(colors),
        norm=BoundaryNorm(np.arange(len(order) + 1) - 0.5, len(order)),
    )
    ticks = range(n_layers) if n_layers <= 24 else range(0, n_layers, max(1, n_layers // 12))
    axes.set_yticks(list(ticks), [str(ids[i]) for i in ticks])
    axes.invert_yaxis()
    axes.set_xlabel("step")
    axes.set_ylabel("layer")
    axes.set_title("Alert state per layer")
    labels = ["no data", "nominal", "pre_collapse", "collapse_confirmed"]
    axes.legend(
        handles=[Patch(color=color, label=label) for color, label in zip(colors, labels)],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.25 if n_layers < 6 else -0.12),
        ncols=4,
        frameon=False,
        fontsize=8,
    )
    figure.savefig(path, dpi=110)
    return path


# -- the report ------------------------------------------------------------------------------
def write_report(
    run_dir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    mode: str = "TRAIN",
    steps: Sequence[int] | None = None,
) -> list[Path]:
    """Write the figures and ``report.html`` into ``output_dir`` (default ``RUN_DIR/report``).

    Figures: ``neff.png``, ``top2.png``, ``shares.png`` (heatmaps at the
    snapshots at or after ``steps``; default evenly spaced), ``states.png``.
    Returns the written paths, the HTML page last. Needs matplotlib
    (``pip install 'chronomoe[report]'``).
    """
    if importlib.util.find_spec("matplotlib") is None:
        raise InvalidInputError("report", "matplotlib", "is not installed: pip install 'chronomoe[report]'")
    summary = summarize_run(run_dir, mode)
    run_dir = summary.run_dir
    output = Path(output_dir) if output_dir is not None else run_dir / "report"
    output.mkdir(parents=True, exist_ok=True)
    rules = recorded_rules(run_dir) or AlertRules.default()
    series = collect_series(run_dir, mode)
    figures = [
        plot_neff(series, rules, output / "neff.png"),
        plot_top2(series, rules, output / "top2.png"),
        plot_shares(shares_at(run_dir, mode, heatmap_steps(series.steps, steps)), output / "shares.png"),
        plot_states(series, output / "states.png"),
    ]
    page = output / "report.html"
    page.write_text(report_html(summary, rules, figures, run_dir))
    return [*figures, page]


FIGURE_CAPTIONS = {
    "states.png": "Alert state of each layer per snapshot window.",
    "neff.png": "Effective number of experts per layer; shaded windows are in an alert state, "
    "the dashed line is the PRE_COLLAPSE threshold.",
    "top2.png": "Share of the two busiest experts per layer, with the alert thresholds.",
    "shares.png": "Share of each expert's tokens per layer at chosen snapshots (grey: no data or no such expert).",
}


def report_html(summary: RunSummary, rules: AlertRules, figures: Sequence[Path], run_dir: Path) -> str:
    """A self-contained HTML page: run facts, summary table, figures (base64 PNG), transitions table."""
    escape = html.escape
    manifest = load_manifest(run_dir) if (run_dir / MANIFEST_FILE).is_file() else {}
    facts = [
        ("run", summary.run_id),
        ("model", summary.model_name or "-"),
        ("mode", summary.mode),
        ("snapshots", f"{summary.snapshots} (steps {summary.first_step}..{summary.last_step})"),
        ("git commit", manifest.get("git_commit", "-")),
        ("chronomoe", manifest.get("chronomoe_version", "-")),
        ("rules", ", ".join(f"{name}={value}" for name, value in rules.model_dump().items())),
    ]
    rows = summary_rows(summary)
    summary_table = _table(rows[0], rows[1:], state_column=5)
    transition_rows = [
        [
            str(t.step),
            str(t.layer_id),
            t.source.value,
            t.dest.value,
            t.trigger,
            _number(t.metrics.get("n_effective"), 2),
            _number(t.metrics.get("top2_share"), 3),
            str(t.metrics.get("dead_expert_count", "-")),
        ]
        for t in summary.transitions
    ]
    transitions_table = (
        _table(["step", "layer", "from", "to", "trigger", "Neff", "Top2", "dead"], transition_rows, state_column=3)
        if transition_rows
        else "<p>No transitions: every layer stayed nominal.</p>"
    )
    images = "\n".join(
        f'<figure><img alt="{escape(path.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}"><figcaption>{escape(FIGURE_CAPTIONS[path.name])}'
        "</figcaption></figure>"
        for path in sorted(figures, key=lambda p: list(FIGURE_CAPTIONS).index(p.name))
    )
    collapsed = summary.collapsed_layers
    verdict = (
        f'<p class="verdict bad">collapse_confirmed: layer{"s" if len(collapsed) > 1 else ""} '
        f"{escape(', '.join(map(str, collapsed)))}</p>"
        if collapsed
        else '<p class="verdict ok">No layer is collapse_confirmed.</p>'
    )
    state_styles = "\n".join(
        f"td.state-{state.value} {{ background: {color}; }}" for state, color in STATE_COLORS.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ChronoMoE report: {escape(summary.run_id)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }}
th {{ background: #f3f3f3; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: 0.2rem 1rem; }}
dt {{ font-weight: 600; }}
figure {{ margin: 1rem 0 2rem; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
.verdict {{ font-weight: 600; padding: 0.4rem 0.8rem; display: inline-block; }}
.verdict.bad {{ background: #f4cccc; }}
.verdict.ok {{ background: #d9ead3; }}
{state_styles}
</style>
</head>
<body>
<h1>ChronoMoE report: {escape(summary.run_id)}</h1>
<dl>
{"".join(f"<dt>{escape(name)}</dt><dd>{escape(str(value))}</dd>" for name, value in facts)}
</dl>
{verdict}
<h2>Layers at the end of the run</h2>
{summary_table}
<h2>Figures</h2>
{images}
<h2>Alert transitions</h2>
{transitions_table}
</body>
</html>
"""


def _number(value: float | int | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], state_column: int) -> str:
    """An HTML table; cells of ``state_column`` get the class ``state-<value>`` (coloured by state)."""
    escape = html.escape
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = "\n".join(
        "<tr>"
        + "".join(
            f'<td class="state-{escape(cell)}">{escape(cell)}</td>'
            if column == state_column
            else f"<td>{escape(cell)}</td>"
            for column, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
