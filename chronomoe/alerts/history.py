"""The ``alert_history`` dict that carries alert persistence between seed-style snapshot calls, in both its forms.

``SystemSnapshot.from_events(..., alert_history=history)`` (and
``from_counts``) reads each layer's alert state from ``history`` and writes
it back after the snapshot, keyed by layer id. Two forms of a layer's entry
are read:

* the current form, what :func:`alert_history_of` writes:
  ``{"state", "pre_streak", "collapse_streak", "healthy_streak"}``
  (:meth:`~chronomoe.alerts.AlertMachine.state_dict`), plus the seed's two
  counters ``"pre_collapse_count"`` and ``"collapse_count"``, equal to the
  two streaks, so that code reading the seed's keys keeps working;
* the seed's form, ``{"pre_collapse_count": n, "collapse_count": m}``:
  consecutive snapshots meeting each condition. Read as those streaks, in the
  state the seed's alerts implied: ``collapse_confirmed`` when
  ``m >= confirm_persistence``, else ``pre_collapse`` when
  ``n >= pre_persistence``, else ``nominal``; no healthy streak.

An entry holding both forms whose counters differ from its streaks had its
counters changed by code written for the seed (a reset, say): the counters
are taken as the streaks. Anything else raises
:class:`~chronomoe.errors.InvalidInputError` naming the entry and the
expected forms.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .machine import AlertBank, AlertState
from .rules import AlertRules

SEED_COUNTERS = {"pre_collapse_count": "pre_streak", "collapse_count": "collapse_streak"}
"""The seed's per-layer counters and the streak each one is."""

STATE_KEYS = ("state", "pre_streak", "collapse_streak", "healthy_streak")

_EXPECTED = (
    "must be a dict {'state', 'pre_streak', 'collapse_streak', 'healthy_streak'} as the previous call wrote it, "
    "or the seed's {'pre_collapse_count': n, 'collapse_count': m}"
)


def load_alert_history(bank: AlertBank, history: Mapping[Any, Any]) -> None:
    """Set the machines of ``bank`` from ``history`` (either form; see the module docstring)."""
    for key, entry in history.items():
        layer_id = _layer_id(key)
        bank[layer_id].load_state_dict(_machine_state(f"alert_history[{key!r}]", entry, bank.rules))


def alert_history_of(bank: AlertBank) -> dict[int, dict[str, Any]]:
    """Every layer of ``bank`` in the current form, with the seed's counters."""
    return {
        layer_id: {**state, **{counter: state[streak] for counter, streak in SEED_COUNTERS.items()}}
        for layer_id, state in bank.state_dict().items()
    }


def _layer_id(key: Any) -> int:
    """A layer id key: an integer >= 0, or its decimal string (as after a JSON round trip)."""
    if isinstance(key, str) and key.isdecimal():
        return int(key)
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool) and key >= 0:
        return int(key)
    raise InvalidInputError(f"alert_history[{key!r}]", key, "keys must be layer ids (integers >= 0)")


def _machine_state(name: str, entry: Any, rules: AlertRules) -> dict[str, Any]:
    if not isinstance(entry, Mapping):
        raise InvalidInputError(name, entry, _EXPECTED)
    has_state = all(key in entry for key in STATE_KEYS)
    has_counters = all(counter in entry for counter in SEED_COUNTERS)
    if not has_state and not has_counters:
        raise InvalidInputError(name, dict(entry), _EXPECTED)
    values = {key: _streak(f"{name}[{key!r}]", entry[key]) for key in (*STATE_KEYS[1:], *SEED_COUNTERS) if key in entry}
    if has_state:
        state = {key: entry["state"] if key == "state" else values[key] for key in STATE_KEYS}
        try:
            state["state"] = AlertState(state["state"]).value
        except ValueError:
            raise InvalidInputError(
                f"{name}['state']", entry["state"], f"must be one of {[s.value for s in AlertState]}"
            ) from None
        if has_counters:
            state.update({streak: values[counter] for counter, streak in SEED_COUNTERS.items()})
        return state
    pre, collapse = values["pre_collapse_count"], values["collapse_count"]
    if collapse >= rules.confirm_persistence:
        implied = AlertState.COLLAPSE_CONFIRMED
    elif pre >= rules.pre_persistence:
        implied = AlertState.PRE_COLLAPSE
    else:
        implied = AlertState.NOMINAL
    return {"state": implied.value, "pre_streak": pre, "collapse_streak": collapse, "healthy_streak": 0}


def _streak(name: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InvalidInputError(name, value, "must be an integer >= 0 (consecutive snapshots)")
    return int(value)
