"""The report's figures: matplotlib PNGs of a run's series (``chronomoe[report]``).

Each ``plot_*`` function draws one figure from data of
:mod:`chronomoe.report.series`, saves it to ``path`` at 110 dpi and returns
``path``. matplotlib is imported inside the functions, so importing
:mod:`chronomoe.report` works without it.

Alert states are shaded per snapshot window ``(previous step, step]``: a
snapshot's state is the verdict on the window that produced it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..alerts import AlertRules, AlertState
from .palette import NO_DATA_COLOR, STATE_COLORS
from .series import RunSeries

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.patches import Patch


def _window_edges(steps: np.ndarray) -> np.ndarray:
    """Edges ``[n + 1]`` of the windows ``(previous step, step]``; the first window is as wide as the second."""
    first_width = steps[1] - steps[0] if len(steps) > 1 else 1
    return np.concatenate([[steps[0] - first_width], steps]).astype(float)


def _shade_states(axes: Axes, edges: np.ndarray, states: list[AlertState | None]) -> None:
    """Shade the windows in which the layer was in an alert state (``edges`` from :func:`_window_edges`)."""
    for position, state in enumerate(states):
        if state in (AlertState.PRE_COLLAPSE, AlertState.COLLAPSE_CONFIRMED):
            axes.axvspan(edges[position], edges[position + 1], color=STATE_COLORS[state], alpha=0.45, lw=0)


def _state_legend_handles() -> list[Patch]:
    from matplotlib.patches import Patch

    return [
        Patch(color=STATE_COLORS[AlertState.PRE_COLLAPSE], alpha=0.45, label="pre_collapse"),
        Patch(color=STATE_COLORS[AlertState.COLLAPSE_CONFIRMED], alpha=0.45, label="collapse_confirmed"),
    ]


def plot_neff(series: RunSeries, rules: AlertRules, path: Path) -> Path:
    """Neff per layer over steps (one panel per layer), alert states shaded, PRE_COLLAPSE threshold dashed."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    columns = min(4, len(series.layers))
    rows = math.ceil(len(series.layers) / columns)
    figure = Figure(figsize=(3.6 * columns, 2.4 * rows + 0.6), layout="constrained")
    panels = figure.subplots(rows, columns, squeeze=False, sharex=True)
    edges = _window_edges(series.steps)
    for axes, layer in zip(panels.flat, series.layers, strict=False):  # the grid's last panels may be spare
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
    for axes, step in zip(panels, steps, strict=True):
        matrix = np.full((n_layers, width), np.nan)
        source = matrices[step]
        matrix[: source.shape[0], : source.shape[1]] = source
        axes.imshow(np.ma.masked_invalid(matrix), cmap=colormap, norm=norm, aspect="auto", interpolation="nearest")
        axes.set_title(f"step {step}", fontsize=10)
        axes.set_xlabel("expert")
        axes.set_yticks(range(n_layers) if n_layers <= 24 else range(0, n_layers, max(1, n_layers // 12)))
        if width <= 32:
            axes.set_xticks(range(width))
            axes.tick_params(axis="x", labelsize=7)
    panels[0].set_ylabel("layer")
    # Every panel has the same colour map and norm: the last panel's image stands for all.
    figure.colorbar(panels[-1].images[0], ax=list(panels), label="share of the window's tokens (sqrt scale)")
    figure.suptitle("Expert utilisation shares")
    figure.savefig(path, dpi=110)
    return path


def plot_states(series: RunSeries, path: Path) -> Path:
    """Alert state of every layer (rows) over the snapshot windows (columns)."""
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    order: list[AlertState | None] = [None, *AlertState]  # colour index of each state
    codes = np.array([[order.index(state) for state in layer.states] for layer in series.layers])
    colors = [NO_DATA_COLOR, *(STATE_COLORS[state] for state in AlertState)]
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
        handles=[Patch(color=color, label=label) for color, label in zip(colors, labels, strict=True)],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.25 if n_layers < 6 else -0.12),
        ncols=4,
        frameon=False,
        fontsize=8,
    )
    figure.savefig(path, dpi=110)
    return path
