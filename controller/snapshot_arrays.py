"""The pressure controller's arithmetic on padded ``[layers, experts]`` arrays: a snapshot as arrays in the
actuator's layer order (:class:`SnapshotArrays`) and the bounded, mean-centred bias change (:func:`fit_into_box`).
Pure numpy: no state, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import numpy as np

from chronomoe.alerts import AlertState
from chronomoe.snapshots import SystemSnapshot

from .actuators import Actuator


class Workspace:
    """The ``[L, width]`` float64 buffers one controller's decisions compute in, made once per actuator layout.

    At DeepSeek-V3 size (58 x 256) each buffer is 116 KiB: a fresh array of
    that size per operation costs more in page faults than the arithmetic
    (the allocator returns freed memory of that size to the system), so the
    decision's arithmetic writes into these instead. What a decision returns
    holds plain values or its own copies, never a view of a buffer: the next
    decision overwrites them.

    ``shares``: the snapshot's expert shares; ``direction``: the balancing
    direction (:class:`SnapshotArrays`); ``change``: the desired, then the
    fitted change; ``after``: the bias after the decision; ``scratch``:
    intermediate values of one function call.
    """

    def __init__(self, n_layers: int, width: int) -> None:
        self.shape = (n_layers, width)
        self.shares, self.direction, self.change, self.after, self.scratch = (np.zeros(self.shape) for _ in range(5))


def fit_into_box(
    desired: np.ndarray,
    bias: np.ndarray,
    n_experts: np.ndarray,
    max_step: float,
    max_bias: float,
    *,
    out: np.ndarray | None = None,
    scratch: np.ndarray | None = None,
) -> np.ndarray:
    """The change closest in direction to ``desired`` that keeps every bound (``[L, width]`` arrays; ``n_experts``
    ``[L]``).

    ``desired`` sums to 0 over each layer's experts; the result does too, and
    ``|change| <= max_step``, ``|bias + change| <= max_bias`` hold for every
    expert (``bias`` must already be within ``max_bias``). Experts whose bias
    is at the bound in the direction of their push are held (anti-windup) and
    the rest re-centred, once more if that turned another expert at its bound
    outwards; then the whole row is scaled down to fit.

    ``out`` (``desired`` itself allowed) receives the result, which is returned;
    ``scratch`` is overwritten with intermediate values; both are of
    ``desired``'s shape and float64. Given both, nothing of that size is
    allocated; without them, fresh arrays are used and ``desired`` is kept.
    """
    n_layers, width = desired.shape
    change = np.empty_like(desired) if out is None else out
    work = np.empty_like(desired) if scratch is None else scratch
    real = np.arange(width)[None, :] < n_experts[:, None] if (n_experts < width).any() else None
    if real is None:
        np.copyto(change, desired)
    else:
        np.multiply(desired, real, out=change)
    flat_change = change.reshape(-1)  # a view: C-contiguous
    # Only experts at the bound can be held; usually there are none or few, so they are handled by index.
    at_bound = np.flatnonzero(np.abs(bias, out=work) >= max_bias)
    bias_at_bound = bias.reshape(-1)[at_bound]
    held = at_bound[:0]
    for iteration in range(2):
        outwards = at_bound[flat_change[at_bound] * bias_at_bound > 0]  # pushing further out: held from now on
        if iteration and not outwards.size:
            break  # nothing newly held: the first re-centring stands
        held = np.concatenate([held, outwards])
        flat_change[held] = 0.0
        free_count = n_experts - np.bincount(held // width, minlength=n_layers)
        change -= change.sum(axis=1, keepdims=True) / np.maximum(free_count, 1)[:, None]
        flat_change[held] = 0.0
        if real is not None:
            change *= real
    # The largest factor each row may be scaled by: max_step / its largest |change|, unless that would carry an
    # expert past max_bias; then, for those rows only, the least over experts of headroom / |change|.
    with np.errstate(divide="ignore"):
        factor = np.minimum(max_step / np.abs(change, out=work).max(axis=1), 1.0)
    np.multiply(change, factor[:, None], out=work)
    np.add(bias, work, out=work)
    past = np.abs(work, out=work).max(axis=1) > max_bias
    if past.any():
        past_change = change[past]
        headroom = max_bias - bias[past] * np.sign(past_change)  # how far each may move in its direction
        magnitude = np.abs(past_change)
        limits = np.full_like(headroom, np.inf)
        np.divide(np.minimum(headroom, max_step), magnitude, out=limits, where=magnitude > 0)
        factor[past] = np.clip(limits.min(axis=1), 0.0, 1.0)
    change *= factor[:, None]
    return change


class SnapshotArrays:
    """A snapshot's layers as arrays in the actuator's layer order (what the policy reads).

    Shapes: per-layer fields ``[L]`` (``L = len(actuator.layer_ids)``; NaN
    where a layer has no data or is not in the snapshot); ``states`` and
    ``metrics`` lists of ``L`` (nominal and ``{}`` for a layer not in the
    snapshot); ``direction`` ``[L, width]``, each expert's deficit of the
    balanced share ``1/n`` scaled so that the largest is 1 in magnitude (0 in
    padding beyond a layer's ``n_experts`` and in layers without data): the
    workspace's buffer, valid until the workspace's next use.
    """

    def __init__(self, workspace: Workspace) -> None:
        n_layers = workspace.shape[0]
        nan = np.full(n_layers, np.nan)
        self.in_snapshot = np.zeros(n_layers, dtype=bool)
        self.has_data = np.zeros(n_layers, dtype=bool)
        self.states: list[AlertState] = [AlertState.NOMINAL] * n_layers
        self.n_effective, self.top2_share, self.max_vio, self.dead_fraction = nan, nan.copy(), nan.copy(), nan.copy()
        self.direction = workspace.direction
        self.metrics: list[dict[str, float | int | None]] = [{} for _ in range(n_layers)]

    @classmethod
    def of(cls, snapshot: SystemSnapshot, actuator: Actuator, workspace: Workspace | None = None) -> SnapshotArrays:
        """The view of ``snapshot``, computed in ``workspace`` (a fresh one when ``None``; its shape must be
        ``[len(actuator.layer_ids), max(actuator.n_experts)]``)."""
        n_layers, width = len(actuator.layer_ids), max(actuator.n_experts)
        if workspace is None:
            workspace = Workspace(n_layers, width)
        view = cls(workspace)
        view.direction.fill(0.0)
        if not snapshot.layers:
            return view
        # Read column-wise (one attrgetter call per layer, transposed by zip) and stored in one assignment per
        # array: per-element Python work costs more than the arithmetic at 58 layers.
        columns: list[Sequence[Any]] = list(zip(*map(_LAYER_FIELDS, snapshot.layers), strict=True))
        ids, states, no_data, widths, n_effective, top2_share, max_vio, dead, rows = columns
        present: list[int]
        if ids == actuator.layer_ids:  # the usual case: the actuator's layers, in its order
            present = list(range(n_layers))
        else:
            position_of = {layer_id: position for position, layer_id in enumerate(actuator.layer_ids)}
            found = [position_of.get(layer_id) for layer_id in ids]
            kept = [index for index, position in enumerate(found) if position is not None]
            present = [position for position in found if position is not None]
            states, no_data, widths, n_effective, top2_share, max_vio, dead, rows = (
                [column[index] for index in kept]
                for column in (states, no_data, widths, n_effective, top2_share, max_vio, dead, rows)
            )
        metrics = [
            {"n_effective": neff, "top2_share": top2, "max_vio": vio, "dead_expert_count": dead_count}
            for neff, top2, vio, dead_count in zip(n_effective, top2_share, max_vio, dead, strict=True)
        ]
        for position, state, layer_metrics in zip(present, states, metrics, strict=True):
            view.states[position] = state
            view.metrics[position] = layer_metrics
        view.in_snapshot[present] = True
        if any(no_data):
            data = [index for index, empty in enumerate(no_data) if not empty]
            if not data:
                return view
            present, widths, n_effective, top2_share, dead, rows = (
                [column[index] for index in data] for column in (present, widths, n_effective, top2_share, dead, rows)
            )
        view.has_data[present] = True
        view.n_effective[present] = n_effective
        view.top2_share[present] = top2_share
        n = np.asarray(actuator.n_experts, dtype=np.float64)
        view.dead_fraction[present] = np.asarray(dead) / n[present]
        shares = workspace.shares
        if len(present) == n_layers and present == sorted(present) and all(row_width == width for row_width in widths):
            np.concatenate(rows, out=shares.reshape(-1))  # every row, in order: no scatter
        else:
            shares.fill(0.0)
            for position, row_width, row in zip(present, widths, rows, strict=True):
                shares[position, :row_width] = row
        # MaxVio from the shares (logs written before max_vio was recorded have none); NaN without data.
        view.max_vio = np.where(view.has_data, n * shares.max(axis=1) - 1.0, np.nan)
        deficit = np.subtract((1.0 / n)[:, None], shares, out=workspace.scratch)
        if len(present) < n_layers:
            deficit *= view.has_data[:, None]
        if (n < width).any():
            deficit *= np.arange(width)[None, :] < n[:, None]
        largest = np.abs(deficit, out=view.direction).max(axis=1, keepdims=True)
        np.divide(deficit, largest, out=view.direction, where=largest > 0)
        return view


_LAYER_FIELDS = attrgetter(
    "layer_id",
    "alert_state",
    "no_data",
    "n_experts",
    "n_effective",
    "top2_share",
    "max_vio",
    "dead_expert_count",
    "utilization_shares",
)
