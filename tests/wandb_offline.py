"""Read back what an offline W&B run stored: the records of its ``run-<id>.wandb`` file.

wandb 0.31 no longer ships a Python reader for the file its Go core writes. The file is a W&B header
(``:W&B``, magic 0xBEE1, version 0; 7 bytes) followed by LevelDB's log format: 32 KiB blocks of chunks, each
with a 7-byte header (CRC32, little-endian length, type: 1 full, 2 first, 3 middle, 4 last) and a zero-filled
block tail shorter than a header. Each assembled record is a ``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

BLOCK_SIZE = 32 * 1024
HEADER_SIZE = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What one offline run stored: history rows (``_step`` and every key, histograms as ``{"bins", "values"}``),
    alerts, config updates (key -> value, the run's initial config included) and metric definitions."""

    history: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: list[Any] = field(default_factory=list)


def records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    assembled, chunks, position = [], [], HEADER_SIZE
    while position + HEADER_SIZE <= len(data):
        left_in_block = BLOCK_SIZE - position % BLOCK_SIZE
        if left_in_block < HEADER_SIZE:
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + HEADER_SIZE])
        if kind == 0:  # the zero-filled tail of a block
            position += left_in_block
            continue
        chunks.append(data[position + HEADER_SIZE : position + HEADER_SIZE + length])
        position += HEADER_SIZE + length
        if kind in (FULL, LAST):
            assembled.append(b"".join(chunks))
            chunks = []
    return assembled


def finished_records(path: Path, timeout: float = 30.0) -> list[Any]:
    """The file's records once its run's ``exit`` record is on disk.

    ``wandb.finish()`` can return before wandb's core has flushed the file, so this waits (up to ``timeout``
    seconds) for the record that ends every finished run.
    """
    from wandb.proto import wandb_internal_pb2

    deadline = time.monotonic() + timeout
    while True:
        parsed = []
        for raw in records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            parsed.append(record)
        if parsed and parsed[-1].WhichOneof("record_type") == "exit":
            return parsed
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout} s: was the run finished?"
        time.sleep(0.1)


def read_offline_run(run_dir: Path) -> OfflineRun:
    """Parse the one ``*.wandb`` file under ``run_dir`` (an ``offline-run-*`` folder) of a finished run."""
    (path,) = run_dir.glob("run-*.wandb")
    run = OfflineRun()
    for record in finished_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                keys = list(item.nested_key) or [item.key]
                target = row
                for key in keys[:-1]:
                    target = target.setdefault(key, {})
                target[keys[-1]] = orjson.loads(item.value_json)
            run.history.append(row)
        elif kind == "alert":
            alert = record.alert
            run.alerts.append({"title": alert.title, "text": alert.text, "level": alert.level})
        elif kind in ("run", "config"):
            updates = record.run.config.update if kind == "run" else record.config.update
            run.config.update({item.key: orjson.loads(item.value_json) for item in updates})
        elif kind == "metric":
            run.metrics.append(record.metric)
    return run


def offline_runs(wandb_dir: Path) -> list[Path]:
    """The offline run folders under ``wandb_dir`` (the ``dir`` given to ``wandb.init``), oldest first."""
    return sorted((wandb_dir / "wandb").glob("offline-run-*"))
