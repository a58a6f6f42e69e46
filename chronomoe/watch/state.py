"""What ``chronomoe watch`` shows, kept up to date from the records as they arrive: :class:`WatchState`.

The state is a fold over records: :meth:`WatchState.add_snapshot` takes a
:class:`~chronomoe.report.rows.SnapshotRow` (its layers' states, Neff/n, Top2
and dead experts, its transitions), :meth:`WatchState.add_decision` a
:class:`~chronomoe.report.decision_rows.DecisionRow`. Only the last
``history`` snapshots of each layer and the last few transitions and
decisions are kept, so memory stays flat however long the run.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field

from ..alerts import AlertTransition
from ..report.decision_rows import DecisionRow
from ..report.rows import NO_DATA, STATE_CODES, SnapshotRow

RECENT = 8
"""Transitions kept for display."""
RECENT_DECISIONS = 256
"""Acting decisions kept for display (a controller may act on every layer at one snapshot)."""


@dataclass
class LayerTrace:
    """One layer's recent history: ``state`` the last snapshot's code (:data:`~chronomoe.report.rows.NO_DATA`
    without data); ``diversity`` (Neff/n) and ``top2`` NaN where no data; ``dead`` the last count with data."""

    layer_id: int
    n_experts: int
    history: int
    state: int = NO_DATA
    dead: int = 0
    diversity: deque[float] = field(default_factory=deque)
    top2: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.diversity = deque(maxlen=self.history)
        self.top2 = deque(maxlen=self.history)

    @property
    def severity(self) -> tuple[int, float]:
        """Sort key, worst first when sorted descending: state, then how low Neff/n is."""
        last = self.diversity[-1] if self.diversity else math.nan
        return self.state, 0.0 if math.isnan(last) else 1.0 - last


@dataclass
class WatchState:
    """The followed run, as far as its records have arrived (see the module docstring)."""

    mode: str = "TRAIN"
    history: int = 60
    run_id: str = ""
    model_name: str = ""
    snapshots: int = 0
    last_step: int | None = None
    train_loss: float = math.nan
    val_loss: float = math.nan
    layers: dict[int, LayerTrace] = field(default_factory=dict)
    transitions: deque[AlertTransition] = field(default_factory=lambda: deque(maxlen=RECENT))
    decisions: deque[DecisionRow] = field(default_factory=lambda: deque(maxlen=RECENT_DECISIONS))
    action_totals: Counter[str] = field(default_factory=Counter)
    controllers: dict[str, None] = field(default_factory=dict)

    def add_snapshot(self, row: SnapshotRow) -> list[AlertTransition]:
        """Fold in one snapshot (ignored when of another mode); returns its transitions."""
        if row.mode != self.mode:
            return []
        self.run_id, self.model_name = row.run_id, row.model_name
        self.snapshots += 1
        self.last_step = row.step
        if not math.isnan(row.train_loss):
            self.train_loss = row.train_loss
        if not math.isnan(row.val_loss):
            self.val_loss = row.val_loss
        for position, layer_id in enumerate(row.layer_ids.tolist()):
            n_experts = int(row.n_experts[position])
            trace = self.layers.get(layer_id)
            if trace is None:
                trace = self.layers[layer_id] = LayerTrace(layer_id, n_experts, self.history)
            state = int(row.states[position])
            trace.state, trace.n_experts = state, n_experts
            trace.diversity.append(float(row.n_effective[position]) / n_experts)
            trace.top2.append(float(row.top2_share[position]))
            if state != NO_DATA:
                trace.dead = int(row.dead_experts[position])
        self.transitions.extend(row.transitions)
        return list(row.transitions)

    def add_decision(self, decision: DecisionRow) -> bool:
        """Fold in one decision (ignored when of another mode); returns whether it acted (an action not "none")."""
        if decision.mode != self.mode:
            return False
        self.controllers.setdefault(decision.controller)
        self.action_totals[decision.action] += 1
        if decision.action == "none":
            return False
        self.decisions.append(decision)
        return True

    def count(self, state: str) -> int:
        """Layers whose last snapshot is in ``state`` (an :class:`~chronomoe.alerts.AlertState` value)."""
        code = next(code for alert_state, code in STATE_CODES.items() if alert_state.value == state)
        return sum(1 for trace in self.layers.values() if trace.state == code)

    def worst_first(self) -> list[LayerTrace]:
        """The layers, worst first (collapse_confirmed, pre_collapse, then lowest Neff/n), ties by layer id."""
        return sorted(self.layers.values(), key=lambda trace: (-trace.severity[0], -trace.severity[1], trace.layer_id))
