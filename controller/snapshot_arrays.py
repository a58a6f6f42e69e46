"""The pressure controller's arithmetic on padded ``[layers, experts]`` arrays: a snapshot as arrays in the
actuator's layer order (:class:`SnapshotArrays`) and the bounded, mean-centred bias change (:func:`fit_into_box`).
Pure numpy: no state, no I/O."""

from __future__ import annotations

import numpy as np

from chronomoe.alerts import AlertState
from chronomoe.snapshots import SystemSnapshot

from .actuators import Actuator


def fit_into_box(
    desired: np.ndarray, bias: np.ndarray, n_experts: np.ndarray, max_step: float, max_bias: float
) -> np.ndarray:
    """The change closest in direction to ``desired`` that keeps every bound (``[L, width]`` arrays).

    ``desired`` sums to 0 over each layer's experts; the result does too, and
    ``|change| <= max_step``, ``|bias + change| <= max_bias`` hold for every
    expert (``bias`` must already be within ``max_bias``). Experts whose bias
    is at the bound in the direction of their push are held (anti-windup) and
    the rest re-centred, twice; then the whole row is scaled down to fit.
    """
    width = desired.shape[1]
    real = np.arange(width)[None, :] < n_experts[:, None]
    low = np.maximum(-max_step, -max_bias - bias)
    high = np.minimum(max_step, max_bias - bias)
    change = np.where(real, desired, 0.0)
    for _ in range(2):
        held = ((change > 0) & (high <= 0)) | ((change < 0) & (low >= 0))
        free = real & ~held
        change = np.where(free, change, 0.0)
        free_count = np.maximum(free.sum(axis=1, keepdims=True), 1)
        change = np.where(free, change - change.sum(axis=1, keepdims=True) / free_count, 0.0)
    limits = np.full_like(change, np.inf)  # the largest factor each expert's change may be scaled by
    np.divide(high, change, out=limits, where=change > 0)
    np.divide(low, change, out=limits, where=change < 0)
    scale = np.clip(limits.min(axis=1), 0.0, 1.0)
    fitted: np.ndarray = change * scale[:, None]  # zero in padding: padding is never free
    return fitted


class SnapshotArrays:
    """A snapshot's layers as arrays in the actuator's layer order (what the policy reads).

    Shapes: per-layer fields ``[L]`` (``L = len(actuator.layer_ids)``; NaN
    where a layer has no data or is not in the snapshot); ``direction``
    ``[L, width]``, each expert's deficit of the balanced share ``1/n``
    scaled so that the largest is 1 in magnitude (0 in padding beyond a
    layer's ``n_experts``).
    """

    def __init__(self, n_layers: int, width: int) -> None:
        nan = np.full(n_layers, np.nan)
        self.in_snapshot = np.zeros(n_layers, dtype=bool)
        self.has_data = np.zeros(n_layers, dtype=bool)
        self.states = np.full(n_layers, AlertState.NOMINAL.value, dtype=object)
        self.n_effective, self.top2_share, self.max_vio, self.dead_fraction = (
            nan.copy(),
            nan.copy(),
            nan.copy(),
            nan.copy(),
        )
        self.direction = np.zeros((n_layers, width))
        self.metrics: list[dict[str, float | int | None]] = [{} for _ in range(n_layers)]

    @classmethod
    def of(cls, snapshot: SystemSnapshot, actuator: Actuator) -> SnapshotArrays:
        position_of = {layer_id: position for position, layer_id in enumerate(actuator.layer_ids)}
        view = cls(len(actuator.layer_ids), max(actuator.n_experts))
        width = view.direction.shape[1]
        shares = np.zeros_like(view.direction)
        # Gathered as Python lists and stored in one assignment per array: setting numpy elements one at a time
        # costs more than the rest of the loop at 58 layers.
        present, states = [], []
        with_data, n_effective, top2_share, dead_fraction = [], [], [], []
        for layer in snapshot.layers:
            position = position_of.get(layer.layer_id)
            if position is None:
                continue
            present.append(position)
            states.append(layer.alert_state.value)
            view.metrics[position] = {
                "n_effective": layer.n_effective,
                "top2_share": layer.top2_share,
                "max_vio": layer.max_vio,
                "dead_expert_count": layer.dead_expert_count,
            }
            if layer.no_data:
                continue
            with_data.append(position)
            n_effective.append(layer.n_effective)
            top2_share.append(layer.top2_share)
            dead_fraction.append(layer.dead_expert_count / layer.n_experts)
            shares[position, : layer.n_experts] = layer.utilization_shares
        view.in_snapshot[present] = True
        view.states[present] = states
        view.has_data[with_data] = True
        view.n_effective[with_data] = n_effective
        view.top2_share[with_data] = top2_share
        view.dead_fraction[with_data] = dead_fraction
        n = np.asarray(actuator.n_experts, dtype=np.float64)
        real = np.arange(width)[None, :] < n[:, None]
        # MaxVio from the shares (logs written before max_vio was recorded have none); NaN without data.
        view.max_vio = np.where(view.has_data, n * shares.max(axis=1) - 1.0, np.nan)
        deficit = np.where(real & view.has_data[:, None], 1.0 / n[:, None] - shares, 0.0)
        largest = np.abs(deficit).max(axis=1, keepdims=True)
        view.direction = np.divide(deficit, largest, out=np.zeros_like(deficit), where=largest > 0)
        return view
