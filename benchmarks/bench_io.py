"""JSONL telemetry throughput at 256 experts, next to this machine's raw disk bandwidth.

In one process, on one temporary folder (``--dir``, default: the system's):

* raw sequential write bandwidth: the same number of bytes as the event log,
  pre-formatted, written with one ``os.write`` per 1 MiB and one ``fsync`` at
  the end (the ceiling any writer can reach);
* ``TelemetryWriter.write_events_batch``: events/s and MB/s, the same fsync at
  the end, and its fraction of the raw bandwidth;
* the cost of ``fsync=True`` (one fsync per snapshot) per snapshot of 58 events;
* ``load_events``: events/s and MB/s, next to bare ``orjson.loads`` of the
  same lines, each result dropped at once (the parsing floor: no validation,
  no records kept), and their ratio.

Run: ``.venv/bin/python benchmarks/bench_io.py``; prints JSON.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
from _common import emit, median_seconds

from chronomoe import RoutingEvent, TelemetryWriter, load_events
from chronomoe.io.serialize import event_line

N_LAYERS, N_EXPERTS, STEPS = 58, 256, 500
CHUNK = 1 << 20


def raw_write_seconds(path: Path, data: bytes) -> float:
    start = time.perf_counter()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        for offset in range(0, len(data), CHUNK):
            os.write(descriptor, view[offset : offset + CHUNK])
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return time.perf_counter() - start


def writer_seconds(folder: Path, events: list[RoutingEvent], run: str) -> float:
    start = time.perf_counter()
    with TelemetryWriter(run, folder) as writer:
        for offset in range(0, len(events), N_LAYERS * 10):  # one batch per 10 steps
            writer.write_events_batch(events[offset : offset + N_LAYERS * 10])
        writer.sync()
    return time.perf_counter() - start


def parse_and_drop(lines: list[bytes]) -> None:
    for line in lines:
        orjson.loads(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="folder to write in (default: a temporary one)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    events = [
        RoutingEvent(
            run_id="bench",
            step=step,
            layer_id=layer,
            n_experts=N_EXPERTS,
            top_k=8,
            expert_token_counts=rng.integers(0, 4096, N_EXPERTS),
        )
        for step in range(STEPS)
        for layer in range(N_LAYERS)
    ]
    payload = b"".join(event_line(event) for event in events)
    megabytes = len(payload) / 1e6

    with tempfile.TemporaryDirectory(dir=args.dir) as folder_name:
        folder = Path(folder_name)
        raw, written = [], []
        for repeat in range(5):  # interleaved: raw, writer, raw, writer, ...
            raw.append(raw_write_seconds(folder / "raw.bin", payload))
            written.append(writer_seconds(folder, events, f"w{repeat}"))
        raw_s, write_s = float(np.median(raw)), float(np.median(written))

        fsync_writer = TelemetryWriter("fsync", folder)
        snapshot_events = events[:N_LAYERS]
        plain = median_seconds(lambda: fsync_writer.write_events_batch(snapshot_events), repeats=15)
        fsync_writer.fsync = True

        def with_fsync() -> None:
            fsync_writer.write_events_batch(snapshot_events)
            fsync_writer.sync()

        synced = median_seconds(with_fsync, repeats=15)
        fsync_writer.close()

        log = folder / "w0" / "routing_events.jsonl"
        lines = log.read_bytes().splitlines()
        read_s = median_seconds(lambda: load_events(log), repeats=3, warmup=1)
        parse_floor_s = median_seconds(lambda: parse_and_drop(lines), repeats=3, warmup=1)

    emit(
        {
            "benchmark": "io",
            "events": len(events),
            "experts": N_EXPERTS,
            "log_megabytes": megabytes,
            "raw_write": {"seconds": raw_s, "megabytes_per_s": megabytes / raw_s},
            "writer": {
                "seconds": write_s,
                "events_per_s": len(events) / write_s,
                "megabytes_per_s": megabytes / write_s,
                "fraction_of_raw_bandwidth": raw_s / write_s,
            },
            "fsync_per_snapshot": {
                "batch_of_58_events_ms": plain * 1e3,
                "with_fsync_ms": synced * 1e3,
                "fsync_cost_ms": (synced - plain) * 1e3,
            },
            "reader": {
                "seconds": read_s,
                "events_per_s": len(events) / read_s,
                "megabytes_per_s": megabytes / read_s,
                "orjson_parse_only_events_per_s": len(lines) / parse_floor_s,
                "time_ratio_to_orjson_parse_only": read_s / parse_floor_s,
            },
        }
    )


if __name__ == "__main__":
    main()
