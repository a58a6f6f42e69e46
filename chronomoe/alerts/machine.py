"""The per-layer alert state machine, built on the ``transitions`` package.

States (:class:`AlertState`): ``nominal -> pre_collapse -> collapse_confirmed``.

Each snapshot a layer's machine is fed two booleans, whether the PRE_COLLAPSE
condition and the COLLAPSE_CONFIRMED condition hold (see
:class:`~chronomoe.alerts.rules.AlertRules`), or nothing when the layer's
window held no token (``no_data``: every streak and the state stay as they
are). It keeps three streaks, in consecutive data-holding snapshots:

* ``pre_streak``: the PRE_COLLAPSE condition held;
* ``collapse_streak``: the COLLAPSE_CONFIRMED condition held;
* ``healthy_streak``: the condition that keeps the current state failed
  (for ``collapse_confirmed`` its collapse condition; otherwise both);
  reset to 0 by every transition.

A streak reaching its persistence makes its trigger *ready*; the transition
table (:data:`TRANSITION_TABLE`, the data a ``transitions.Machine`` is built
from) decides whether the trigger moves the layer and where:

=========  ==========================================  ==================  ==========================================
trigger    ready when                                  from                to
=========  ==========================================  ==================  ==========================================
confirm    ``collapse_streak >= confirm_persistence``  nominal,            collapse_confirmed
                                                       pre_collapse
warn       ``pre_streak >= pre_persistence``           nominal             pre_collapse
resolve    ``healthy_streak >= resolve_persistence``   collapse_confirmed  pre_collapse if ``pre_streak`` reached its
                                                                           persistence, else nominal
resolve                                                pre_collapse        nominal
=========  ==========================================  ==================  ==========================================

At most one transition happens per snapshot; triggers are tried in the order
confirm, warn, resolve, so a layer that meets both persistences at once goes
``nominal -> collapse_confirmed`` in one transition.

Cost: a layer's machine is a handful of integers, so creating and stepping
thousands of them is cheap. The transition table is executed by one
``transitions.Machine`` (:data:`STATE_TABLE`): at import it fires every
trigger from every state it leaves, under each value of the table's
condition, and keeps the outcome; a layer's transition is then a lookup of
that outcome. The machines of any number of banks and threads share it with
no lock, because the outcomes never change.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from enum import Enum
from typing import Any, NamedTuple

from pydantic import Field
from transitions import Machine

from ..events import Integer, Mode, Record
from .rules import AlertRules


class AlertState(str, Enum):
    """Alert state of one layer."""

    NOMINAL = "nominal"
    PRE_COLLAPSE = "pre_collapse"
    COLLAPSE_CONFIRMED = "collapse_confirmed"

    def __str__(self) -> str:
        return self.value


TRANSITION_TABLE: list[dict[str, Any]] = [
    {"trigger": "confirm", "source": ["nominal", "pre_collapse"], "dest": "collapse_confirmed"},
    {"trigger": "warn", "source": "nominal", "dest": "pre_collapse"},
    {"trigger": "resolve", "source": "collapse_confirmed", "dest": "pre_collapse", "conditions": "pre_persisted"},
    {"trigger": "resolve", "source": "collapse_confirmed", "dest": "nominal"},
    {"trigger": "resolve", "source": "pre_collapse", "dest": "nominal"},
]
"""The alert transitions, in the form ``transitions.Machine(transitions=...)`` takes."""

TRIGGER_ORDER = ("confirm", "warn", "resolve")
"""Triggers tried each snapshot, in this order; the first ready one with a transition out of the state fires."""


class StateChange(NamedTuple):
    """One transition a machine made: trigger name, source and destination states."""

    trigger: str
    source: AlertState
    dest: AlertState


class _Cursor:
    """The model the shared ``transitions.Machine`` moves: one layer's state, loaded for one trigger."""

    state: str
    pre_persisted_now = False

    def pre_persisted(self) -> bool:  # the table's condition
        return self.pre_persisted_now


class StateTable:
    """A ``transitions.Machine`` built from :data:`TRANSITION_TABLE`, and the outcome of each of its transitions.

    Attributes:
        machine: the ``transitions.Machine`` (states, triggers and conditions as ``transitions`` reads them).
        valid_triggers: per state, the triggers that have a transition out of it.
        outcomes: ``(state, trigger, pre_persisted) -> destination`` for every valid trigger of every
            state and both values of the table's condition, as :meth:`fire` computed them.
    """

    def __init__(self) -> None:
        self._cursor = _Cursor()
        self.machine = Machine(
            model=self._cursor,
            states=[state.value for state in AlertState],
            transitions=TRANSITION_TABLE,
            initial=AlertState.NOMINAL.value,
            auto_transitions=False,
        )
        self.valid_triggers: dict[str, frozenset[str]] = {
            state.value: frozenset(self.machine.get_triggers(state.value)) for state in AlertState
        }
        self.outcomes: dict[tuple[str, str, bool], str] = {
            (state, trigger, pre_persisted): self.fire(state, trigger, pre_persisted)
            for state, triggers in self.valid_triggers.items()
            for trigger in triggers
            for pre_persisted in (False, True)
        }

    def fire(self, state: str, trigger: str, pre_persisted: bool) -> str:
        """Run ``trigger`` from ``state`` on the ``transitions.Machine``: the state it leads to.

        ``transitions.MachineError`` when the trigger has no transition out of ``state``.
        """
        self.machine.set_state(state, model=self._cursor)
        self._cursor.pre_persisted_now = pre_persisted
        getattr(self._cursor, trigger)()
        return self._cursor.state


