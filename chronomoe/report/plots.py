"""The report's PNG figures for papers: matplotlib drawings of :class:`~chronomoe.report.rundata.RunColumns`.

Each ``plot_*`` function draws one figure, saves it to ``path`` at
:data:`DPI` and returns ``path``. matplotlib (``chronomoe[report]``) is
imported inside the functions, so importing :mod:`chronomoe.report` works
without it. Heatmaps are layer (or expert) x step: a column spans the
snapshot windows it covers, ``(previous step, step]``, so runs line up on
the step axis. Colours are those of :mod:`~chronomoe.report.palette`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..alerts import AlertState
from .palette import (
    ACTION_COLORS,
    DEAD_EXPERT_COLOR,
    LOAD_STOPS,
    MUTED_TEXT_COLOR,
    NO_DATA_COLOR,
    STATE_COLORS,
    TRANSITION_COLORS,
    VIRIDIS_STOPS,
)
from .payload import load_range
from .rows import STATE_CODES, STATES_BY_CODE
from .rundata import RunColumns, RunData, column_view

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 120
PNG_COMPRESSION = 3
"""zlib level of the PNGs: files about 10% larger than at the default 6, written in half the time."""
WORST_LAYERS = 4
"""Layers of the expert figure when none are chosen."""


def worst_layers(run: RunData, count: int = WORST_LAYERS) -> list[int]:
    """The ``count`` layers in the worst shape, worst first: most snapshots collapse_confirmed, then
    pre_collapse, then lowest Neff/n at any snapshot."""
    collapsed = (run.states == STATE_CODES[AlertState.COLLAPSE_CONFIRMED]).sum(axis=0)
    warned = (run.states == STATE_CODES[AlertState.PRE_COLLAPSE]).sum(axis=0)
    with np.errstate(invalid="ignore"):
        lowest = np.nan_to_num(np.fmin.reduce(run.n_effective / run.n_experts[None, :], axis=0), nan=1.0)
    order = np.lexsort((run.layer_ids, lowest, -warned, -collapsed))
    return [int(run.layer_ids[row]) for row in order[:count]]


def _edges(view: RunColumns) -> np.ndarray:
    """x edges ``[C + 1]`` of the columns on the step axis."""
    return np.concatenate([[view.first_step[0] - 1], view.last_step]).astype(float)


def _colormap(stops: Sequence[str], name: str, reverse: bool = False) -> Any:
    from matplotlib.colors import LinearSegmentedColormap

    colors = list(reversed(stops)) if reverse else list(stops)
    return LinearSegmentedColormap.from_list(name, colors).with_extremes(bad=NO_DATA_COLOR)


def _layer_axis(axes: Axes, layer_ids: np.ndarray) -> None:
    count = len(layer_ids)
    every = max(1, math.ceil(count / 16))
    positions = list(range(0, count, every))
    axes.set_yticks(positions, [str(layer_ids[position]) for position in positions])
    axes.set_ylim(count - 0.5, -0.5)
    axes.set_ylabel("layer")


def _heatmap(axes: Axes, view: RunColumns, values: np.ndarray, **style: Any) -> Any:
    """``values`` ``[C, rows]`` as rows x step (a rectilinear image: fast at any size); returns it for a colour bar."""
    rows = values.shape[1]
    return axes.pcolorfast(_edges(view), np.arange(rows + 1) - 0.5, np.ma.masked_invalid(values.T), **style)


def _stacked(
    heights: Sequence[float], width: float = 10.0, *, colorbars: bool = True, top: float = 0.5
) -> tuple[Figure, list[Axes], list[Axes]]:
    """A figure of panels stacked top to bottom, ``heights`` in inches, placed by hand (matplotlib's automatic
    layouts cost seconds at these sizes), each with a colour bar's axes at its right when ``colorbars``."""
    from matplotlib.figure import Figure

    left, right, bottom, gap = 0.75, 1.55 if colorbars else 0.25, 0.5, 0.42
    height = top + bottom + sum(heights) + gap * (len(heights) - 1)
    figure = Figure(figsize=(width, height))
    panels, bars = [], []
    y = height - top
    for panel_height in heights:
        y -= panel_height
        rectangle = (left / width, y / height, (width - left - right) / width, panel_height / height)
        panels.append(figure.add_axes(rectangle))
        if colorbars:
            bars.append(
                figure.add_axes(((width - right + 0.12) / width, y / height, 0.14 / width, panel_height / height))
            )
        y -= gap
    return figure, panels, bars


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=DPI, pil_kwargs={"compress_level": PNG_COMPRESSION})
    return path


def _panel_height(rows: int) -> float:
    """Inches of a layer (or expert) heatmap of ``rows`` rows: readable from 4 to 256 rows."""
    return min(0.6 + 0.045 * rows, 3.2)


