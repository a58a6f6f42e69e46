"""Snapshot build and alert-machine stepping at DeepSeek-V3 size (58 MoE layers x 256 experts).

Measures, in one process:
* a snapshot from a summed counts matrix (``Monitor.observe``, persistent
  machines) and through the seed-style ``SystemSnapshot.from_counts`` with an
  ``alert_history`` dict;
* a snapshot from 100- and 1,000-step windows of ``RoutingEvent`` records
  (5,800 and 58,000 events), next to a straightforward per-event Python
  implementation (the seed's loop over layers and events) measured
  interleaved with it, and the ratio;
* stepping the alert machines of 58 and 1,000 layers once (one snapshot).

Run: ``.venv/bin/python benchmarks/bench_snapshot.py``; prints JSON (times in ms).
"""

from __future__ import annotations

import numpy as np

from _common import emit, interleaved_medians, median_seconds
from chronomoe import Monitor, RoutingEvent, SystemSnapshot
from chronomoe.alerts import AlertBank
from chronomoe.metrics import (
    compute_entropy,
    compute_n_effective,
    compute_top2_share,
    count_dead_experts,
    count_nearly_dead_experts,
)

N_LAYERS, N_EXPERTS = 58, 256


def per_event_reference(events: list[RoutingEvent], n_layers: int) -> list[tuple]:
    """The straightforward implementation: for each layer, walk the events and add their counts."""
    result = []
    for layer_id in range(n_layers):
        totals = np.zeros(N_EXPERTS)
        for event in events:
            if event.layer_id == layer_id:
                totals += np.array(event.expert_token_counts)
        shares = totals / totals.sum()
        entropy = compute_entropy(shares)
        result.append((entropy, compute_n_effective(entropy), compute_top2_share(shares),
                       count_dead_experts(shares), count_nearly_dead_experts(shares)))
    return result


def make_events(steps: int, rng: np.random.Generator) -> list[RoutingEvent]:
    return [
        RoutingEvent(run_id="bench", step=step, layer_id=layer, n_experts=N_EXPERTS, top_k=8,
                     expert_token_counts=rng.integers(0, 64, N_EXPERTS))
        for step in range(steps)
        for layer in range(N_LAYERS)
    ]


def main() -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 10_000, (N_LAYERS, N_EXPERTS))
    monitor = Monitor("bench", lens=None, controller=None)
    step = iter(range(10**9))
    history: dict = {}
    from_counts = {
        "monitor_observe_ms": median_seconds(lambda: monitor.observe(counts, next(step)), repeats=9, number=50) * 1e3,
        "from_counts_with_alert_history_ms": median_seconds(
            lambda: SystemSnapshot.from_counts(counts, next(step), alert_history=history), repeats=9, number=20
        ) * 1e3,
    }

    from_events = {}
    for steps in (100, 1000):
        events = make_events(steps, rng)
        medians = interleaved_medians(
            {
                "chronomoe": lambda: SystemSnapshot.from_events(events, steps, n_layers=N_LAYERS, alert_history={}),
                "per_event_reference": lambda: per_event_reference(events, N_LAYERS),
            },
            repeats=5 if steps == 100 else 3,
            warmup=1,
        )
        from_events[f"{len(events)}_events"] = {
            "chronomoe_ms": medians["chronomoe"] * 1e3,
            "per_event_reference_ms": medians["per_event_reference"] * 1e3,
            "speedup": medians["per_event_reference"] / medians["chronomoe"],
        }
        del events

    stepping = {}
    for n_layers in (58, 1000):
        bank = AlertBank()
        layer_ids = list(range(n_layers))
        # Realistic mix: 10% of layers hold the pre condition, 5% the collapse condition.
        pre = (rng.random(n_layers) < 0.10).tolist()
        collapse = (rng.random(n_layers) < 0.05).tolist()
        no_data = [False] * n_layers
        bank.step(layer_ids, pre, collapse, no_data)
        stepping[f"{n_layers}_layers_ms"] = median_seconds(
            lambda: bank.step(layer_ids, pre, collapse, no_data), repeats=9, number=20
        ) * 1e3

    emit({"benchmark": "snapshot", "layers": N_LAYERS, "experts": N_EXPERTS,
          "from_counts": from_counts, "from_events": from_events, "alert_machine_step": stepping})


if __name__ == "__main__":
    main()
