"""Import Megatron's tokens-per-expert dumps into a ChronoMoE run folder.

Megatron (``--save-tokens-per-expert-interval N``) appends, every N
iterations, one line per MoE layer to ``<save>/tokens_per_expert/rank<r>.jsonl``::

    {"iter": 100, "block": "decoder", "layer": 3, "tpe": [[128, 64], [96, 80]]}
    {"iter": 100, "block": "mtp", "mtp_idx": 0, "layer": 1, "tpe": [[50, 50]]}

``tpe`` holds one list per call of the layer's grouped experts in that
iteration (one per microbatch): the tokens each of the rank's *local* experts
received, after the dispatcher's capacity drops. ``layer`` is the layer's index
in the model chunk's ``decoder.layers``.

:func:`import_megatron` sums, per iteration and layer, the microbatches of a
line and the lines of every rank, and writes one snapshot per iteration
(through the alert machines, as :meth:`chronomoe.Monitor.observe` does), so
``chronomoe summary``, ``replay``, ``report`` and ``validate`` work on the result:

* **Ranks.** Rank ``r`` of an expert-parallel run holds the experts
  ``ep_rank * E_local ...`` with ``ep_rank = (r // ETP) % EP`` (Megatron's
  default rank order ``tp-cp-ep-dp-pp``); its counts go there. Expert-tensor-
  parallel peers (``r % ETP != 0``) receive the same tokens as peer 0: counted
  once, their lines reported as copies. Data-parallel replicas add up.
* **Layer ids.** Decoder layers keep their ``layer``. MTP layers get the ids
  after the decoder layers of the first imported iteration, in ``(mtp_idx,
  layer)`` order; :attr:`MegatronImport.layer_ids` and the manifest give the mapping.
* **What is refused, with a word.** Every line that cannot be counted is
  skipped and counted by reason in :attr:`MegatronImport.skipped`, the first
  few named by file and line in :attr:`MegatronImport.examples`: malformed
  lines (not JSON, a field missing or of the wrong type, negative counts,
  microbatches of different lengths), a torn last line (a crash mid-write),
  iterations that go back in a file (a resumed run appends to the same file),
  lines whose expert count disagrees with the layer's, and expert-tensor-
  parallel copies. Nothing else is dropped.

Not handled: pipeline parallelism (each stage numbers its ``decoder.layers``
from 0, so stages' layers cannot be told apart in the dump: import one
stage's ranks at a time, from a folder holding only their files), and
activation recomputation of the MoE layer (Megatron's hook then appends each
microbatch twice; divide the counts, or look at shares, which are unchanged).
"""

from __future__ import annotations

import heapq
import itertools
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field

from ..alerts import AlertState
from ..errors import InvalidInputError
from ..events import RoutingEvent
from ..io.lines import MAX_LINE_BYTES, numbered_lines

RANK_FILE = re.compile(r"rank(\d+)\.jsonl")
"""Name of a rank's dump file."""
DUMP_FOLDER = "tokens_per_expert"
"""The folder under Megatron's ``--save`` that holds the rank files."""
MAX_EXAMPLES = 20
"""Skipped lines named by file and line in :attr:`MegatronImport.examples`."""

MALFORMED = "malformed"
TORN = "torn last line"
REPEATED = "iteration not after the file's previous one"
WIDTH = "expert count differs from the layer's"
COPY = "expert-tensor-parallel copy"


class MegatronLayout(BaseModel):
    """How a Megatron run's ranks share the experts (all 1: every rank a data-parallel replica)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    expert_parallel: int = Field(1, ge=1, description="--expert-model-parallel-size: ranks sharing a layer's experts")
    expert_tensor_parallel: int = Field(
        1, ge=1, description="--expert-tensor-parallel-size: ranks holding the same experts and the same tokens"
    )
    top_k: int = Field(
        1, ge=1, description="--moe-router-topk, stored in the events (the dump does not hold it; no metric uses it)"
    )


@dataclass(frozen=True)
class _Line:
    """One counted dump line: a rank's tokens per local expert for a layer, microbatches summed."""

    iteration: int
    key: tuple[str, int, int]  # (block, mtp_idx or -1, layer)
    counts: np.ndarray  # [E_local] int64
    rank: int