def _share_x(panels: Sequence[Axes], view: RunColumns) -> None:
    edges = _edges(view)
    for axes in panels:
        axes.set_xlim(edges[0], edges[-1])
    for axes in panels[:-1]:
        axes.tick_params(labelbottom=False)
    panels[-1].set_xlabel("step")


def plot_overview(run: RunData, view: RunColumns, path: Path) -> Path:
    """Alert state, Neff/n, Top2 and MaxVio of every layer over the steps: four heatmaps, layer x step."""
    from matplotlib.colors import BoundaryNorm, FuncNorm, ListedColormap, Normalize
    from matplotlib.patches import Patch

    figure, panels, bars = _stacked([_panel_height(len(run.layer_ids))] * 4)
    state_colors = [NO_DATA_COLOR, *(STATE_COLORS[STATES_BY_CODE[code]] for code in sorted(STATES_BY_CODE))]
    _heatmap(
        panels[0],
        view,
        view.states.astype(float),
        cmap=ListedColormap(state_colors),
        norm=BoundaryNorm(np.arange(-1.5, 3), len(state_colors)),
    )
    bars[0].set_axis_off()
    bars[0].legend(
        handles=[
            Patch(color=color, label=label)
            for color, label in zip(state_colors, ["no data", *(state.value for state in AlertState)], strict=True)
        ],
        loc="upper left",
        bbox_to_anchor=(-1.0, 1.0),
        frameon=False,
        fontsize=8,
    )
    panels[0].set_title("alert state", loc="left", fontsize=10)
    widest = int(run.n_experts.max())
    metrics = [
        (view.diversity, "Neff / n (lowest)", _colormap(VIRIDIS_STOPS, "neff", reverse=True), Normalize(0, 1)),
        (view.top2, "Top2 share (highest)", _colormap(VIRIDIS_STOPS, "top2"), Normalize(0, 1)),
        (
            view.max_vio,
            "MaxVio (highest; log scale)",
            _colormap(VIRIDIS_STOPS, "maxvio"),
            FuncNorm((np.log1p, np.expm1), vmin=0, vmax=max(widest - 1, 1)),
        ),
    ]
    for axes, bar, (values, title, colormap, norm) in zip(panels[1:], bars[1:], metrics, strict=True):
        figure.colorbar(_heatmap(axes, view, values, cmap=colormap, norm=norm), cax=bar)
        axes.set_title(title, loc="left", fontsize=10)
    for axes in panels:
        _layer_axis(axes, run.layer_ids)
    _share_x(panels, view)
    figure.suptitle(f"{run.run_id}: layers over time" + _columns_suffix(view), fontsize=11, y=0.995, va="top")
    return _save(figure, path)


def _columns_suffix(view: RunColumns) -> str:
    return "" if view.width == 1 else f" (columns of {view.width} snapshots)"


def plot_experts(run: RunData, layers: Sequence[int], path: Path) -> Path:
    """Each chosen layer's experts over the steps: load relative to balanced (log2), dead experts near-black."""
    from matplotlib.colors import Normalize

    rows = {int(layer_id): row for row, layer_id in enumerate(run.layer_ids)}
    chosen = [layer for layer in layers if layer in rows] or [int(run.layer_ids[0])]
    view = column_view(run)
    half_range = load_range(run.n_experts)
    colormap = _colormap(LOAD_STOPS, "loads").with_extremes(under=DEAD_EXPERT_COLOR, bad=NO_DATA_COLOR)
    norm = Normalize(-half_range, half_range)
    heights = [_panel_height(int(run.n_experts[rows[layer]])) for layer in chosen]
    figure, panels, bars = _stacked(heights)
    for axes, bar, layer in zip(panels, bars, chosen, strict=True):
        row = rows[layer]
        n_experts = int(run.n_experts[row])
        shares = view.expert_share[:, row, :n_experts]
        with np.errstate(divide="ignore"):
            values = np.where(shares > 0, np.log2(np.maximum(shares, 1e-300) * n_experts), -half_range - 1)
        values = np.where(np.isnan(shares), np.nan, np.maximum(values, -half_range - 1))
        image = _heatmap(axes, view, values, cmap=colormap, norm=norm)
        colorbar = figure.colorbar(image, cax=bar, extend="min")
        colorbar.set_label("log2(load / balanced)", fontsize=8)
        axes.set_ylim(n_experts - 0.5, -0.5)
        axes.set_ylabel("expert")
        axes.set_title(f"layer {layer} ({n_experts} experts; dead: black)", loc="left", fontsize=10)
    _share_x(panels, view)
    figure.suptitle(f"{run.run_id}: expert loads" + _columns_suffix(view), fontsize=11, y=0.995, va="top")
    return _save(figure, path)


