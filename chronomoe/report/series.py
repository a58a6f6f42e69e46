"""A recorded run over time: per-layer metric series and share matrices read from its snapshots.

What the report's figures plot, as numpy arrays (no matplotlib here):
:func:`collect_series` gives each layer's Neff, Top2 and alert state at every
snapshot of one mode; :func:`shares_at` gives the layer x expert utilisation
shares at chosen snapshots, picked by :func:`heatmap_steps`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..alerts import AlertState
from ..errors import CorruptRecordError
from ..replay import iter_snapshots
from ..snapshots import LayerSnapshot

DEFAULT_HEATMAP_STEPS = 4
"""Snapshots shown in the share heatmaps when no steps are chosen: evenly spaced, first and last included."""


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


def _point(layer: LayerSnapshot) -> _LayerPoint:
    # no_data decides; its metrics are None exactly then, and the None checks tell the type checker so.
    if layer.no_data or layer.n_effective is None or layer.top2_share is None:
        return _LayerPoint(layer.n_experts, math.nan, math.nan, None)
    return _LayerPoint(layer.n_experts, layer.n_effective, layer.top2_share, layer.alert_state)


def collect_series(run_dir: Path, mode: str) -> RunSeries:
    """Stream the snapshots of ``mode`` into per-layer arrays (a layer missing from a snapshot is no data)."""
    steps: list[int] = []
    points: dict[int, dict[int, _LayerPoint]] = {}
    for snapshot in iter_snapshots(run_dir, mode, on_corrupt=_counted_by_the_summary):
        while steps and steps[-1] >= snapshot.step:  # a later recording of these steps supersedes them
            steps.pop()
            for layer_points in points.values():
                layer_points.pop(len(steps), None)
        position = len(steps)
        steps.append(snapshot.step)
        for layer in snapshot.layers:
            points.setdefault(layer.layer_id, {})[position] = _point(layer)
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
    for snapshot in iter_snapshots(run_dir, mode, on_corrupt=_counted_by_the_summary):
        if snapshot.step in wanted:  # a later recording of a step replaces the earlier one
            width = max(layer.n_experts for layer in snapshot.layers)
            matrix = np.full((max(layer.layer_id for layer in snapshot.layers) + 1, width), np.nan)
            for layer in snapshot.layers:
                if not layer.no_data:
                    matrix[layer.layer_id, : layer.n_experts] = layer.utilization_shares
            matrices[snapshot.step] = matrix
    return matrices


def _counted_by_the_summary(error: CorruptRecordError) -> None:
    """Skip a corrupt line: the report's summary, read from the same file, counts and reports each one."""


def heatmap_steps(steps: np.ndarray, chosen: Sequence[int] | None) -> list[int]:
    """Snapshot steps for the share heatmaps: the snapshot at or just after each chosen step, else evenly spaced."""
    if chosen:
        positions = np.searchsorted(steps, np.asarray(chosen), side="left").clip(0, len(steps) - 1)
    else:
        positions = np.linspace(0, len(steps) - 1, min(DEFAULT_HEATMAP_STEPS, len(steps))).round().astype(int)
    return sorted({int(steps[position]) for position in positions})