@dataclass
class MegatronImport:
    """What :func:`import_megatron` did.

    Attributes:
        run_dir: the run folder written.
        rank_files: the dump files read, in rank order.
        lines: lines counted.
        iterations: the iterations imported, in order (one snapshot each).
        layer_ids: ``{"decoder.<layer>" or "mtp.<mtp_idx>.<layer>": layer id}``.
        n_experts: experts of each layer id (global, expert-parallel ranks joined).
        skipped: lines not counted, by reason (see the module docstring).
        examples: the first :data:`MAX_EXAMPLES` skipped lines, as ``"file:line: reason"``.
        collapsed_layers: layers ``collapse_confirmed`` at the last snapshot.
    """

    run_dir: Path
    rank_files: list[Path]
    lines: int = 0
    iterations: list[int] = field(default_factory=list)
    layer_ids: dict[str, int] = field(default_factory=dict)
    n_experts: dict[int, int] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    collapsed_layers: list[int] = field(default_factory=list)

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {reason}{': ' + detail if detail else ''}")


def rank_files(source: str | Path) -> list[Path]:
    """The ``rank<r>.jsonl`` files of a dump, in rank order: in ``source`` itself, or in its
    ``tokens_per_expert`` folder (``source`` being Megatron's ``--save`` folder).

    Raises :class:`~chronomoe.errors.InvalidInputError` when there are none.
    """
    folder = Path(source)
    if not folder.is_dir():
        raise InvalidInputError("DIR", str(source), "is not a folder")
    if (folder / DUMP_FOLDER).is_dir():
        folder = folder / DUMP_FOLDER
    found = [(int(match.group(1)), path) for path in folder.iterdir() if (match := RANK_FILE.fullmatch(path.name))]
    if not found:
        raise InvalidInputError("DIR", str(source), f"holds no {DUMP_FOLDER}/rank<N>.jsonl files")
    return [path for _, path in sorted(found)]


def import_megatron(
    source: str | Path,
    output_dir: str | Path,
    run_id: str,
    *,
    layout: MegatronLayout | None = None,
    rules: Any = None,
    model_name: str = "megatron",
    max_line_bytes: int = MAX_LINE_BYTES,
    progress: Callable[[int], None] | None = None,
) -> MegatronImport:
    """Write the run folder ``output_dir/run_id`` from the dump in ``source`` (see the module docstring).

    Streams: memory holds one iteration's lines of every rank. ``rules`` are
    :class:`~chronomoe.AlertRules` (default: the defaults). ``progress`` is
    called with the bytes of each line read (the rank files' sizes in all).

    Raises:
        InvalidInputError: no rank files, a layer count that contradicts an
            earlier iteration's layers, or ``top_k`` above a layer's experts.
        CorruptRecordError: a line longer than ``max_line_bytes``.
    """
    from ..monitor import Monitor

    layout = layout or MegatronLayout()
    files = rank_files(source)
    monitor = Monitor(run_id, output_dir=output_dir, model_name=model_name, rules=rules, controller=None, lens=None)
    assert monitor.writer is not None  # an output_dir was given
    result = MegatronImport(monitor.writer.run_dir, files)
    try:
        streams = [_counted_lines(path, layout, result, max_line_bytes, progress) for path in files]
        merged = heapq.merge(*streams, key=lambda line: line.iteration)
        for iteration, group in itertools.groupby(merged, key=lambda line: line.iteration):
            events = _events(iteration, list(group), layout, result, run_id)
            if not events:
                continue
            snapshot = monitor.observe(events, step=iteration)
            result.iterations.append(iteration)
            result.collapsed_layers = [
                layer.layer_id for layer in snapshot.layers if layer.alert_state == AlertState.COLLAPSE_CONFIRMED
            ]
        monitor.writer.write_manifest(
            {
                **_manifest(monitor),
                "import": {
                    "format": "megatron tokens_per_expert",
                    "source": str(Path(source).resolve()),
                    "rank_files": [path.name for path in files],
                    "layout": layout.model_dump(),
                    "layer_ids": result.layer_ids,
                    "lines": result.lines,
                    "skipped": dict(result.skipped),
                    "timestamps": "time of import (the dump holds none)",
                },
            }
        )
    finally:
        monitor.close()
    return result


def _manifest(monitor: Any) -> dict[str, Any]:
    from ..io import MANIFEST_FILE, load_manifest

    return load_manifest(monitor.writer.run_dir / MANIFEST_FILE)


def _counted_lines(
    path: Path,
    layout: MegatronLayout,
    result: MegatronImport,
    limit: int,
    progress: Callable[[int], None] | None = None,
) -> Iterator[_Line]:
    """The countable lines of one rank file, in file order; every other line is reported to ``result``, and the
    bytes of each to ``progress``."""
    match = RANK_FILE.fullmatch(path.name)
    assert match is not None  # rank_files found it by this pattern
    rank = int(match.group(1))
    copy = rank % layout.expert_tensor_parallel != 0
    previous = -1
    for number, raw in numbered_lines(path, limit):
        if progress is not None:
            progress(len(raw))
        where = f"{path.name}:{number}"
        if raw[-1] != 0x0A:
            result.skip(TORN, where, f"{len(raw)} bytes without a newline")
            continue
        if raw.isspace():
            continue
        parsed = _parse(raw)
        if isinstance(parsed, str):
            result.skip(MALFORMED, where, parsed)
            continue
        iteration, key, counts = parsed
        if iteration < previous:
            result.skip(REPEATED, where, f"iter {iteration} after {previous}")
            continue
        previous = iteration
        if copy:
            result.skip(COPY, where)
            continue
        result.lines += 1
        yield _Line(iteration, key, counts, rank)


