"""The report's HTML page: one self-contained file (inline CSS, script and data; no network, no CDN).

Sections, in order: the runs (facts, verdicts, and the comparison table when
there are several), the layers over time (alert state, Neff/n, Top2 and
MaxVio heatmaps, layer x step), the selected layer (expert x step loads, its
Neff/n, Top2 and controller lines), the loss with alert transitions and
controller actions on the same step axis, the controller's pressure and bias
heatmaps, and the tables (layers at the end, every transition).

Tables and captions are HTML written here; the figures are drawn in the
browser by ``assets/report.js`` from the data of
:func:`~chronomoe.report.payload.run_payload`. Every element the script must
draw carries a ``data-panel`` attribute (what the browser check inspects).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np
import orjson

from .. import __version__
from ..alerts import AlertState
from .compare import comparison_rows
from .palette import (
    ACTION_COLORS,
    DEAD_EXPERT_COLOR,
    LOAD_STOPS,
    MUTED_TEXT_COLOR,
    NO_DATA_COLOR,
    NO_DATA_TEXT_COLOR,
    STATE_COLORS,
    STATE_TEXT_COLORS,
    TRANSITION_COLORS,
    VIRIDIS_STOPS,
)
from .payload import MAX_EXPERT_CELLS, run_payload
from .rows import NO_DATA, STATE_CODES, STATES_BY_CODE
from .rundata import RunColumns, RunData, at_end

escape = html.escape
OPEN_TABLE_ROWS = 30
"""Tables longer than this start folded."""


def _asset(name: str) -> str:
    return (resources.files("chronomoe.report") / "assets" / name).read_text(encoding="utf-8")


def initial_layer(runs: Sequence[RunData]) -> int:
    """The layer the page opens on: most snapshots collapse_confirmed, then pre_collapse, then lowest Neff/n."""
    best: tuple[int, int, float, int] | None = None
    for run in runs:
        collapsed = (run.states == STATE_CODES[AlertState.COLLAPSE_CONFIRMED]).sum(axis=0)
        warned = (run.states == STATE_CODES[AlertState.PRE_COLLAPSE]).sum(axis=0)
        with np.errstate(invalid="ignore"):
            diversity = np.fmin.reduce(run.n_effective / run.n_experts[None, :], axis=0)
        for row, layer_id in enumerate(run.layer_ids.tolist()):
            lowest = float(diversity[row]) if not np.isnan(diversity[row]) else 1.0
            score = (int(collapsed[row]), int(warned[row]), -lowest, -layer_id)
            if best is None or score > best:
                best = score
    return 0 if best is None else -best[3]


def _state_cell(code: int) -> str:
    if code == NO_DATA:
        return f'<td style="background:{NO_DATA_COLOR};color:{NO_DATA_TEXT_COLOR}">no data</td>'
    state = STATES_BY_CODE[code]
    return f'<td style="background:{STATE_COLORS[state]};color:{STATE_TEXT_COLORS[state]}">{state.value}</td>'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], summary: str) -> str:
    """A table of escaped text cells (a cell starting with ``<td`` is used as it is), folded when long."""
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = "\n".join(
        "<tr>" + "".join(cell if cell.startswith("<td") else f"<td>{escape(cell)}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    table = f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    opened = " open" if len(rows) <= OPEN_TABLE_ROWS else ""
    return f"<details{opened}><summary>{escape(summary)}</summary>\n{table}\n</details>"


def _layer_table(run: RunData) -> str:
    diversity = at_end(run.n_effective / run.n_experts[None, :])
    top2, max_vio = at_end(run.top2_share), at_end(run.max_vio)
    dead = at_end(np.where(run.states < 0, np.nan, run.dead_experts.astype(np.float64)))
    states = at_end(np.where(run.states < 0, np.nan, run.states.astype(np.float64)))
    changes: dict[int, list[str]] = {}
    for transition in run.transitions:
        changes.setdefault(transition.layer_id, []).append(f"{transition.step} {transition.dest.value}")
    rows = []
    for row, layer_id in enumerate(run.layer_ids.tolist()):
        known, n_experts = not np.isnan(diversity[row]), int(run.n_experts[row])
        layer_changes = changes.get(layer_id, [])
        rows.append(
            [
                str(layer_id),
                f"{diversity[row]:.3f} ({diversity[row] * n_experts:.2f}/{n_experts})" if known else "-",
                f"{top2[row]:.3f}" if known else "-",
                f"{max_vio[row]:.2f}" if known and not np.isnan(max_vio[row]) else "-",
                f"{int(dead[row])}" if known else "-",
                _state_cell(NO_DATA if np.isnan(states[row]) else int(states[row])),
                f"{len(layer_changes)}: " + ", ".join(layer_changes[-4:]) if layer_changes else "0",
            ]
        )
    header = ["layer", "Neff/n (Neff)", "Top2", "MaxVio", "dead", "state", "transitions (last 4: step to)"]
    return _table(header, rows, f"{run.run_id}: layers at their last snapshot with data ({len(rows)})")


def _transitions_table(run: RunData) -> str:
    if not run.transitions:
        return f"<p>{escape(run.run_id)}: no alert transition; every layer stayed nominal.</p>"
    rows = [
        [
            str(t.step),
            str(t.layer_id),
            _state_cell(STATE_CODES[t.source]),
            _state_cell(STATE_CODES[t.dest]),
            t.trigger,
            "-" if t.metrics.get("n_effective") is None else f"{t.metrics['n_effective']:.2f}",
            "-" if t.metrics.get("top2_share") is None else f"{t.metrics['top2_share']:.3f}",
            str(t.metrics.get("dead_expert_count", "-")),
        ]
        for t in run.transitions
    ]
    header = ["step", "layer", "from", "to", "trigger", "Neff", "Top2", "dead"]
    return _table(header, rows, f"{run.run_id}: alert transitions ({len(rows)})")


def _verdict(run: RunData) -> str:
    states = at_end(np.where(run.states < 0, np.nan, run.states.astype(np.float64)))
    for state in (AlertState.COLLAPSE_CONFIRMED, AlertState.PRE_COLLAPSE):
        layers = run.layer_ids[states == STATE_CODES[state]].tolist()
        if layers:
            style = f"background:{STATE_COLORS[state]};color:{STATE_TEXT_COLORS[state]}"
            listed = ", ".join(map(str, layers[:12])) + (f" and {len(layers) - 12} more" if len(layers) > 12 else "")
            plural = "s" if len(layers) > 1 else ""
            return f'<span class="verdict" style="{style}">{state.value} at the end: layer{plural} {listed}</span>'
    style = f"background:{STATE_COLORS[AlertState.NOMINAL]};color:{STATE_TEXT_COLORS[AlertState.NOMINAL]}"
    return f'<span class="verdict" style="{style}">every layer nominal at the end</span>'


def _columns_note(run: RunData, columns: RunColumns, expert_width: int) -> str:
    if columns.width == 1 and expert_width == 1:
        return f"{run.n_snapshots:,} snapshots, one column each."
    return (
        f"{run.n_snapshots:,} snapshots drawn in {len(columns.first_step):,} columns of {columns.width} snapshots: "
        "each cell shows the worst of its snapshots (lowest Neff/n, highest Top2 and MaxVio, most severe state, "
        "highest pressure; |bias| at the column's end); expert loads are the tokens summed over "
        f"{expert_width} snapshots per column."
    )


def _run_card(run: RunData, label: str, color: str, note: str) -> str:
    facts = [
        ("run", run.run_id),
        ("folder", str(run.run_dir)),
        ("model", run.model_name or "-"),
        ("mode", run.mode),
        ("steps", f"{run.steps[0]}..{run.steps[-1]}"),
        ("layers x experts", f"{len(run.layer_ids)} x {int(run.n_experts.max())}"),
        ("git commit", str(run.manifest.get("git_commit", "-"))),
    ]
    rows = "".join(f"<div><span class='muted'>{escape(name)}:</span> {escape(value)}</div>" for name, value in facts)
    return (
        f'<div class="run-card" style="--run-color:{color}"><div class="name"><span class="swatch" '
        f'style="background:{color}"></span> {escape(label)}</div>{rows}<div>{_verdict(run)}</div>'
        f'<p class="note">{escape(note)}</p></div>'
    )


def _gradient(stops: Sequence[str], reverse: bool = False) -> str:
    ordered = list(reversed(stops)) if reverse else list(stops)
    return f'<span class="bar" style="background:linear-gradient(to right,{",".join(ordered)})"></span>'


def _legends(max_vio_top: int, load_range: float) -> dict[str, str]:
    swatch = '<span><span class="swatch" style="background:{}"></span> {}</span>'
    states = [swatch.format(STATE_COLORS[state], state.value) for state in AlertState]
    return {
        "states": " ".join([*states, swatch.format(NO_DATA_COLOR, "no data")]),
        "diversity": f"0 (one expert takes all) {_gradient(VIRIDIS_STOPS, reverse=True)} 1 (balanced)",
        "top2": f"0 {_gradient(VIRIDIS_STOPS)} 1 (two experts take all)",
        "maxVio": f"0 (balanced) {_gradient(VIRIDIS_STOPS)} n-1 (one expert takes all; log scale, n={max_vio_top})",
        "loads": swatch.format(DEAD_EXPERT_COLOR, "dead (no token)")
        + f" 1/{2**load_range:g} {_gradient(LOAD_STOPS)} {2**load_range:g}x the balanced load (log scale)",
        "controller": f"0 {_gradient(VIRIDIS_STOPS)} 1 (pressure) or the run's largest |bias|",
        "marks": "transitions to: "
        + " ".join(swatch.format(TRANSITION_COLORS[state], state.value) for state in AlertState)
        + " &nbsp; actions: "
        + " ".join(swatch.format(color, name) for name, color in ACTION_COLORS.items()),
    }


OVERVIEW_METRICS = (
    ("states", "Alert state", "Per layer and snapshot window; the state is the verdict on the window that ends there."),
    ("diversity", "Neff / n", "Effective number of experts over the layer's experts: 1 balanced, 1/n one expert."),
    ("top2", "Top2 share", "Share of the window's tokens taken by the layer's two busiest experts."),
    ("maxVio", "MaxVio", "n x the busiest expert's share - 1: 0 balanced, n-1 one expert takes all."),
)


def report_html(runs: Sequence[RunData], columns: Sequence[RunColumns], labels: Sequence[str]) -> str:
    """The page of ``runs`` (their :func:`~chronomoe.report.rundata.column_view` and display labels, same order)."""
    from .palette import RUN_COLORS

    colors = [RUN_COLORS[position % len(RUN_COLORS)] for position in range(len(runs))]
    budget = MAX_EXPERT_CELLS // max(len(runs), 1)
    payloads = [
        run_payload(run, view, label, color, budget)
        for run, view, label, color in zip(runs, columns, labels, colors, strict=True)
    ]
    data: dict[str, Any] = {
        "runs": payloads,
        "rules": runs[0].rules.model_dump(),
        "initialLayer": initial_layer(runs),
        "domain": [
            min(int(view.first_step[0]) for view in columns) - 1,
            max(int(view.last_step[-1]) for view in columns),
        ],
        "palette": {
            "states": [STATE_COLORS[STATES_BY_CODE[code]] for code in sorted(STATES_BY_CODE)],
            "transitions": [TRANSITION_COLORS[STATES_BY_CODE[code]] for code in sorted(STATES_BY_CODE)],
            "noData": NO_DATA_COLOR,
            "viridis": list(VIRIDIS_STOPS),
            "loads": list(LOAD_STOPS),
            "dead": DEAD_EXPERT_COLOR,
            "muted": MUTED_TEXT_COLOR,
            "actions": ACTION_COLORS,
        },
    }
    several = len(runs) > 1
    legends = _legends(int(max(run.n_experts.max() for run in runs)), max(p["experts"]["loadRange"] for p in payloads))
    cards = "\n".join(
        _run_card(run, label, color, _columns_note(run, view, payload["experts"]["width"]))
        for run, view, label, color, payload in zip(runs, columns, labels, colors, payloads, strict=True)
    )
    comparison = ""
    if several:
        rows = comparison_rows(runs, labels)
        comparison = "<h3>Differences (in parentheses: against the first run)</h3>" + _table(
            rows[0], rows[1:], f"{len(rows) - 1} facts of {len(runs)} runs"
        )

    def run_title(position: int) -> str:
        color, label = colors[position], labels[position]
        return f'<div class="panel-title"><span class="swatch" style="background:{color}"></span>{escape(label)}</div>'

    overview = []
    for metric, title, caption in OVERVIEW_METRICS:
        overview.append(f'<h3>{escape(title)}</h3><p class="caption">{escape(caption)}</p>')
        overview.append(f'<div class="legend">{legends[metric]}</div>')
        for position in range(len(runs)):
            overview.append(
                (run_title(position) if several else "")
                + f'<canvas class="heatmap" data-panel="overview-{metric}-{position}" data-kind="overview" '
                f'data-run="{position}" data-metric="{metric}"></canvas>'
            )
    experts = [
        run_title(position)
        + f'<canvas class="heatmap" data-panel="experts-{position}" data-kind="experts" data-run="{position}"></canvas>'
        for position in range(len(runs))
    ]
    with_controller = [
        position
        for position, run in enumerate(runs)
        if run.controller is not None
        and not (np.isnan(run.controller.pressure).all() and np.isnan(run.controller.bias).all())
    ]
    layer_bias = (
        '<h3>|bias| (solid) and pressure (dotted)</h3><svg class="chart" data-panel="layer-bias" '
        'data-kind="layer-bias"></svg>'
        if with_controller
        else ""
    )
    has_loss = any(not np.isnan(run.train_loss).all() or not np.isnan(run.val_loss).all() for run in runs)
    loss = (
        '<svg class="chart" data-panel="loss" data-kind="loss"></svg>'
        if has_loss
        else "<p>No loss was recorded with the snapshots.</p>"
    )
    controller_parts = []
    for position, run in enumerate(runs):
        series = run.controller
        if position in with_controller:
            controller_parts.append(run_title(position))
            for metric in ("pressure", "bias"):
                controller_parts.append(
                    f'<div class="caption">{"pressure (0..1)" if metric == "pressure" else "|bias| after the decision"}'
                    f'</div><canvas class="heatmap" data-panel="controller-{metric}-{position}" data-kind="controller" '
                    f'data-run="{position}" data-metric="{metric}"></canvas>'
                )
        elif series is None:
            controller_parts.append(f"<p>{escape(labels[position])}: no decisions.jsonl.</p>")
        else:
            controller_parts.append(
                f"<p>{escape(labels[position])}: {escape(', '.join(series.controllers))}, {series.decisions:,} "
                "decisions, none with a pressure or a bias to draw.</p>"
            )
    tables = "\n".join(_layer_table(run) + _transitions_table(run) for run in runs)
    title = " vs ".join(labels)
    swatch = '<span><span class="swatch" style="background:{}"></span> {}</span>'
    run_legend = (
        '<div class="legend">'
        + " ".join(swatch.format(c, escape(label)) for c, label in zip(colors, labels, strict=True))
        + "</div>"
        if several
        else ""
    )
    payload_json = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY).replace(b"</", b"<\\/").decode()
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ChronoMoE report: {escape(title)}</title>
<style>
{_asset("report.css")}
</style>
</head>
<body>
<header class="top"><div class="inner">
<h1>ChronoMoE report: {escape(title)}</h1>
<nav><a href="#runs">runs</a><a href="#overview">layers</a><a href="#layer">selected layer</a><a href="#loss">loss</a>
<a href="#controller">controller</a><a href="#tables">tables</a></nav>
<div class="layer-control"><label for="layer-select">layer</label>
<button id="layer-prev" type="button" aria-label="previous layer">&#9664;</button>
<select id="layer-select"></select>
<button id="layer-next" type="button" aria-label="next layer">&#9654;</button></div>
</div></header>
<main>
<section class="card" id="runs"><h2>Run{"s" if several else ""}</h2>
<div class="runs">{cards}</div>
{comparison}
</section>
<section class="card" id="overview"><h2>Layers over time</h2>
<p class="note">Rows are layers, columns snapshot windows on the step axis{", aligned across runs" if several else ""}.
Hover for values; click a layer to see its experts.</p>
{"".join(overview)}
</section>
<section class="card" id="layer"><h2>Layer <span class="selected-layer"></span></h2>
<p class="caption">Each expert's share of the layer's tokens, relative to a balanced share (1/n), per snapshot window:
a collapse shows as a few red rows over a dark band of dead experts.
<label class="toggle"><input type="checkbox" id="sort-experts" checked> busiest experts first</label></p>
<div class="legend">{legends["loads"]}</div>
{"".join(experts)}
{run_legend}
<h3>Neff / n</h3><svg class="chart" data-panel="layer-diversity" data-kind="layer-diversity"></svg>
<h3>Top2 share</h3><svg class="chart" data-panel="layer-top2" data-kind="layer-top2"></svg>
{layer_bias}
</section>
<section class="card" id="loss"><h2>Loss, alerts and controller actions</h2>
<p class="caption">Train loss solid, validation loss dashed; above the plot, each alert transition coloured by the
state it entered; below, the controller's actions per snapshot window (adjust, relax, abstain), over all layers.</p>
{run_legend}<div class="legend">{legends["marks"]}</div>
{loss}
</section>
<section class="card" id="controller"><h2>Controller</h2>
<p class="caption">From decisions.jsonl: per layer, the pressure the controller computed and the size of the bias it
left (the actuator's largest absolute value, in its units).</p>
<div class="legend">{legends["controller"]}</div>
{"".join(controller_parts)}
</section>
<section class="card" id="tables"><h2>Tables</h2>
{tables}
</section>
<p class="note">Made by chronomoe {escape(__version__)} (chronomoe report). Colour-blind-safe palettes (viridis,
ColorBrewer RdBu, Okabe-Ito); works offline.</p>
</main>
<div id="tooltip" class="tooltip" role="status"></div>
<script type="application/json" id="chronomoe-data">{payload_json}</script>
<script>
{_asset("report.js")}
</script>
</body>
</html>
"""
