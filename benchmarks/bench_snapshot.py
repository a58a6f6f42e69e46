"""Snapshot build and alert-machine stepping at DeepSeek-V3 size (58 MoE layers x 256 experts).

Measures, in one process (times in ms, medians):

* ``Monitor.observe(counts)`` as a training run uses it: a default Monitor
  (identity lens, no-op controller) writing its run folder into a temporary
  folder, one user handler subscribed to ``"snapshot"`` and one to
  ``"transition"``; and the seed-style ``SystemSnapshot.from_counts`` with an
  ``alert_history`` dict. Their counts follow the alert cycle below, so the
  snapshots make transitions, which are published, handled and written;
* a snapshot from 100- and 1,000-step windows of ``RoutingEvent`` records
  (5,800 and 58,000 events) by ``SystemSnapshot.from_events``, interleaved
  with two references that compute the per-layer metrics of the same events:
  the seed algorithm and a one-pass vectorised numpy implementation;
* one step of the alert machines of 58 and 1,000 layers, with conditions
  following the alert cycle, and with conditions that never change.

The alert cycle: under the default rules (resolve, pre and confirm
persistence 1, 3, 5) each layer repeats 1 healthy window, 3 windows meeting
only the PRE_COLLAPSE condition and 5 meeting the COLLAPSE_CONFIRMED
condition: ``nominal -> pre_collapse -> collapse_confirmed -> nominal``, 3
transitions per 9 snapshots. Layer ``l`` starts at position ``l mod 9``, so a
third of the layers transition at every snapshot: far more than in a training
run, the machines' busy case. The JSON gives the transitions made next to each
time.

Every ratio is named for its reference: ``time_ratio_to_<reference>`` is
ChronoMoE's time over the reference's (below 1: ChronoMoE is faster); the
JSON's ``references`` says what each reference computes.

Run: ``.venv/bin/python benchmarks/bench_snapshot.py``; prints JSON.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from itertools import count, cycle

import numpy as np
from _common import emit, interleaved_medians, median_seconds

from chronomoe import AlertRules, AlertTransition, Monitor, RoutingEvent, SystemSnapshot
from chronomoe.alerts import AlertBank
from chronomoe.metrics import NEARLY_DEAD_THRESHOLD, compute_layer_metrics, layer_metrics_batch

N_LAYERS, N_EXPERTS = 58, 256
RULES = AlertRules.default()

HEALTHY, PRE_ONLY, COLLAPSE = "healthy", "pre_collapse_condition_only", "collapse_condition"
ALERT_CYCLE = (
    (HEALTHY,) * RULES.resolve_persistence
    + (PRE_ONLY,) * RULES.pre_persistence
    + (COLLAPSE,) * RULES.confirm_persistence
)
"""The windows one layer goes through, over and over: nominal -> pre_collapse -> collapse_confirmed -> nominal."""

REFERENCES = {
    "seed_algorithm": (
        "the seed's per-layer form, chronomoe.metrics.compute_layer_metrics(events, layer_id) for each layer: "
        "each layer scans every event, sums its rows, then computes shares, entropy, Neff, Top2, dead, nearly dead"
    ),
    "one_pass_numpy": (
        "np.stack of the events' counts, one np.bincount over (layer, expert) cells into [layers, experts] "
        "(faster than np.add.at here), then the same metrics vectorised over layers (no validation, no Gini, "
        "no alert machines, no snapshot records)"
    ),
}
METRICS = ("entropy", "n_effective", "top2_share", "dead_expert_count", "nearly_dead_count")
"""The per-layer metrics ChronoMoE and both references compute (``LayerSnapshot`` names, the seed bundle's order)."""
CHRONOMOE_FROM_EVENTS = (
    "SystemSnapshot.from_events(events, step, n_layers=58, alert_history={}): validates the events, sums them "
    "per layer, computes every metric (Gini too), steps the alert machines, builds the snapshot records"
)


# -- the alert cycle --------------------------------------------------------------------
def cycle_windows(n_layers: int, position: int) -> list[str]:
    """Each layer's window kind at ``position`` of the alert cycle (layer ``l`` is ``l`` windows ahead)."""
    return [ALERT_CYCLE[(layer + position) % len(ALERT_CYCLE)] for layer in range(n_layers)]


def window_counts_of_kind() -> dict[str, np.ndarray]:
    """One layer's window counts ``[N_EXPERTS]`` for each kind of window, checked against the default rules.

    Healthy: every expert near 1,000 tokens. PRE_COLLAPSE only: two experts hold
    80% of the tokens, no expert is dead. COLLAPSE_CONFIRMED: two experts hold
    90%, half the experts are dead.
    """
    healthy = np.random.default_rng(0).integers(500, 1500, N_EXPERTS)
    pre_only = np.full(N_EXPERTS, 8)
    pre_only[:2] = 4000
    collapse = np.zeros(N_EXPERTS, dtype=np.int64)
    collapse[:2], collapse[2 : N_EXPERTS // 2] = 4500, 8
    kinds = {HEALTHY: healthy, PRE_ONLY: pre_only, COLLAPSE: collapse}
    batch = layer_metrics_batch(np.stack(list(kinds.values())))
    pre = RULES.pre_condition(batch.n_effective, batch.n_experts, batch.top2_share)
    confirmed = RULES.collapse_condition(batch.dead_count, batch.top2_share)
    assert pre.tolist() == [False, True, True] and confirmed.tolist() == [False, False, True], (pre, confirmed)
    return kinds


def cycle_counts() -> list[np.ndarray]:
    """The ``[N_LAYERS, N_EXPERTS]`` window counts at each position of the alert cycle."""
    kinds = window_counts_of_kind()
    return [
        np.stack([kinds[kind] for kind in cycle_windows(N_LAYERS, position)]) for position in range(len(ALERT_CYCLE))
    ]


# -- snapshots from counts ------------------------------------------------------------
def time_monitor_observe(counts_cycle: list[np.ndarray]) -> dict[str, object]:
    """``Monitor.observe`` with the JSONL writer and user handlers on both topics; what the handlers received."""
    windows, steps = cycle(counts_cycle), count(1)
    handled: Counter[str] = Counter()

    def on_snapshot(snapshot: SystemSnapshot) -> None:
        handled["snapshot"] += 1

    def on_transition(transition: AlertTransition) -> None:
        handled["transition"] += 1

    with tempfile.TemporaryDirectory() as folder, Monitor("bench", folder) as monitor:
        monitor.bus.subscribe("snapshot", on_snapshot)
        monitor.bus.subscribe("transition", on_transition)
        # Samples of whole cycles hold the same number of transitions.
        seconds = median_seconds(
            lambda: monitor.observe(next(windows), next(steps)), repeats=9, number=2 * len(ALERT_CYCLE)
        )
    return {
        "ms": seconds * 1e3,
        "setup": (
            "Monitor('bench', output_dir=<temporary folder>): identity lens, no-op controller, snapshots.jsonl "
            "and alerts.jsonl written; one user handler on 'snapshot', one on 'transition'"
        ),
        "handler_calls": dict(handled),
        "transitions_per_snapshot": handled["transition"] / handled["snapshot"],
    }


def time_from_counts_with_alert_history(counts_cycle: list[np.ndarray]) -> dict[str, object]:
    """The seed-style factory carrying the machines in a plain dict; the transitions its snapshots made."""
    windows, steps = cycle(counts_cycle), count(1)
    history: dict[int, dict[str, object]] = {}
    snapshots = transitions = 0

    def snapshot() -> None:
        nonlocal snapshots, transitions
        built = SystemSnapshot.from_counts(next(windows), next(steps), alert_history=history)
        snapshots += 1
        transitions += len(built.transitions)

    seconds = median_seconds(snapshot, repeats=9, number=2 * len(ALERT_CYCLE))
    return {"ms": seconds * 1e3, "transitions_per_snapshot": transitions / snapshots}


# -- snapshots from events ------------------------------------------------------------
def seed_algorithm(events: list[RoutingEvent], n_layers: int) -> list[tuple[np.ndarray, float, float, float, int, int]]:
    """The seed's metrics of each layer: ``(shares, entropy, n_effective, top2, dead, nearly dead)``."""
    return [compute_layer_metrics(events, layer_id) for layer_id in range(n_layers)]


def one_pass_numpy(events: list[RoutingEvent], n_layers: int) -> dict[str, np.ndarray]:
    """:data:`METRICS`, vectorised: every event's counts stacked once and summed by layer; arrays ``[n_layers]``."""
    layer_of_event = np.fromiter((event.layer_id for event in events), dtype=np.int64, count=len(events))
    rows = np.stack([event.expert_token_counts for event in events])  # [events, experts]
    n_experts = rows.shape[1]
    cell_of_count = (layer_of_event[:, None] * n_experts + np.arange(n_experts)).ravel()
    totals = np.bincount(cell_of_count, weights=rows.ravel(), minlength=n_layers * n_experts)
    totals = totals.reshape(n_layers, n_experts)
    shares = totals / totals.sum(axis=1, keepdims=True)
    positive = shares > 0
    entropy = -np.sum(shares * np.log(np.where(positive, shares, 1.0)), axis=1)
    return {
        "entropy": entropy,
        "n_effective": np.exp(entropy),
        "top2_share": np.sort(shares, axis=1)[:, -2:].sum(axis=1),
        "dead_expert_count": np.count_nonzero(~positive, axis=1),
        "nearly_dead_count": np.count_nonzero(positive & (shares < NEARLY_DEAD_THRESHOLD), axis=1),
    }


def check_same_metrics(events: list[RoutingEvent], n_layers: int) -> None:
    """The references and ChronoMoE agree on every layer's metrics (else their times compare different work)."""
    snapshot = SystemSnapshot.from_events(events, 0, n_layers=n_layers, alert_history={})
    seed = np.array([metrics[1:] for metrics in seed_algorithm(events, n_layers)])
    vectorised = one_pass_numpy(events, n_layers)
    for column, name in enumerate(METRICS):
        chronomoe = [getattr(layer, name) for layer in snapshot.layers]
        np.testing.assert_allclose(seed[:, column], chronomoe, rtol=1e-12, err_msg=f"seed algorithm, {name}")
        np.testing.assert_allclose(vectorised[name], chronomoe, rtol=1e-12, err_msg=f"one-pass numpy, {name}")


def make_events(steps: int, rng: np.random.Generator) -> list[RoutingEvent]:
    return [
        RoutingEvent(
            run_id="bench",
            step=step,
            layer_id=layer,
            n_experts=N_EXPERTS,
            top_k=8,
            expert_token_counts=rng.integers(0, 64, N_EXPERTS),
        )
        for step in range(steps)
        for layer in range(N_LAYERS)
    ]


def time_from_events(steps: int, rng: np.random.Generator) -> dict[str, object]:
    """``from_events`` and both references on one window of ``steps`` steps, interleaved."""
    events = make_events(steps, rng)
    check_same_metrics(events, N_LAYERS)
    medians = interleaved_medians(
        {
            "chronomoe": lambda: SystemSnapshot.from_events(events, steps, n_layers=N_LAYERS, alert_history={}),
            "seed_algorithm": lambda: seed_algorithm(events, N_LAYERS),
            "one_pass_numpy": lambda: one_pass_numpy(events, N_LAYERS),
        },
        repeats=5 if steps <= 100 else 3,
        warmup=1,
    )
    return {
        "events": len(events),
        **{f"{name}_ms": seconds * 1e3 for name, seconds in medians.items()},
        **{f"time_ratio_to_{name}": medians["chronomoe"] / medians[name] for name in REFERENCES},
    }


# -- alert machines -------------------------------------------------------------------
def time_bank_step(windows: list[list[str]]) -> dict[str, object]:
    """One ``AlertBank.step`` per call, fed ``windows[i]`` (each layer's window kind) at call ``i``, cycling."""
    n_layers = len(windows[0])
    conditions = [([kind != HEALTHY for kind in kinds], [kind == COLLAPSE for kind in kinds]) for kinds in windows]
    bank, layer_ids, no_data = AlertBank(RULES), list(range(n_layers)), [False] * n_layers
    snapshots = cycle(conditions)
    steps = 0
    transitions: Counter[str] = Counter()

    def step() -> None:
        nonlocal steps
        pre, collapse = next(snapshots)
        steps += 1
        for _, change in bank.step(layer_ids, pre, collapse, no_data):
            transitions[f"{change.source.value}->{change.dest.value}"] += 1

    seconds = median_seconds(step, repeats=9, number=2 * len(ALERT_CYCLE))
    return {
        "ms": seconds * 1e3,
        "transitions_per_step": transitions.total() / steps,
        "transitions": dict(sorted(transitions.items())),
    }


def main() -> None:
    rng = np.random.default_rng(0)
    counts_cycle = cycle_counts()
    from_counts = {
        "monitor_observe": time_monitor_observe(counts_cycle),
        "from_counts_with_alert_history": time_from_counts_with_alert_history(counts_cycle),
    }
    from_events = {f"{steps}_steps": time_from_events(steps, rng) for steps in (100, 1000)}
    alert_machine_step = {
        f"{n_layers}_layers": {
            "alert_cycle": time_bank_step([cycle_windows(n_layers, p) for p in range(len(ALERT_CYCLE))]),
            "steady_healthy": time_bank_step([[HEALTHY] * n_layers]),
        }
        for n_layers in (N_LAYERS, 1000)
    }
    emit(
        {
            "benchmark": "snapshot",
            "layers": N_LAYERS,
            "experts": N_EXPERTS,
            "alert_cycle": list(ALERT_CYCLE),
            "references": REFERENCES,
            "chronomoe_from_events": CHRONOMOE_FROM_EVENTS,
            "from_counts": from_counts,
            "from_events": from_events,
            "alert_machine_step": alert_machine_step,
        }
    )


if __name__ == "__main__":
    main()
