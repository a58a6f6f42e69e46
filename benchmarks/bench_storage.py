"""JSONL and Parquet storage side by side at 256 experts, on realistic counts, next to the raw disk bandwidth.

Counts: 58 layers x 256 experts, top-8 routing of 4096 tokens per step and
layer, each step a multinomial draw over the layer's expert popularity
(``--popularity uniform``: every expert alike; ``dirichlet``: each layer's
popularity drawn once from Dirichlet(20), loads within about +-25% of the
mean, as in a balanced MoE). Events are written in batches of one snapshot
of 10 steps (580 events), as a Monitor does. In one process:

* size: bytes per event of each storage, and their ratio;
* writing (``TelemetryWriter`` and ``ParquetRunWriter`` with ``fsync=True``,
  so syncing behind, every ``DEFAULT_BYTES_PER_SYNC`` bytes, and with
  ``bytes_per_sync=0``; ``sync()`` at the end): events/s, and throughput as a
  fraction of the raw sequential write bandwidth (the JSONL log's bytes,
  ``os.write`` of 1 MiB pieces and one ``fsync``; also the same with a
  background ``fdatasync`` every ``DEFAULT_BYTES_PER_SYNC`` bytes, the best
  that syncing behind gets from this disk), both counted in the JSONL log's
  bytes (the same events), all interleaved;
* reading the events into a ``[steps, layers, experts]`` array
  (``open_run(run).counts()``): Parquet at ``--parquet-steps`` steps (580
  events each), JSONL at ``--jsonl-steps``, next to ``orjson.loads`` alone of
  the same JSONL lines and to the JSONL reader of ``--baseline`` (a git
  revision: its ``chronomoe/io/fast_events.py`` making events, and the
  ``counts()`` of that revision filling the array one event at a time),
  interleaved, with the time ratio; and, interleaved with the Parquet read
  (which decodes the counts from their pages, :mod:`chronomoe.io.parquet_pages`),
  pyarrow alone reading the counts column of the same parts into Arrow arrays
  (no array of ours built), with the time ratio;
* building ``RoutingEvent`` from Python lists (one list of ints per event):
  ``RoutingEvent.from_lists`` (validated as a batch) and ``RoutingEvent(...)``
  one event at a time, next to the seed's design, a plain dataclass that
  derives the same fields in ``__post_init__`` (``token_count``,
  ``active_experts``) but validates nothing and keeps the list (where
  ``RoutingEvent`` checks every field and holds an int64 array); for one
  step's 58 events and one snapshot's 580, interleaved, each repeat's time
  ratio, min and median over the repeats (``--construction-only``: this part
  alone).

Run: ``.venv/bin/python benchmarks/bench_storage.py``; prints JSON (with the load average).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq
from _common import emit, interleaved_medians, interleaved_samples

from chronomoe import RoutingEvent, TelemetryWriter
from chronomoe.io.parquet_writer import ParquetRunWriter
from chronomoe.io.run_reader import open_run
from chronomoe.io.serialize import event_line
from chronomoe.io.sync_behind import DEFAULT_BYTES_PER_SYNC, SyncBehind

N_LAYERS, N_EXPERTS, TOP_K, TOKENS = 58, 256, 8, 4096
ROOT = Path(__file__).resolve().parent.parent
STEPS_PER_SNAPSHOT = 10
CHUNK = 1 << 20


def draw_counts(steps: int, popularity: str, rng: np.random.Generator) -> np.ndarray:
    """``[steps, layers, experts]`` int64 counts: multinomial draws of TOKENS * TOP_K assignments."""
    if popularity == "uniform":
        probabilities = np.full((N_LAYERS, N_EXPERTS), 1 / N_EXPERTS)
    else:
        probabilities = rng.dirichlet(np.full(N_EXPERTS, 20.0), size=N_LAYERS)
    counts = np.empty((steps, N_LAYERS, N_EXPERTS), np.int64)
    for layer in range(N_LAYERS):
        counts[:, layer] = rng.multinomial(TOKENS * TOP_K, probabilities[layer], size=steps)
    return counts


def make_events(counts: np.ndarray) -> list[RoutingEvent]:
    return [
        RoutingEvent(
            run_id="bench",
            step=step + 1,
            layer_id=layer,
            n_experts=N_EXPERTS,
            top_k=TOP_K,
            expert_token_counts=counts[step, layer],
            timestamp=1.8e9 + step,
        )
        for step in range(counts.shape[0])
        for layer in range(N_LAYERS)
    ]


def write_seconds(
    writer_class: type[TelemetryWriter], folder: Path, events: list[RoutingEvent], run: str, bytes_per_sync: int | None
) -> float:
    start = time.perf_counter()
    with writer_class(run, folder, fsync=True, bytes_per_sync=bytes_per_sync) as writer:
        for offset in range(0, len(events), N_LAYERS * STEPS_PER_SNAPSHOT):
            writer.write_events_batch(events[offset : offset + N_LAYERS * STEPS_PER_SNAPSHOT])
        writer.sync()
    return time.perf_counter() - start


def raw_write_seconds(path: Path, data: bytes, bytes_per_sync: int) -> float:
    start = time.perf_counter()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    syncer = SyncBehind(bytes_per_sync)
    try:
        view = memoryview(data)
        for offset in range(0, len(data), CHUNK):
            syncer.wrote(path, descriptor, os.write(descriptor, view[offset : offset + CHUNK]))
        os.fsync(descriptor)
    finally:
        syncer.close()
        os.close(descriptor)
    return time.perf_counter() - start


def baseline_counts_reader(revision: str) -> Callable[[Path], np.ndarray]:
    """``counts()`` of a JSONL run as ``revision`` read it: its fast events loader (loaded from git into
    ``chronomoe.io``, so that its relative imports resolve) making events, their rows put in the array one by one."""
    source = subprocess.run(
        ["git", "show", f"{revision}:chronomoe/io/fast_events.py"], check=True, capture_output=True, cwd=ROOT
    ).stdout
    spec = importlib.util.spec_from_loader("chronomoe.io._baseline_fast_events", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{revision}:chronomoe/io/fast_events.py", "exec"), module.__dict__)

    def counts(run: Path) -> np.ndarray:
        steps, layers, rows = [], [], []
        for event in module.iter_events(run / "routing_events.jsonl"):
            if event.mode == "TRAIN":
                steps.append(event.step)
                layers.append(event.layer_id)
                rows.append(event.expert_token_counts)
        unique_steps, step_index = np.unique(steps, return_inverse=True)
        layer_ids, layer_index = np.unique(layers, return_inverse=True)
        array = np.zeros((len(unique_steps), len(layer_ids), max(len(row) for row in rows)), np.int64)
        for row, step, layer in zip(rows, step_index.tolist(), layer_index.tolist(), strict=True):
            array[step, layer, : len(row)] = row
        return array

    return counts


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and path.name != "run_manifest.json")


@dataclasses.dataclass
class SeedRoutingEvent:
    """The seed's plain dataclass design: fields given (unchecked), token_count and active experts derived."""

    run_id: str
    step: int
    mode: str
    layer_id: int
    n_experts: int
    top_k: int
    expert_token_counts: list[int]
    timestamp: float = dataclasses.field(default_factory=time.time)
    token_count: int = 0
    active_experts: list[int] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.token_count = sum(self.expert_token_counts)
        self.active_experts = [index for index, count in enumerate(self.expert_token_counts) if count > 0]