def plot_controller(run: RunData, view: RunColumns, path: Path) -> Path:
    """The controller's pressure and the bias it left, per layer over the steps (from ``decisions.jsonl``)."""
    from matplotlib.colors import Normalize

    if view.pressure is None or view.bias is None or run.controller is None:
        raise ValueError(f"{run.run_id} has no decisions to draw")
    figure, panels, bars = _stacked([_panel_height(len(run.layer_ids))] * 2)
    largest = float(np.nanmax(view.bias)) if not np.isnan(view.bias).all() else 1.0
    for axes, bar, values, title, norm in (
        (panels[0], bars[0], view.pressure, "pressure (highest of the column)", Normalize(0, 1)),
        (panels[1], bars[1], view.bias, "|bias| after the column's last decision", Normalize(0, max(largest, 1e-9))),
    ):
        figure.colorbar(_heatmap(axes, view, values, cmap=_colormap(VIRIDIS_STOPS, "controller"), norm=norm), cax=bar)
        axes.set_title(title, loc="left", fontsize=10)
        _layer_axis(axes, run.layer_ids)
    _share_x(panels, view)
    names = ", ".join(run.controller.controllers)
    figure.suptitle(f"{run.run_id}: controller {names}" + _columns_suffix(view), fontsize=11, y=0.995, va="top")
    return _save(figure, path)


def plot_loss(runs: Sequence[RunData], views: Sequence[RunColumns], labels: Sequence[str], path: Path) -> Path:
    """Loss of every run on one step axis, with each run's alert transitions above (coloured by the state
    entered) and its controller actions per column below."""
    from matplotlib.lines import Line2D

    from .palette import RUN_COLORS

    acting = [position for position, run in enumerate(runs) if run.controller is not None and run.controller.acted]
    lane = 0.2
    heights = [lane * len(runs), 2.8, *([lane * len(acting)] if acting else [])]
    figure, panels, _ = _stacked(heights, colorbars=False, top=0.35)
    marks, loss = panels[0], panels[1]
    for position, (run, label) in enumerate(zip(runs, labels, strict=True)):
        color = RUN_COLORS[position % len(RUN_COLORS)]
        loss.plot(run.steps, run.train_loss, color=color, lw=1.5, label=f"{label} train")
        if not np.isnan(run.val_loss).all():
            known = ~np.isnan(run.val_loss)
            loss.plot(run.steps[known], run.val_loss[known], color=color, lw=1.2, ls="--", label=f"{label} val")
        for state in (AlertState.PRE_COLLAPSE, AlertState.COLLAPSE_CONFIRMED, AlertState.NOMINAL):
            steps = [t.step for t in run.transitions if t.dest is state]
            marks.vlines(steps, position - 0.4, position + 0.4, color=TRANSITION_COLORS[state], lw=1.5)
    marks.set_yticks(range(len(runs)), labels, fontsize=8)
    marks.set_ylim(len(runs) - 0.5, -0.5)
    marks.set_title("alert transitions, by the state entered", loc="left", fontsize=9, color=MUTED_TEXT_COLOR)
    marks.legend(
        handles=[Line2D([], [], color=TRANSITION_COLORS[state], lw=2, label=state.value) for state in AlertState],
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        ncols=3,
        frameon=False,
        fontsize=8,
    )
    loss.set_ylabel("loss")
    loss.grid(alpha=0.3)
    loss.legend(fontsize=8, frameon=False, loc="upper right")
    if acting:
        actions = panels[2]
        for lane_position, position in enumerate(acting):
            view = views[position]
            for name, counts in (view.actions or {}).items():
                columns = np.flatnonzero(counts)
                actions.vlines(
                    view.last_step[columns],
                    lane_position + 0.4,
                    lane_position + 0.4 - 0.8 * counts[columns] / max(int(counts.max()), 1),
                    color=ACTION_COLORS.get(name, MUTED_TEXT_COLOR),
                    lw=1.5,
                )
        actions.set_yticks(range(len(acting)), [labels[position] for position in acting], fontsize=8)
        actions.set_ylim(len(acting) - 0.5, -0.5)
        actions.set_title("controller actions (bar height: layers acted on)", loc="left", fontsize=9)
        actions.legend(
            handles=[Line2D([], [], color=color, lw=2, label=name) for name, color in ACTION_COLORS.items()],
            loc="lower right",
            bbox_to_anchor=(1.0, 1.0),
            ncols=3,
            frameon=False,
            fontsize=8,
        )
    start = min(int(view.first_step[0]) - 1 for view in views)
    end = max(int(view.last_step[-1]) for view in views)
    for axes in panels:
        axes.set_xlim(start, end)
    for axes in panels[:-1]:
        axes.tick_params(labelbottom=False)
    panels[-1].set_xlabel("step")
    return _save(figure, path)
