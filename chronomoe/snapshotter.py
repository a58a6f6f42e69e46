"""Snapshotter: a run's windows in, snapshots out, with the alert machines of each mode stepped once each.

The stateful stage between capture and the bus. It holds one
:class:`~chronomoe.alerts.AlertBank` per mode (TRAIN and INFER alert
separately), the step of each mode's last snapshot, and the expert count of
every layer it has seen, and it refuses a snapshot call that contradicts
them *before* any machine moves, so that a refused call changes nothing and
a corrected retry gives the snapshot the first call would have.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from .alerts import AlertBank, AlertRules, AlertState
from .errors import InvalidInputError
from .events import MODES
from .metrics import UNDERUSE_RATIO
from .snapshots import SystemSnapshot, build_snapshot


class Snapshotter:
    """Builds a run's snapshots and steps its alert machines (see the module docstring).

    Args:
        run_id, model_name: stamped on every snapshot.
        rules: the alert rules of every bank.
        declared_layers: ``{layer_id: n_experts}`` of the run's MoE layers when
            known up front; then windows may only hold these layers, with these
            expert counts. Without it, each layer keeps the expert count of the
            first window that reported it.
        underuse_ratio: see :func:`chronomoe.metrics.layer_metrics_batch`.
    """

    def __init__(
        self,
        run_id: str,
        model_name: str,
        rules: AlertRules,
        declared_layers: Mapping[int, int] | None = None,
        underuse_ratio: float = UNDERUSE_RATIO,
    ) -> None:
        self.run_id = run_id
        self.model_name = model_name
        self.rules = rules
        self.underuse_ratio = underuse_ratio
        self.banks: dict[str, AlertBank] = {mode: AlertBank(rules) for mode in MODES}
        self.last_step: dict[str, int | None] = dict.fromkeys(MODES)
        self.declared_layers = None if declared_layers is None else dict(declared_layers)
        self._seen_widths: dict[int, int] = {}

    def declare_layers(self, layers: Mapping[int, int]) -> None:
        """Declare (or re-declare, as ``attach`` does) the run's layers: ``{layer_id: n_experts}``."""
        self.declared_layers = dict(layers)

    def state(self, layer_id: int, mode: str = "TRAIN") -> AlertState:
        """Current alert state of ``layer_id`` (``nominal`` for a layer never seen)."""
        bank = self.banks[check_mode(mode)]
        return bank[layer_id].alert_state if layer_id in bank else AlertState.NOMINAL

    # -- checks made before anything moves ------------------------------------------------
    def check_call(self, mode: str, step: object, train_loss: object, val_loss: object) -> None:
        """Refuse a snapshot's arguments: a mode other than TRAIN/INFER, a loss that is not a finite
        number, a step that is not an integer above the previous snapshot's of that mode."""
        check_mode(mode)
        for field, loss in (("train_loss", train_loss), ("val_loss", val_loss)):
            if loss is not None and not (isinstance(loss, numbers.Real) and math.isfinite(loss)):
                raise InvalidInputError(field, loss, "must be a finite number or None")
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise InvalidInputError("step", step, "must be a non-negative integer")
        previous = self.last_step[mode]
        if previous is not None and step <= previous:
            raise InvalidInputError("step", step, f"must be above the previous {mode} snapshot's step {previous}")

    def check_layers(self, layer_ids: np.ndarray, n_experts: np.ndarray) -> None:
        """Refuse layers that contradict the declared ones or, when none were declared, the expert counts
        earlier windows gave them. Records the expert counts of layers new to an undeclared run."""
        known = self.declared_layers if self.declared_layers is not None else self._seen_widths
        new = {}
        for layer_id, width in zip(layer_ids.tolist(), n_experts.tolist(), strict=True):
            expected = known.get(layer_id)
            if expected is None and self.declared_layers is not None:
                raise InvalidInputError(
                    "layer_id", layer_id, f"is not a declared MoE layer (declared: {sorted(self.declared_layers)})"
                )
            if expected is not None and width != expected:
                raise InvalidInputError(
                    f"n_experts of layer {layer_id}", width, f"differs from the layer's {expected} experts"
                )
            new[layer_id] = width
        if self.declared_layers is None:
            self._seen_widths.update(new)

    # -- the snapshot ----------------------------------------------------------------------
    def take(
        self,
        mode: str,
        counts: np.ndarray,
        n_experts: np.ndarray,
        layer_ids: np.ndarray,
        *,
        step: int,
        train_loss: float | None = None,
        val_loss: float | None = None,
        timestamp: float | None = None,
        dropped_records: int = 0,
        out_of_range_expert_ids: int = 0,
    ) -> SystemSnapshot:
        """The snapshot of a validated window (``counts [L, E]``, ``n_experts [L]``, ``layer_ids [L]``).

        Call :meth:`check_call` (and :meth:`check_layers`) first; this steps
        ``mode``'s alert machines and records ``step`` as its last.
        """
        snapshot = build_snapshot(
            self.banks[mode],
            counts,
            n_experts,
            layer_ids,
            step=step,
            run_id=self.run_id,
            model_name=self.model_name,
            mode=mode,
            train_loss=train_loss,
            val_loss=val_loss,
            timestamp=timestamp,
            dropped_records=dropped_records,
            out_of_range_expert_ids=out_of_range_expert_ids,
            underuse_ratio=self.underuse_ratio,
        )
        self.last_step[mode] = step
        return snapshot

    # -- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Alert states and streaks of every layer of every mode, and each mode's last snapshot step."""
        return {
            "banks": {mode: bank.state_dict() for mode, bank in self.banks.items()},
            "last_snapshot_step": dict(self.last_step),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for mode, bank_state in state["banks"].items():
            self.banks[check_mode(mode)].load_state_dict(bank_state)
        self.last_step.update(state.get("last_snapshot_step", {}))


def check_mode(mode: str) -> str:
    """``mode`` itself when it is one of :data:`~chronomoe.events.MODES`, else a named error."""
    if mode not in MODES:
        raise InvalidInputError("mode", mode, f"must be one of {', '.join(MODES)}")
    return mode
