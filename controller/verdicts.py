"""What the pressure controller concluded about each layer of one snapshot (:class:`Verdicts`), and the
decision records made from it: the action, the change summary and the reason in words (:func:`decisions`).

Per-layer work here runs once per layer and snapshot (58 times at DeepSeek-V3 size), so it reads plain Python
values (numpy element access costs more than the words) and builds records from a template dict
(:meth:`~chronomoe.events.Record.trusted_from_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from chronomoe.snapshots import SystemSnapshot

from .decisions import ActuatorChange, ControlDecision
from .pressure_config import PressureConfig
from .snapshot_arrays import SnapshotArrays


@dataclass(frozen=True)
class Verdicts:
    """The policy's per-layer conclusions for one snapshot: boolean ``[L]`` arrays in the actuator's layer order.

    ``allowed``: in the snapshot and the allow-list; ``outside_band``: MaxVio above the tolerance;
    ``warranted``: the mode lets it act (alerting or held, or continuous mode); ``acting``: it pushed towards
    balance; ``relaxing``: it shrank the bias; ``moved``: the actuator's layer changed; ``harmed``: the last
    adjustment raised MaxVio; ``newly_abstained`` / ``abstained``: it stops (stopped) acting on the layer.
    ``step_scale`` ``[L]`` float; ``warming_up``, ``frozen`` (the reason, or ``None``) and ``snapshots_seen`` are
    the controller's, for the words.
    """

    allowed: np.ndarray
    outside_band: np.ndarray
    warranted: np.ndarray
    acting: np.ndarray
    relaxing: np.ndarray
    moved: np.ndarray
    harmed: np.ndarray
    newly_abstained: np.ndarray
    abstained: np.ndarray
    step_scale: np.ndarray
    warming_up: bool
    frozen: str | None
    snapshots_seen: int


def change_summaries(
    before: np.ndarray, after: np.ndarray, n_experts: np.ndarray, bound: float, *, scratch: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """The fields of each layer's :class:`~chronomoe.controller.ActuatorChange` from ``before`` to ``after``
    (``[L, width]``, zero in padding; ``n_experts`` ``[L]``; ``bound > 0``, so padding never counts as clamped).
    ``scratch`` (``[L, width]`` float64, overwritten) saves allocating one."""
    work = np.empty_like(after) if scratch is None else scratch
    change = np.abs(np.subtract(after, before, out=work), out=work)
    change_max, change_sum = change.max(axis=1).tolist(), change.sum(axis=1).tolist()
    before_max = np.abs(before, out=work).max(axis=1).tolist()
    magnitude = np.abs(after, out=work)
    columns = zip(
        change_max,
        change_sum,
        before_max,
        magnitude.max(axis=1).tolist(),
        (after.sum(axis=1) / n_experts).tolist(),
        np.count_nonzero(magnitude >= bound * (1 - 1e-9), axis=1).tolist(),
        strict=True,
    )
    return [
        {
            "max_abs_change": largest_change,
            "l1_change": total_change,
            "max_abs_before": largest_before,
            "max_abs_after": largest_after,
            "mean_after": mean,
            "clamped": clamped,
        }
        for largest_change, total_change, largest_before, largest_after, mean, clamped in columns
    ]


def decisions(
    snapshot: SystemSnapshot,
    view: SnapshotArrays,
    pressure: np.ndarray,
    verdicts: Verdicts,
    changes: list[dict[str, Any]],
    *,
    template: dict[str, Any],
    layer_ids: tuple[int, ...],
    config: PressureConfig,
    applies: bool,
) -> list[ControlDecision]:
    """One decision per layer in the snapshot, in the actuator's layer order.

    ``template`` holds the fields every decision of the controller shares (controller, config hash, actuator,
    dry run, heat, forgetting); ``changes[position]`` the layer's change summary; ``applies`` whether an adjusted
    layer changes the model.
    """
    shared = {
        **template,
        "trigger": "snapshot",
        "step": snapshot.step,
        "mode": snapshot.mode,
        "run_id": snapshot.run_id,
        "timestamp": snapshot.timestamp,
    }
    reasons = _reasons(view, pressure, verdicts, config)
    has_data, pressures = view.has_data.tolist(), pressure.tolist()
    acting, moved, abstained = verdicts.acting.tolist(), verdicts.moved.tolist(), verdicts.abstained.tolist()
    made = []
    for position in np.flatnonzero(view.in_snapshot).tolist():
        if moved[position]:
            action = "adjust" if acting[position] else "relax"
        else:
            action = "abstain" if abstained[position] and has_data[position] else "none"
        made.append(
            ControlDecision.trusted_from_dict(
                {
                    **shared,
                    "layer_id": layer_ids[position],
                    "alert_state": view.states[position],
                    "metrics": view.metrics[position],
                    "pressure": pressures[position] if has_data[position] else None,
                    "action": action,
                    "change": ActuatorChange.trusted_from_dict(changes[position]),
                    "applied": moved[position] and applies,
                    "reason": reasons[position],
                }
            )
        )
    return made


def _reasons(view: SnapshotArrays, pressure: np.ndarray, verdicts: Verdicts, config: PressureConfig) -> list[str]:
    """Why, in words, for each layer (``""`` for a layer not in the snapshot)."""
    in_snapshot, has_data, max_vio = view.in_snapshot.tolist(), view.has_data.tolist(), view.max_vio.tolist()
    pressures, acting, relaxing = pressure.tolist(), verdicts.acting.tolist(), verdicts.relaxing.tolist()
    moved, harmed = verdicts.moved.tolist(), verdicts.harmed.tolist()
    newly_abstained, allowed = verdicts.newly_abstained.tolist(), verdicts.allowed.tolist()
    outside_band, warranted = verdicts.outside_band.tolist(), verdicts.warranted.tolist()
    abstained, step_scale = verdicts.abstained.tolist(), verdicts.step_scale.tolist()
    frozen, tolerance = verdicts.frozen, f"{config.tolerance}"
    reasons = []
    for position, vio in enumerate(max_vio):
        words: str
        if not in_snapshot[position]:
            words = ""
        elif not has_data[position]:
            words = "no data in this window"
        elif not allowed[position]:
            words = "layer not in the allow-list"
        elif abstained[position]:
            words = (
                f"abstains: {config.abstain_after} adjustments in a row raised MaxVio (now {vio:.3f})"
                if newly_abstained[position]
                else "abstaining since repeated adjustments made the layer worse"
            )
        elif frozen is not None and (outside_band[position] and warranted[position]):
            words = f"{frozen}: would adjust (pressure {pressures[position]:.3f}, MaxVio {vio:.3f})"
        elif verdicts.warming_up and outside_band[position]:
            words = f"warm-up: snapshot {verdicts.snapshots_seen} of {config.warmup}"
        elif acting[position]:
            verb = "adjusted" if moved[position] else "at its bounds"
            back_off = " (backed off: MaxVio rose after the last adjustment)" if harmed[position] else ""
            mode = "continuous balancing" if config.mode == "continuous" else f"layer is {view.states[position].value}"
            words = (
                f"{verb} towards under-used experts: {mode}, pressure {pressures[position]:.3f}, "
                f"MaxVio {vio:.3f} > tolerance {tolerance}, step scale {step_scale[position]:.2f}{back_off}"
            )
        elif relaxing[position] and moved[position]:
            words = f"relaxed the bias by {config.relax_rate:g}: balanced with margin (MaxVio {vio:.3f})"
        elif not outside_band[position]:
            words = f"within tolerance: MaxVio {vio:.3f} <= {tolerance}"
        else:
            words = f"layer is {view.states[position].value}: no action warranted in {config.mode} mode"
        if config.dry_run and moved[position]:
            words = "dry run, not applied: " + words
        reasons.append(words)
    return reasons
