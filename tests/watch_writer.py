"""The training job that ``tests/test_watch.py`` watches: a run folder written slowly, one snapshot at a time.

Run as ``python tests/watch_writer.py SOURCE_RUN TARGET_RUN DELAY TORN_AT``: it
appends the lines of a recorded run folder ``SOURCE_RUN`` to ``TARGET_RUN``
as a training job's Monitor does (each snapshot's decisions, then the
snapshot), sleeping ``DELAY`` seconds after each snapshot. The snapshot
line number ``TORN_AT`` (from 1) is written in two halves ``4 * DELAY``
seconds apart, so a watcher sees a last line without its newline for a
while. Prints ``done`` when everything is written.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import orjson


def append(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, data)
    finally:
        os.close(descriptor)


def main(source: Path, target: Path, delay: float, torn_at: int) -> None:
    decisions: dict[int, list[bytes]] = {}
    for line in (source / "decisions.jsonl").read_bytes().splitlines(keepends=True):
        decisions.setdefault(orjson.loads(line)["step"], []).append(line)
    snapshots = (source / "snapshots.jsonl").read_bytes().splitlines(keepends=True)
    for number, line in enumerate(snapshots, start=1):
        step = orjson.loads(line)["step"]
        append(target / "decisions.jsonl", b"".join(decisions.get(step, [])))
        if number == torn_at:
            half = len(line) // 2
            append(target / "snapshots.jsonl", line[:half])
            time.sleep(4 * delay)
            append(target / "snapshots.jsonl", line[half:])
        else:
            append(target / "snapshots.jsonl", line)
        time.sleep(delay)
    print("done", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