def construction_variants(steps: int, counts: np.ndarray) -> dict[str, Callable[[], object]]:
    """The three ways of building the events of ``counts``' first ``steps`` steps from lists (one per event)."""
    rows = [row.tolist() for row in counts[:steps].reshape(-1, N_EXPERTS)]
    step_ids = [step + 1 for step in range(steps) for _ in range(N_LAYERS)]
    layer_ids = list(range(N_LAYERS)) * steps
    per_event = list(zip(step_ids, layer_ids, rows, strict=True))

    def from_lists() -> list[RoutingEvent]:
        return RoutingEvent.from_lists(
            run_id="b",
            step=step_ids,
            mode="TRAIN",
            layer_id=layer_ids,
            n_experts=N_EXPERTS,
            top_k=TOP_K,
            expert_token_counts=rows,
        )

    def one_at_a_time() -> list[RoutingEvent]:
        return [
            RoutingEvent(
                run_id="b",
                step=step,
                mode="TRAIN",
                layer_id=layer,
                n_experts=N_EXPERTS,
                top_k=TOP_K,
                expert_token_counts=row,
            )
            for step, layer, row in per_event
        ]

    def seed() -> list[SeedRoutingEvent]:
        return [SeedRoutingEvent("b", step, "TRAIN", layer, N_EXPERTS, TOP_K, row) for step, layer, row in per_event]

    return {"from_lists": from_lists, "routing_event_one_at_a_time": one_at_a_time, "seed_dataclass": seed}