STATE_TABLE = StateTable()
"""The one state table every alert machine fires its transitions through."""


class AlertMachine:
    """Alert state and streaks of one layer.

    Args:
        rules: thresholds' persistences (default: ``specs/default_rules.json``).
        layer_id: the layer it watches (informational).
        state: the initial state.
    """

    __slots__ = ("collapse_streak", "healthy_streak", "layer_id", "pre_streak", "rules", "state")

    def __init__(
        self, rules: AlertRules | None = None, layer_id: int = 0, state: AlertState | str = AlertState.NOMINAL
    ) -> None:
        self.rules = rules if rules is not None else AlertRules.default()
        self.layer_id = layer_id
        self.state: str = AlertState(state).value
        self.pre_streak = 0
        self.collapse_streak = 0
        self.healthy_streak = 0

    @property
    def alert_state(self) -> AlertState:
        return AlertState(self.state)

    def observe(self, pre: bool, collapse: bool) -> StateChange | None:
        """Feed one data-holding snapshot's conditions; return the transition made, if any."""
        self.pre_streak = self.pre_streak + 1 if pre else 0
        self.collapse_streak = self.collapse_streak + 1 if collapse else 0
        holds = collapse if self.state == "collapse_confirmed" else (pre or collapse)
        self.healthy_streak = 0 if holds else self.healthy_streak + 1

        rules = self.rules
        ready = {
            "confirm": self.collapse_streak >= rules.confirm_persistence,
            "warn": self.pre_streak >= rules.pre_persistence,
            "resolve": self.healthy_streak >= rules.resolve_persistence,
        }
        valid = STATE_TABLE.valid_triggers[self.state]
        for trigger in TRIGGER_ORDER:
            if ready[trigger] and trigger in valid:
                source = self.state
                self.state = STATE_TABLE.outcomes[source, trigger, self.pre_streak >= rules.pre_persistence]
                self.healthy_streak = 0
                return StateChange(trigger, AlertState(source), AlertState(self.state))
        return None

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state (JSON-safe) for checkpoints and ``alert_history``."""
        return {
            "state": self.state,
            "pre_streak": self.pre_streak,
            "collapse_streak": self.collapse_streak,
            "healthy_streak": self.healthy_streak,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, exactly (an unknown state is a ``ValueError`` naming it)."""
        self.state = AlertState(state["state"]).value
        self.pre_streak = int(state["pre_streak"])
        self.collapse_streak = int(state["collapse_streak"])
        self.healthy_streak = int(state["healthy_streak"])


class AlertTransition(Record):
    """A layer's alert state change, published on the bus and written to ``alerts.jsonl``.

    ``metrics`` holds the layer's metrics at the snapshot that caused it
    (``n_effective``, ``top2_share``, ``dead_expert_count``, ...).
    """

    run_id: str
    step: Integer = Field(ge=0)
    mode: Mode = "TRAIN"
    layer_id: Integer = Field(ge=0)
    source: AlertState
    dest: AlertState
    trigger: str
    pre_streak: Integer = Field(ge=0)
    collapse_streak: Integer = Field(ge=0)
    healthy_streak: Integer = Field(ge=0)
    metrics: dict[str, float | int]
    timestamp: float = Field(default_factory=time.time)


class AlertBank:
    """The alert machines of many layers, one per layer id.

    Layers are created on first use, in ``nominal``. ``state_dict()`` is a
    plain ``{layer_id: {...}}`` dict; the seed's ``alert_history`` argument
    is such a dict.
    """

    def __init__(self, rules: AlertRules | None = None) -> None:
        self.rules = rules if rules is not None else AlertRules.default()
        self._layers: dict[int, AlertMachine] = {}

    def __getitem__(self, layer_id: int) -> AlertMachine:
        machine = self._layers.get(layer_id)
        if machine is None:
            machine = self._layers[layer_id] = AlertMachine(self.rules, layer_id)
        return machine

    def __contains__(self, layer_id: int) -> bool:
        return layer_id in self._layers

    def __len__(self) -> int:
        return len(self._layers)

    def step(
        self,
        layer_ids: Iterable[int],
        pre: Iterable[bool],
        collapse: Iterable[bool],
        no_data: Iterable[bool],
    ) -> list[tuple[int, StateChange]]:
        """Feed one snapshot to the given layers (in order); return their transitions in layer order.

        A ``no_data`` layer is created if new but not stepped.
        """
        changes = []
        for layer_id, layer_pre, layer_collapse, empty in zip(layer_ids, pre, collapse, no_data, strict=True):
            machine = self[layer_id]
            if empty:
                continue
            change = machine.observe(layer_pre, layer_collapse)
            if change is not None:
                changes.append((layer_id, change))
        return changes

    def state_dict(self) -> dict[int, dict[str, Any]]:
        return {layer_id: machine.state_dict() for layer_id, machine in self._layers.items()}

    def load_state_dict(self, state: dict[Any, dict[str, Any]]) -> None:
        """Restore layers from :meth:`state_dict` (keys may be ints or their strings, as after JSON)."""
        for layer_id, layer_state in state.items():
            self[int(layer_id)].load_state_dict(layer_state)