def _parse(raw: bytes) -> tuple[int, tuple[str, int, int], np.ndarray] | str:
    """``(iteration, key, counts summed over microbatches)`` of a dump line, or why it is malformed."""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        return f"not JSON ({error})"
    if not isinstance(record, dict):
        return "not a JSON object"
    for name in ("iter", "layer"):
        value = record.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{name}={value!r} is not an integer >= 0"
    block = record.get("block")
    mtp_index = record.get("mtp_idx", -1) if block == "mtp" else -1
    if block not in ("decoder", "mtp"):
        return f"block={block!r} is neither 'decoder' nor 'mtp'"
    if isinstance(mtp_index, bool) or not isinstance(mtp_index, int) or (block == "mtp" and mtp_index < 0):
        return f"mtp_idx={record.get('mtp_idx')!r} is not an integer >= 0"
    tpe = record.get("tpe")
    if not isinstance(tpe, list) or not tpe or not all(isinstance(row, list) and row for row in tpe):
        return "tpe is not a non-empty list of non-empty lists"
    if len({len(row) for row in tpe}) != 1:
        return f"tpe's microbatches have different lengths {sorted({len(row) for row in tpe})}"
    if not all(isinstance(value, int) and not isinstance(value, bool) for row in tpe for value in row):
        return "tpe holds a value that is not an integer"
    try:
        counts = np.asarray(tpe, dtype=np.int64)
    except OverflowError:
        return "tpe holds a count beyond int64"
    if (counts < 0).any():
        return "tpe holds a negative count"
    total = counts.sum(axis=0)
    if (total < 0).any():  # wrapped around: the sum exceeds int64
        return "tpe's microbatches sum beyond int64"
    return record["iter"], (block, mtp_index, record["layer"]), total


def _events(
    iteration: int, lines: list[_Line], layout: MegatronLayout, result: MegatronImport, run_id: str
) -> list[RoutingEvent]:
    """One event per layer of an iteration: its lines placed at their global experts and summed."""
    totals: dict[int, np.ndarray] = {}
    for line in sorted(lines, key=lambda line: (line.key, line.rank)):
        layer_id = _layer_id(line.key, result)
        width = line.counts.shape[0] * layout.expert_parallel
        known = result.n_experts.setdefault(layer_id, width)
        if known != width:
            where = f"rank{line.rank}.jsonl iter {iteration}"
            result.skip(WIDTH, where, f"{_name(line.key)} has {width} experts, earlier {known}")
            result.lines -= 1
            continue
        offset = (line.rank // layout.expert_tensor_parallel) % layout.expert_parallel * line.counts.shape[0]
        total = totals.setdefault(layer_id, np.zeros(width, dtype=np.int64))
        total[offset : offset + line.counts.shape[0]] += line.counts
    layer_ids = sorted(totals)
    for layer_id in layer_ids:
        if layout.top_k > totals[layer_id].shape[0]:
            raise InvalidInputError(
                "top_k", layout.top_k, f"exceeds layer {layer_id}'s {totals[layer_id].shape[0]} experts"
            )
    return RoutingEvent.from_lists(
        run_id=run_id,
        step=iteration,
        mode="TRAIN",
        layer_id=layer_ids,
        n_experts=[totals[layer_id].shape[0] for layer_id in layer_ids],
        top_k=layout.top_k,
        expert_token_counts=[totals[layer_id] for layer_id in layer_ids],
        timestamp=time.time(),
    )


def _name(key: tuple[str, int, int]) -> str:
    block, mtp_index, layer = key
    return f"decoder.{layer}" if block == "decoder" else f"mtp.{mtp_index}.{layer}"


def _layer_id(key: tuple[str, int, int], result: MegatronImport) -> int:
    """Decoder layers keep their index; MTP layers take the ids after the decoder layers seen so far."""
    name = _name(key)
    layer_id = result.layer_ids.get(name)
    if layer_id is None:
        block, _, layer = key
        if block == "decoder":
            layer_id = layer
            if layer_id in result.layer_ids.values():
                raise InvalidInputError("layer", name, f"collides with layer id {layer_id} given to an MTP layer")
        else:
            layer_id = max(result.layer_ids.values(), default=-1) + 1
        result.layer_ids[name] = layer_id
    return layer_id
