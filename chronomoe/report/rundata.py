"""A recorded run as the report draws it: :class:`RunData` (per-snapshot arrays) and its column view.

:func:`~chronomoe.report.load.load_run` builds a :class:`RunData` from a run
folder; :func:`column_view` reduces it to the columns the figures draw
(:mod:`~chronomoe.report.columns`). Both the PNG figures and the HTML page
draw from a :class:`RunColumns`, so they show the same numbers.

Shapes: ``S`` snapshots of one mode, ``L`` layers (every layer id seen in
any snapshot, ascending), ``W`` the widest layer's expert count, ``C``
columns. A layer absent from a snapshot, or without data in its window, is
NaN in float arrays and :data:`~chronomoe.report.rows.NO_DATA` in ``states``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..alerts import AlertRules, AlertTransition
from ..errors import CorruptRecordError
from .columns import column_edges, reduce_columns
from .summary import record_warnings


@dataclass(frozen=True)
class ControllerSeries:
    """What ``decisions.jsonl`` says, per snapshot and layer, for one mode.

    ``pressure`` is the largest pressure a decision reported for the layer at
    that snapshot; ``bias`` is the actuator's largest absolute value for the
    layer after the snapshot's last decision that changed or read it
    (``change.max_abs_after``; in the actuator's units). NaN where no decision
    says. ``actions`` counts, per snapshot, the decisions of each action other
    than ``none`` (``adjust``, ``relax``, ``abstain``, ...).
    """

    controllers: tuple[str, ...]
    decisions: int
    action_totals: dict[str, int]
    applied: int
    dry_run: bool
    pressure: np.ndarray  # [S, L] float64
    bias: np.ndarray  # [S, L] float64
    actions: dict[str, np.ndarray]  # action -> [S] int64

    @property
    def acted(self) -> bool:
        """Whether any decision did something (an action other than ``none``)."""
        return any(self.action_totals.get(action, 0) for action in self.action_totals if action != "none")


@dataclass(frozen=True)
class RunData:
    """One mode of a recorded run, per snapshot (see the module docstring for shapes).

    ``expert_tokens`` is already in columns: the tokens each layer's experts
    received, summed over the ``column_width`` snapshots of each column
    (``[C, L, W]``; a run of 10,000 snapshots of 58 x 256 experts could not
    be held per snapshot).
    """

    run_dir: Path
    run_id: str
    model_name: str
    mode: str
    steps: np.ndarray  # [S] int64
    train_loss: np.ndarray  # [S] float64
    val_loss: np.ndarray  # [S] float64
    layer_ids: np.ndarray  # [L] int64
    n_experts: np.ndarray  # [L] int64, the largest seen for the layer
    n_effective: np.ndarray  # [S, L] float64
    top2_share: np.ndarray  # [S, L] float64
    max_vio: np.ndarray  # [S, L] float64
    dead_experts: np.ndarray  # [S, L] int64, 0 without data
    states: np.ndarray  # [S, L] int8
    column_width: int
    expert_tokens: np.ndarray  # [C, L, W] int64
    transitions: list[AlertTransition]
    rules: AlertRules
    manifest: dict[str, Any] = field(default_factory=dict)
    dropped_records: int = 0
    controller: ControllerSeries | None = None
    corrupt_lines: tuple[CorruptRecordError, ...] = ()  # snapshot lines skipped (JSONL)
    superseded_snapshots: int = 0  # earlier recordings of steps recorded again, left out
    superseded_steps: tuple[int, int] | None = None  # lowest and highest step recorded more than once

    @property
    def warnings(self) -> list[str]:
        """What the report left out of the run's snapshots, one line each (none: [])."""
        return record_warnings(self.corrupt_lines, self.superseded_steps, self.superseded_snapshots, self.mode)

    @property
    def n_snapshots(self) -> int:
        return len(self.steps)


@dataclass(frozen=True)
class RunColumns:
    """A :class:`RunData` in columns of ``width`` snapshots, each cell the worst of its snapshots.

    ``diversity`` is Neff / n_experts (so layers of different widths share a
    scale), lowest of the column; ``top2`` and ``max_vio`` the highest;
    ``states`` the most severe; ``expert_share`` each expert's share of the
    column's tokens (NaN where the layer had none); controller arrays as in
    :class:`ControllerSeries`, ``pressure`` the highest and ``bias`` the
    column's last value. All ``[C, L]`` except ``expert_share`` ``[C, L, W]``
    and ``actions`` ``[C]``.
    """

    width: int
    first_step: np.ndarray  # [C] int64
    last_step: np.ndarray  # [C] int64
    diversity: np.ndarray
    top2: np.ndarray
    max_vio: np.ndarray
    states: np.ndarray
    expert_share: np.ndarray
    pressure: np.ndarray | None
    bias: np.ndarray | None
    actions: dict[str, np.ndarray] | None


def column_view(run: RunData) -> RunColumns:
    """The run reduced to its columns (pure; see :class:`RunColumns`)."""
    width = run.column_width
    first_step, last_step = column_edges(run.steps, width)
    with np.errstate(invalid="ignore", divide="ignore"):
        diversity = run.n_effective / run.n_experts[None, :]
        tokens = run.expert_tokens.sum(axis=2, keepdims=True)
        expert_share = np.where(tokens > 0, run.expert_tokens / np.maximum(tokens, 1), np.nan)
    controller = run.controller
    return RunColumns(
        width=width,
        first_step=first_step,
        last_step=last_step,
        diversity=reduce_columns(diversity, width, "min"),
        top2=reduce_columns(run.top2_share, width, "max"),
        max_vio=reduce_columns(run.max_vio, width, "max"),
        states=reduce_columns(run.states, width, "max"),
        expert_share=expert_share,
        pressure=None if controller is None else reduce_columns(controller.pressure, width, "max"),
        bias=None if controller is None else last_known(controller.bias, width),
        actions=None
        if controller is None
        else {name: _column_sums(counts, width) for name, counts in controller.actions.items()},
    )


def _column_sums(values: np.ndarray, width: int) -> np.ndarray:
    n_columns = -(-len(values) // width)
    padded = np.zeros(n_columns * width, dtype=values.dtype)
    padded[: len(values)] = values
    sums: np.ndarray = padded.reshape(n_columns, width).sum(axis=1)
    return sums


def last_known(values: np.ndarray, width: int) -> np.ndarray:
    """``[C, L]``: per column of ``width`` rows of ``values`` ``[S, L]``, each layer's last non-NaN value
    (NaN if none)."""
    known = ~np.isnan(values)
    positions = np.where(known, np.arange(len(values))[:, None], -1)
    last = reduce_columns(positions, width, "max")
    known_values: np.ndarray = np.where(
        last >= 0, values[np.maximum(last, 0), np.arange(values.shape[1])[None, :]], np.nan
    )
    return known_values


def at_end(values: np.ndarray) -> np.ndarray:
    """``[L]``: each layer's last non-NaN value of ``values`` ``[S, L]`` (its value at the end of the run)."""
    end: np.ndarray = last_known(values.astype(np.float64), max(len(values), 1))[0]
    return end
