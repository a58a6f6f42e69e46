"""Decision time of the PressureController per snapshot at DeepSeek-V3 size (58 MoE layers x 256 experts), on CPU.

Three snapshots, each decided many times by its own controller, acting on a
host bias (what a dry run and a run without a model act on; a model's router
bias actuator adds an asynchronous copy to the device per changed layer):

* ``all_layers_acting``: every layer collapsing (pre_collapse or
  collapse_confirmed): pressure, direction, the box fit and a decision with a
  change summary for all 58 layers, the worst case;
* ``none_acting``: every layer balanced: pressure and reasons only;
* ``a_few_acting``: 3 of 58 layers collapsing, the usual case.

The time covers ``controller.on_snapshot(snapshot)`` (the decisions built,
the bias applied), not the bus or the writer. Target: under 1 ms per
snapshot. Prints one JSON object: milliseconds per snapshot, the median and
the least of 30 interleaved repeats of 20 decisions (on a shared machine the
least is the figure least disturbed by other work), and the load average.

Run: ``python benchmarks/bench_controller.py``.
"""

from __future__ import annotations

import os

import numpy as np
from _common import emit, interleaved_samples

from chronomoe import AlertRules, SystemSnapshot
from chronomoe.controller import PressureController

N_LAYERS, N_EXPERTS, TOKENS = 58, 256, 4096 * 8


def snapshot(collapsing_layers: int) -> SystemSnapshot:
    """A snapshot whose first ``collapsing_layers`` layers are in an alert state, the others balanced."""
    rng = np.random.default_rng(0)
    balanced = rng.multinomial(TOKENS, np.full(N_EXPERTS, 1 / N_EXPERTS), size=N_LAYERS)
    skew = np.zeros(N_EXPERTS)
    skew[:2], skew[2:] = 0.45, 0.1 / (N_EXPERTS - 2)
    counts = balanced.copy()
    counts[:collapsing_layers] = rng.multinomial(TOKENS, skew, size=collapsing_layers)
    history: dict[int, dict[str, object]] = {
        layer: {"state": "pre_collapse", "pre_streak": 3, "collapse_streak": 0, "healthy_streak": 0}
        for layer in range(collapsing_layers)
    }
    return SystemSnapshot.from_counts(counts, step=10, alert_history=history, rules=AlertRules())


def main() -> None:
    cases = {"all_layers_acting": snapshot(N_LAYERS), "none_acting": snapshot(0), "a_few_acting": snapshot(3)}
    for name, observed in cases.items():  # the cases do what they say
        decisions = PressureController().on_snapshot(observed) or []
        acting = sum(decision.action == "adjust" for decision in decisions)
        expected = {"all_layers_acting": N_LAYERS, "none_acting": 0, "a_few_acting": 3}[name]
        assert acting == expected, (name, acting)
    controllers = {name: PressureController() for name in cases}
    samples = interleaved_samples(
        {name: (lambda name=name: controllers[name].on_snapshot(cases[name])) for name in cases}, repeats=30, number=20
    )
    emit(
        {
            "benchmark": "pressure controller decision per snapshot",
            "layers": N_LAYERS,
            "experts": N_EXPERTS,
            "load_average_1_5_15": os.getloadavg(),
            "ms_per_snapshot": {name: float(np.median(times)) * 1e3 for name, times in samples.items()},
            "min_ms_per_snapshot": {name: min(times) * 1e3 for name, times in samples.items()},
            "target_ms": 1.0,
        }
    )


if __name__ == "__main__":
    main()
