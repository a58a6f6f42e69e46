"""Shared helpers of the benchmark scripts: timing with warm-up and medians, JSON output.

Every benchmark prints one JSON object on stdout. Comparisons are ratios of
variants measured side by side in the same process, interleaved, because
these machines are noisy. A ratio's key names its reference (as in
``time_ratio_to_seed_algorithm``: the measured time over the reference's), and
the JSON says what the reference is.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable


def median_seconds(function: Callable[[], object], repeats: int = 7, warmup: int = 2, number: int = 1) -> float:
    """Median wall time of ``number`` calls of ``function``, divided by ``number``, in seconds."""
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            function()
        samples.append((time.perf_counter() - start) / number)
    return statistics.median(samples)


def interleaved_samples(
    variants: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 2, number: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each variant in each repeat, the variants run in turn within each repeat (so the
    ``i``-th samples of two variants were taken side by side, and their ratio is one repeat's ratio)."""
    for _ in range(warmup):
        for function in variants.values():
            function()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, function in variants.items():
            start = time.perf_counter()
            for _ in range(number):
                function()
            samples[name].append((time.perf_counter() - start) / number)
    return samples


def interleaved_medians(
    variants: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 2, number: int = 1
) -> dict[str, float]:
    """Median seconds per call of each variant, the variants run in turn within each repeat."""
    samples = interleaved_samples(variants, repeats, warmup, number)
    return {name: statistics.median(values) for name, values in samples.items()}


def machine() -> dict[str, object]:
    """Where the figures were measured."""
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}


def emit(result: dict[str, object]) -> None:
    """Print the benchmark's JSON result (with the machine description) on stdout."""
    json.dump({"machine": machine(), **result}, sys.stdout, indent=2)
    sys.stdout.write("\n")