def construction_figures(counts: np.ndarray, repeats: int) -> dict[str, object]:
    """``RoutingEvent.from_lists``, ``RoutingEvent(...)`` per event and the seed's dataclass building the events
    of ``counts``' first step (58 events) and first 10 steps (580), from lists; per-repeat time ratios."""
    figures: dict[str, object] = {
        "reference": "seed_dataclass: the seed's plain dataclass, token_count and active_experts derived in "
        "__post_init__, no validation, the list kept as it is",
        "repeats": repeats,
    }
    for name, steps in (("one_step", 1), ("one_snapshot", STEPS_PER_SNAPSHOT)):
        samples = interleaved_samples(construction_variants(steps, counts), repeats=repeats, number=max(1, 10 // steps))
        events = steps * N_LAYERS
        ratios = {
            variant: sorted(
                time / reference for time, reference in zip(samples[variant], samples["seed_dataclass"], strict=True)
            )
            for variant in ("from_lists", "routing_event_one_at_a_time")
        }
        figures[name] = {
            "events": events,
            **{
                f"{variant}_us_per_event": float(np.median(values)) / events * 1e6
                for variant, values in samples.items()
            },
            "time_ratio_to_seed_dataclass": {
                variant: {"min": values[0], "median": float(np.median(values))} for variant, values in ratios.items()
            },
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--popularity", choices=("uniform", "dirichlet"), default="dirichlet")
    parser.add_argument("--parquet-steps", type=int, default=10_000, help="steps read back from Parquet")
    parser.add_argument("--jsonl-steps", type=int, default=1_000, help="steps written and read as JSONL")
    parser.add_argument("--dir", default=None, help="folder to write in (default: a temporary one)")
    parser.add_argument(
        "--baseline",
        default="1e3d2e6",
        help="git revision whose JSONL reader is the reference (default: before issue 16 item 3)",
    )
    parser.add_argument(
        "--construction-only", action="store_true", help="only the figures of building events from lists"
    )
    parser.add_argument("--construction-repeats", type=int, default=31)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if args.construction_only:
        counts = draw_counts(STEPS_PER_SNAPSHOT, args.popularity, rng)
        construction = construction_figures(counts, args.construction_repeats)
        emit(
            {
                "benchmark": "storage",
                "load_average_1_5_15": os.getloadavg(),
                "popularity": args.popularity,
                "experts": N_EXPERTS,
                "routing_event_from_lists": construction,
            }
        )
        return
    counts = draw_counts(max(args.parquet_steps, args.jsonl_steps), args.popularity, rng)
    small = make_events(counts[: args.jsonl_steps])
    payload = b"".join(event_line(event) for event in small)

    with tempfile.TemporaryDirectory(dir=args.dir) as folder_name:
        folder = Path(folder_name)
        writers = {"jsonl": TelemetryWriter, "parquet": ParquetRunWriter}
        samples: dict[str, list[float]] = {}
        for repeat in range(3):  # interleaved
            for sync_behind, bytes_per_sync in (("", 0), ("_sync_behind", DEFAULT_BYTES_PER_SYNC)):
                samples.setdefault("raw" + sync_behind, []).append(
                    raw_write_seconds(folder / "raw.bin", payload, bytes_per_sync)
                )
                for storage, writer_class in writers.items():
                    samples.setdefault(storage + sync_behind, []).append(
                        write_seconds(
                            writer_class, folder / storage, small, f"r{repeat}{sync_behind}", None if sync_behind else 0
                        )
                    )
        seconds = {name: float(np.median(values)) for name, values in samples.items()}
        jsonl_bytes = folder_bytes(folder / "jsonl" / "r0")
        parquet_bytes = folder_bytes(folder / "parquet" / "r0")

        big = make_events(counts[: args.parquet_steps])
        write_seconds(ParquetRunWriter, folder / "parquet", big, "big", None)
        del big
        lines = payload.splitlines()

        def parse_only() -> None:
            for line in lines:
                orjson.loads(line)

        baseline = baseline_counts_reader(args.baseline)
        parts = sorted((folder / "parquet" / "big" / "routing_events").glob("*.parquet"))

        def pyarrow_column_only() -> None:
            for part in parts:
                pq.ParquetFile(part).read(columns=["expert_token_counts"], use_threads=False)

        read = {
            **interleaved_medians(
                {
                    "parquet": lambda: open_run(folder / "parquet" / "big").counts(),
                    "parquet_pyarrow_column_only": pyarrow_column_only,
                },
                repeats=3,
                warmup=1,
            ),
            **interleaved_medians(
                {
                    "jsonl": lambda: open_run(folder / "jsonl" / "r0").counts(),
                    "jsonl_baseline": lambda: baseline(folder / "jsonl" / "r0"),
                    "orjson_parse_only": parse_only,
                },
                repeats=5,
                warmup=1,
            ),
        }
        check = open_run(folder / "parquet" / "big").counts()
        assert np.array_equal(check.counts, counts[: args.parquet_steps]), "Parquet counts differ from those written"
        expected = counts[: args.jsonl_steps]
        assert np.array_equal(open_run(folder / "jsonl" / "r0").counts().counts, expected), "JSONL counts differ"
        assert np.array_equal(baseline(folder / "jsonl" / "r0"), expected), "baseline JSONL counts differ"

    construction = construction_figures(counts, args.construction_repeats)
    n_small = len(small)
    megabytes = len(payload) / 1e6
    emit(
        {
            "benchmark": "storage",
            "load_average_1_5_15": os.getloadavg(),
            "popularity": args.popularity,
            "experts": N_EXPERTS,
            "size": {
                "events": n_small,
                "jsonl_bytes_per_event": jsonl_bytes / n_small,
                "parquet_bytes_per_event": parquet_bytes / n_small,
                "parquet_size_ratio_to_jsonl": parquet_bytes / jsonl_bytes,
            },
            "write": {
                "bytes_per_sync": DEFAULT_BYTES_PER_SYNC,
                "raw_write_megabytes_per_s": megabytes / seconds["raw"],
                "raw_sync_behind_write_megabytes_per_s": megabytes / seconds["raw_sync_behind"],
                **{
                    storage + sync_behind: {
                        "events_per_s": n_small / seconds[storage + sync_behind],
                        "jsonl_megabytes_per_s": megabytes / seconds[storage + sync_behind],
                        "fraction_of_raw_bandwidth": seconds["raw"] / seconds[storage + sync_behind],
                        "fraction_of_raw_sync_behind_bandwidth": seconds["raw_sync_behind"]
                        / seconds[storage + sync_behind],
                    }
                    for storage in writers
                    for sync_behind in ("_sync_behind", "")
                },
            },
            "read_counts_array": {
                "parquet_events": args.parquet_steps * N_LAYERS,
                "parquet_events_per_s": args.parquet_steps * N_LAYERS / read["parquet"],
                "parquet_pyarrow_column_only_events_per_s": args.parquet_steps
                * N_LAYERS
                / read["parquet_pyarrow_column_only"],
                "parquet_speedup_over_pyarrow_column_only": read["parquet_pyarrow_column_only"] / read["parquet"],
                "jsonl_events": n_small,
                "jsonl_events_per_s": n_small / read["jsonl"],
                "jsonl_baseline_revision": args.baseline,
                "jsonl_baseline_events_per_s": n_small / read["jsonl_baseline"],
                "jsonl_speedup_over_baseline": read["jsonl_baseline"] / read["jsonl"],
                "orjson_parse_only_events_per_s": n_small / read["orjson_parse_only"],
            },
            "routing_event_from_lists": construction,
        }
    )


if __name__ == "__main__":
    main()
