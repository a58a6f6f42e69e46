"""PressureController: a bounded, audited controller that moves a router bias towards balanced routing.

Each TRAIN snapshot, for every layer it may act on, it computes a *pressure*
from the layer's topology and moves a selection-only bias (auxiliary-loss-free
balancing, Wang et al. 2024) towards the under-used experts:

* **pressure** (dimensionless, 0..1) is the largest of the Neff deficit
  ``(neff_ratio * n - Neff) / (neff_ratio * n - 1)``, the Top2 excess
  ``(Top2 - pre_top2) / (1 - pre_top2)`` (layers of more than 2 experts), the
  MaxVio excess ``(MaxVio - tolerance) / (n - 1 - tolerance)`` and the dead
  fraction, each clipped to 0..1 (``neff_ratio`` and ``pre_top2`` from the
  alert rules);
* **direction**: ``1/n - share`` per expert, scaled so that its largest
  component is 1: positive for under-used experts, negative for over-used
  ones, summing to 0;
* **update**: ``rate * step_scale * (0.5 + 0.5 * pressure) * direction``
  (between half and the full rate: stronger pressure moves faster, weak
  pressure near the thresholds still moves), then fitted into the box that
  both bounds hold in: ``|change| <= max_step`` per expert and decision,
  ``|bias| <= max_bias``. Anti-windup: an expert already at its
  bound is not pushed further (it is held and the rest of the update is
  re-centred), then the whole update is scaled down until it fits; so the
  bias stays mean-centred (it sums to 0 over a layer's experts) and never
  integrates while clamped.

When it acts (mode ``"alert"``, the default): on layers whose alert state is
``pre_collapse`` or ``collapse_confirmed``, and after they leave it until their
MaxVio is back within ``tolerance`` (a rescue finishes its job: a layer that
merely left its alert state is often still far from balance), or for at most
``hold_for`` snapshots when set; mode
``"continuous"`` acts on every layer outside the tolerance band, as
DeepSeek-V3's balancing does. Never: inside the tolerance band (MaxVio <=
``tolerance``), on INFER snapshots, during ``warmup`` TRAIN snapshots, on layers
outside the ``layers`` allow-list, on layers without data, while frozen.

Safety beyond the bounds:

* **harm guard**: when a layer's MaxVio rises by more than ``harm_margin``
  after an adjustment (MaxVio, not pressure: pressure saturates at 1 in a
  deep collapse, MaxVio keeps measuring), its step scale halves (back off); after
  ``abstain_after`` such adjustments in a row it abstains from that layer for
  the rest of the run (:meth:`PressureController.reset_abstention` lifts it),
  and each decision says so. A good adjustment restores the step scale by
  half again, up to 1;
* **relaxation** (off by default, ``relax_rate > 0``): a nominal layer whose
  MaxVio has stayed below ``relax_margin * tolerance`` for ``relax_after``
  snapshots has its bias shrunk by ``relax_rate`` per snapshot; the first
  snapshot above that margin stops it, long before the alert rules could
  fire again, because the cause of a collapse usually persists;
* **dry run** (``dry_run=True``): decides and records everything exactly as
  if applying, on a host copy of the bias; the model is never touched;
* **freeze**: :meth:`PressureController.freeze` / :meth:`~PressureController.unfreeze`
  at run time, or the environment variable ``CHRONOMOE_CONTROLLER_FROZEN=1``:
  decisions are still made and recorded, nothing is changed.

Units: the bias is in the actuator's units. The bias the actuator installs
on softmax routers is added to the router *logits* (the defaults, a step of
0.2 and a bound of 4.0, are in logits: a bound of 4 lets an expert's odds of
selection move by up to e^4 either way); a family's own bias is in that
family's score units (DeepSeek-V3's ``e_score_correction_bias`` is added to
sigmoid scores in 0..1, where bounds of about 0.5 and steps of about 0.01 to
0.05 are the scale).

Every decision, "none" included, is a :class:`~chronomoe.controller.ControlDecision`
with the reason in words; decisions are a deterministic function of the
snapshots (their timestamp is the snapshot's), the configuration and the
controller's state, which :meth:`PressureController.state_dict` carries.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from chronomoe.alerts import AlertRules, AlertState, AlertTransition
from chronomoe.errors import InvalidInputError
from chronomoe.snapshots import SystemSnapshot

from .actuators import Actuator, HostBiasActuator, check_layout
from .decisions import ControlDecision
from .pressure_config import PressureConfig
from .snapshot_arrays import SnapshotArrays, Workspace, fit_into_box
from .verdicts import Verdicts, change_summaries, decisions

FREEZE_VARIABLE = "CHRONOMOE_CONTROLLER_FROZEN"
"""Set to ``1``, ``true`` or ``yes`` to freeze every PressureController of the process."""

ALERTING = frozenset((AlertState.PRE_COLLAPSE, AlertState.COLLAPSE_CONFIRMED))


class PressureController:
    """Bounded, audited balancing through a selection-only router bias (see the module docstring).

    Args:
        config: the policy (default: :class:`PressureConfig`'s defaults).
        rules: the alert rules whose thresholds define pressure (default: the packaged rules).
        overrides: fields of :class:`PressureConfig`, e.g. ``PressureController(dry_run=True)``.

    A Monitor binds the actuator it found on the attached model
    (:meth:`bind`); without one, the controller acts on a host copy of the
    bias it makes from the first snapshot's layers.
    """

    name = "pressure"

    def __init__(self, config: PressureConfig | None = None, rules: AlertRules | None = None, **overrides: Any) -> None:
        base = config.model_dump() if config is not None else {}
        try:
            self.config = PressureConfig.model_validate({**base, **overrides})
        except ValueError as error:
            raise InvalidInputError("PressureConfig", overrides, str(error).splitlines()[0]) from None
        self.rules = rules if rules is not None else AlertRules.default()
        self.config_hash = self.config.digest()
        self.actuator: Actuator | None = None
        self._frozen_reason: str | None = None
        self._snapshots_seen = 0
        self._layer_state: dict[str, np.ndarray] = {}

    # -- wiring and switches ---------------------------------------------------------------
    @property
    def wants_actuator(self) -> bool:
        """Whether it needs a real actuator on the model (not in dry-run mode)."""
        return not self.config.dry_run

    def bind(self, actuator: Actuator) -> None:
        """Act through ``actuator`` from now on (its current values are the starting bias)."""
        self.actuator = actuator
        self._layer_state = _fresh_layer_state(len(actuator.layer_ids))
        self._workspace = Workspace(len(actuator.layer_ids), max(actuator.n_experts))
        self._allowed = np.isin(actuator.layer_ids, self.config.layers or [])  # used when config.layers is set

    def freeze(self, reason: str = "frozen by the operator") -> None:
        """Stop changing the model (decisions go on being made and recorded) until :meth:`unfreeze`."""
        self._frozen_reason = reason

    def unfreeze(self) -> None:
        self._frozen_reason = None

    @property
    def frozen(self) -> str | None:
        """Why it is frozen (the method's reason, or the environment variable), or ``None``."""
        if self._frozen_reason is not None:
            return self._frozen_reason
        if os.environ.get(FREEZE_VARIABLE, "").strip().lower() in ("1", "true", "yes"):
            return f"frozen by {FREEZE_VARIABLE}"
        return None

    def reset_abstention(self, layer_id: int | None = None) -> None:
        """Let it act again on ``layer_id`` (default: every layer) after it abstained."""
        if self.actuator is None:
            return
        positions = self._positions([layer_id]) if layer_id is not None else slice(None)
        self._layer_state["abstained"][positions] = False
        self._layer_state["harm_streak"][positions] = 0
        self._layer_state["step_scale"][positions] = 1.0

    # -- the Controller protocol -------------------------------------------------------------
    def on_transition(self, transition: AlertTransition) -> None:
        """Transitions need no separate decision: the snapshot that carries them is decided on."""
        return None

    def on_snapshot(self, snapshot: SystemSnapshot) -> list[ControlDecision] | None:
        """One decision per layer of a TRAIN snapshot (``None`` for INFER snapshots)."""
        if snapshot.mode != "TRAIN":
            return None
        actuator = self._actuator_for(snapshot)
        view = SnapshotArrays.of(snapshot, actuator, self._workspace)
        self._snapshots_seen += 1
        return self._decide(snapshot, actuator, view)

    def _actuator_for(self, snapshot: SystemSnapshot) -> Actuator:
        """The bound actuator; without one, a host bias over the snapshot's layers (grown when new layers
        appear, keeping what it holds for the others)."""
        previous = self.actuator
        layers = {layer.layer_id: layer.n_experts for layer in snapshot.layers}
        if previous is not None and not (
            isinstance(previous, HostBiasActuator) and set(layers) - set(previous.layer_ids)
        ):
            return previous
        known = {} if previous is None else dict(zip(previous.layer_ids, previous.n_experts, strict=True))
        ids = sorted({**known, **layers})
        host = HostBiasActuator(ids, [layers.get(layer_id) or known[layer_id] for layer_id in ids])
        old_state = self._layer_state
        self.bind(host)
        if previous is not None:
            rows = [ids.index(layer_id) for layer_id in previous.layer_ids]
            values, old = host.read(), previous.read()
            values[rows, : old.shape[1]] = old
            host.apply(values, np.isin(ids, list(previous.layer_ids)))
            for key, column in old_state.items():
                self._layer_state[key][rows] = column
        return host

    def _positions(self, layer_ids: list[int]) -> list[int]:
        assert self.actuator is not None
        return [self.actuator.layer_ids.index(layer_id) for layer_id in layer_ids]

    # -- the policy -------------------------------------------------------------------------------
    def _decide(self, snapshot: SystemSnapshot, actuator: Actuator, view: SnapshotArrays) -> list[ControlDecision]:
        config, state = self.config, self._layer_state
        n = np.asarray(actuator.n_experts, dtype=np.float64)
        pressure = self._pressure(view, n)
        frozen = self.frozen
        warming_up = self._snapshots_seen <= config.warmup

        # Harm guard: judge the last adjustment of each layer by the pressure it led to.
        judged = state["adjusted_last"] & view.has_data
        harmed = judged & (view.max_vio > state["last_max_vio"] + config.harm_margin)
        helped = judged & ~harmed
        state["step_scale"] = np.where(harmed, state["step_scale"] * 0.5, state["step_scale"])
        state["step_scale"] = np.where(helped, np.minimum(1.0, state["step_scale"] * 1.5), state["step_scale"])
        state["harm_streak"] = np.where(harmed, state["harm_streak"] + 1, np.where(helped, 0, state["harm_streak"]))
        newly_abstained = harmed & ~state["abstained"] & (state["harm_streak"] >= config.abstain_after)
        state["abstained"] |= newly_abstained

        alerting = np.array([layer_state in ALERTING for layer_state in view.states], dtype=bool)
        outside_band = view.has_data & (view.max_vio > config.tolerance)
        held = state["hold"] > 0  # still engaged after the layer left its alert state
        if config.hold_for is None:  # engaged from an alert until the layer is back within tolerance
            state["hold"] = (alerting | (held & outside_band)).astype(np.int64)
        else:  # snapshots left
            state["hold"] = np.where(alerting, config.hold_for, np.maximum(state["hold"] - 1, 0))
        warranted = alerting | held if config.mode == "alert" else np.ones_like(alerting)
        allowed = view.in_snapshot if config.layers is None else view.in_snapshot & self._allowed
        acting = allowed & outside_band & warranted & ~state["abstained"] & (not warming_up) & (frozen is None)

        balanced = view.has_data & ~alerting & (view.max_vio < config.relax_margin * config.tolerance)
        state["relax_streak"] = np.where(balanced, state["relax_streak"] + 1, 0)
        relaxing = (
            allowed
            & ~acting
            & (config.relax_rate > 0)
            & (state["relax_streak"] >= config.relax_after)
            & (frozen is None)
        )

        before = actuator.read()
        after, moved = self._move(before, view, pressure, acting, relaxing, n)
        if moved.any():
            actuator.apply(after, moved)
        state["adjusted_last"] = acting & moved
        state["last_max_vio"] = np.where(view.has_data, view.max_vio, state["last_max_vio"])
        verdicts = Verdicts(
            allowed=allowed,
            outside_band=outside_band,
            warranted=warranted,
            acting=acting,
            relaxing=relaxing,
            moved=moved,
            harmed=harmed,
            newly_abstained=newly_abstained,
            abstained=state["abstained"],
            step_scale=state["step_scale"],
            warming_up=warming_up,
            frozen=frozen,
            snapshots_seen=self._snapshots_seen,
        )
        return decisions(
            snapshot,
            view,
            pressure,
            verdicts,
            change_summaries(before, after, n, config.max_bias, scratch=self._workspace.scratch),
            template=self._decision_template(actuator),
            layer_ids=actuator.layer_ids,
            config=config,
            applies=actuator.changes_model and not config.dry_run,
        )

    def _move(
        self,
        before: np.ndarray,
        view: SnapshotArrays,
        pressure: np.ndarray,
        acting: np.ndarray,
        relaxing: np.ndarray,
        n: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The bias after this decision (``[L, width]``, the workspace's ``after`` or ``before`` itself when no layer
        moves) and which layers it moved (``[L]``): acting layers pushed along their direction, relaxing layers
        shrunk towards 0, both fitted into the bounds' box."""
        config = self.config
        moving = acting | relaxing
        if not moving.any():
            return before, moving
        workspace = self._workspace
        if moving.all():  # the box fit on the moving rows only, in the workspace's first rows
            rows: slice | np.ndarray = slice(None)
            count = len(moving)
        else:
            rows = np.flatnonzero(moving)
            count = len(rows)
        gain = config.rate * self._layer_state["step_scale"] * (0.5 + 0.5 * pressure) * acting
        desired = np.multiply(gain[rows, None], view.direction[rows], out=workspace.change[:count])
        if relaxing.any():
            desired += (-config.relax_rate * relaxing[rows])[:, None] * before[rows]
        scratch = workspace.scratch[:count]
        change = fit_into_box(
            desired, before[rows], n[rows], config.max_step, config.max_bias, out=desired, scratch=scratch
        )
        moved = np.zeros_like(moving)
        moved[rows] = np.abs(change, out=scratch).max(axis=1) > 0
        after = workspace.after
        np.copyto(after, before)
        after[rows] += change
        return after, moved

    def _decision_template(self, actuator: Actuator) -> dict[str, Any]:
        """The fields every decision of this controller and actuator shares."""
        return {
            "controller": self.name,
            "config_hash": self.config_hash,
            "heat": None,
            "forgetting": None,
            "actuator": actuator.name,
            "dry_run": self.config.dry_run,
        }

    def _pressure(self, view: SnapshotArrays, n: np.ndarray) -> np.ndarray:
        rules, config = self.rules, self.config
        with np.errstate(divide="ignore", invalid="ignore"):
            target = rules.neff_ratio * n
            neff_deficit = np.where(target > 1, (target - view.n_effective) / (target - 1), 0.0)
            top2_excess = np.where(n > 2, (view.top2_share - rules.pre_top2) / (1 - rules.pre_top2), 0.0)
            span = n - 1 - config.tolerance
            vio_excess = np.where(span > 0, (view.max_vio - config.tolerance) / span, 0.0)
        # The largest term clipped to 0..1, a NaN term counting as 0: fmax skips NaN, minimum keeps it.
        pressure = np.zeros_like(n)
        for term in (neff_deficit, top2_excess, vio_excess, view.dead_fraction):
            np.fmax(pressure, np.minimum(term, 1.0), out=pressure)
        return np.where(view.has_data, pressure, 0.0)

    # -- checkpointing ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything its future decisions depend on, as plain values."""
        return {
            "config": self.config.model_dump(),
            "snapshots_seen": self._snapshots_seen,
            "frozen_reason": self._frozen_reason,
            "layer_state": {key: value.tolist() for key, value in self._layer_state.items()},
            "actuator": None if self.actuator is None else self.actuator.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (bind the same actuator first when acting on a model)."""
        if PressureConfig.model_validate(state["config"]) != self.config:
            raise InvalidInputError("state.config", state["config"], "was saved by a controller of another policy")
        actuator_state = state["actuator"]
        if actuator_state is not None:
            if self.actuator is None:
                self.bind(HostBiasActuator(actuator_state["layer_ids"], actuator_state["n_experts"]))
            assert self.actuator is not None
            check_layout(self.actuator, actuator_state)
            self.actuator.load_state_dict(actuator_state)
        self._snapshots_seen = int(state["snapshots_seen"])
        self._frozen_reason = state["frozen_reason"]
        fresh = _fresh_layer_state(0 if self.actuator is None else len(self.actuator.layer_ids))
        self._layer_state = {
            key: np.asarray(state["layer_state"].get(key, template), dtype=template.dtype)
            for key, template in fresh.items()
        }


def _fresh_layer_state(n_layers: int) -> dict[str, np.ndarray]:
    return {
        "step_scale": np.ones(n_layers),
        "harm_streak": np.zeros(n_layers, dtype=np.int64),
        "abstained": np.zeros(n_layers, dtype=bool),
        "adjusted_last": np.zeros(n_layers, dtype=bool),
        "last_max_vio": np.zeros(n_layers),
        "hold": np.zeros(n_layers, dtype=np.int64),
        "relax_streak": np.zeros(n_layers, dtype=np.int64),
    }
