"""Routing counts summed across the ranks of a torch.distributed job: one global picture on every rank.

A :class:`~chronomoe.Monitor` created after ``torch.distributed.init_process_group``
holds a :class:`RankReduction` over its process group (default: the world).
Each *reducing call* — ``snapshot()``, ``observe()``, and ``step()`` when it
drains a full staging ring (a window longer than ``capacity`` steps) — makes
two collectives on that group, never one per step:

1. **agreement**: one MAX all-reduce of nine int64 (which call, its step,
   the staged step count, a fingerprint of the recorded layers, the stop
   flag). Each checked value ``v`` travels as ``v`` and ``-v``, so one MAX gives
   the largest and the smallest value over the ranks; when they differ every
   rank raises the same :class:`DistributedMismatchError`, naming both, before
   any payload moves. It must come first: the payload's size depends on those
   values, and an all-reduce of different sizes aborts gloo
   (``Received data size doesn't match expected size``) and desynchronises NCCL.
2. **payload**: one SUM all-reduce of the counts — in ``snapshot()`` the staged
   ``[steps, 2 modes, n_layers, width + 2]`` int64 block, in place on the
   recorder's device (per-step tokens per expert, out-of-range ids, record
   calls), so the routing events written are global too; in ``observe()`` the
   window's ``[n_layers, n_experts]`` matrix.

Every rank then builds the identical snapshot, steps identical alert machines
and publishes identical transitions at the same step.

**Stop requests.** Under torch.distributed ``monitor.request_stop()`` only
marks this rank's request; the flag rides in the next agreement, and that same
call sets ``should_stop`` on every rank of the group before it publishes
anything. So ``should_stop`` turns True on all ranks inside the same call, at
the same step, whether the requesting handler ran on one rank or on all: a
request made while snapshot *k* is published is seen by everyone when
snapshot *k+1* (or the next reducing call) runs.

**Failures are errors, not hangs.** A rank that calls ``snapshot()`` with
another step, staged another number of steps, recorded other layers or made
another reducing call raises :class:`DistributedMismatchError` on every rank.
A rank that never joins makes the others raise :class:`CollectiveError` after
``timeout_s`` (default: the process group's own timeout).
"""

from __future__ import annotations

import datetime
import logging
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..errors import ChronoMoEError, InvalidInputError
from ..events import MODES

logger = logging.getLogger(__name__)

#: Calls that reduce across ranks; each is sent as its index.
REDUCING_CALLS = ("snapshot", "step", "observe")
_CALL_LABELS = {
    "snapshot": "snapshot()",
    "step": "step() draining a full staging ring (window longer than capacity steps)",
    "observe": "observe()",
}


class DistributedMismatchError(ChronoMoEError, RuntimeError):
    """The ranks of a process group made different monitor calls (raised identically on every rank)."""


class CollectiveError(ChronoMoEError, RuntimeError):
    """A monitor collective failed or timed out (a rank did not join, or the group broke)."""


class RankReduction:
    """Sums one monitor's routing counts over a process group and keeps every rank's monitor in step.

    Args:
        group: the process group whose ranks hold *different* tokens (default:
            the world). Tensor-parallel peers route the same tokens: keep the
            world and pass ``count_tokens=False`` on all but one peer, or pass
            the data-parallel group (see ``docs/distributed.md``).
        timeout_s: seconds a collective waits for the other ranks before
            :class:`CollectiveError`; ``None``: the group's own timeout.
        expert_ids: global ids of this rank's experts, in local order, when the
            rank records *local* expert ids (expert parallelism): local id
            ``j`` counts as global id ``expert_ids[j]``. One sequence for every
            layer, or ``{layer_id: sequence}`` (other layers report global ids).
            Local ids at or beyond ``len(expert_ids)`` count as out of range.
        count_tokens: ``False``: this rank takes part in every collective but
            adds no tokens (a replica of another rank's routing).
        on_stop: called with the reason when the group agrees to stop.
    """

    def __init__(
        self,
        group: dist.ProcessGroup | None = None,
        *,
        timeout_s: float | None = None,
        expert_ids: Sequence[int] | Mapping[int, Sequence[int]] | None = None,
        count_tokens: bool = True,
        on_stop: Callable[[str], None],
    ) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise InvalidInputError(
                "process_group", group, "torch.distributed is not initialised: call init_process_group before Monitor()"
            )
        if timeout_s is not None and not timeout_s > 0:
            raise InvalidInputError(
                "collective_timeout", timeout_s, "must be > 0 seconds (or None for the group's timeout)"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        if self.rank < 0:
            raise InvalidInputError(
                "process_group", group, f"global rank {dist.get_rank()} is not a member of this group"
            )
        self.size = dist.get_world_size(group)
        self.global_rank = dist.get_rank()
        self.timeout = None if timeout_s is None else datetime.timedelta(seconds=timeout_s)
        self.expert_ids = _check_expert_ids(expert_ids)
        self.count_tokens = bool(count_tokens)
        self._on_stop = on_stop
        backend = str(dist.get_backend(group))
        # Host-side values (agreement, observe payloads) go through the CPU where the group can;
        # a pure NCCL group reduces CUDA tensors only.
        self.reduces_cpu_tensors = "gloo" in backend or "nccl" not in backend
        self._pending_stop: str | None = None
        self._expected: tuple[str, int] | None = None

    def __repr__(self) -> str:
        return f"RankReduction(rank {self.rank} of {self.size})"

    # -- the Monitor's side -----------------------------------------------------
    def output_dir_of_rank(self, output_dir: str | os.PathLike[str] | None, write_on_all_ranks: bool) -> Path | None:
        """Where this rank writes: rank 0 of the group writes ``output_dir``, the others nothing.

        With ``write_on_all_ranks`` every rank writes its own copy under
        ``output_dir/rank<global rank>/`` (for node-local disks).
        """
        if output_dir is None:
            return None
        if write_on_all_ranks:
            return Path(output_dir) / f"rank{self.global_rank}"
        return Path(output_dir) if self.rank == 0 else None

    def expect(self, step: int, call: str) -> None:
        """Declare the call and step of the recorder drain that may follow (``snapshot`` or ``step``)."""
        self._expected = (call, int(step))

    def request_stop(self, reason: str) -> None:
        """Mark this rank's stop request; the group agrees on it at the next reducing call."""
        if self._pending_stop is None:
            self._pending_stop = reason
            logger.warning(
                "rank %d of %d: stop requested (%s); every rank sees should_stop at the next snapshot()",
                self.rank,
                self.size,
                reason,
            )

    # -- reductions --------------------------------------------------------------
    def staged_reducer(
        self, layer_ids: Sequence[int], n_experts: Sequence[int], capacity: int
    ) -> Callable[[torch.Tensor], None]:
        """The recorder's ``reduce`` hook for this layout: sums a staged block over the group in place."""
        layer_ids, n_experts = [int(i) for i in layer_ids], [int(n) for n in n_experts]
        fingerprint = zlib.crc32(
            np.asarray([len(layer_ids), capacity, *layer_ids, *n_experts], dtype=np.int64).tobytes()
        )
        column_map = _expert_column_map(self.expert_ids, layer_ids, n_experts)
        maps_on_device: dict[torch.device, torch.Tensor] = {}

        def reduce(block: torch.Tensor) -> None:
            """``block``: ``[steps, 2, n_layers, width + 2]`` int64 staged counts, replaced by their sum over ranks."""
            call, step = self._expected if self._expected is not None else ("step", -1)
            self._expected = None
            if block.device.type == "cpu" and not self.reduces_cpu_tensors:
                raise InvalidInputError(
                    "device",
                    str(block.device),
                    "this process group reduces CUDA tensors only (NCCL): record on the GPU",
                )
            self._agree(
                call,
                step,
                {"staged steps": block.shape[0], "layer layout (crc32)": fingerprint},
                device=self._device_for_host_values(block.device),
            )
            if block.shape[0] == 0:
                return
            if column_map is not None:
                index = maps_on_device.get(block.device)
                if index is None:
                    index = maps_on_device[block.device] = column_map.to(block.device)
                # Local expert columns move to their global ids; ids past the local slice join the out-of-range column.
                block.copy_(torch.zeros_like(block).scatter_add_(-1, index.expand_as(block), block))
            if not self.count_tokens:
                block[..., : block.shape[-1] - 1].zero_()  # keep the record-call column: events still appear
            self._all_reduce(block, dist.ReduceOp.SUM, call, step)

        return reduce

    def reduce_window(
        self, counts: np.ndarray, n_experts: np.ndarray, present: np.ndarray, *, step: int, mode: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``observe()``: sum a window's counts over the group.

        Args:
            counts: ``[L, E]`` int64 tokens per expert (global expert ids).
            n_experts: ``[L]`` experts of each layer.
            present: ``[L]`` bool, the layers this rank reports (others are absent, not zero).

        Returns ``(counts [L', E'], n_experts [L'], layer_ids [L'])`` over the group, where
        ``L'``, ``E'`` are the largest ``L``, ``E`` of any rank; a layer no rank reports is
        ``no_data``. Raises :class:`DistributedMismatchError` when ranks reporting a layer
        disagree on its ``n_experts``.
        """
        if mode not in MODES:
            raise InvalidInputError("mode", mode, f"must be one of {MODES}")
        local_layers, local_width = counts.shape
        device = self._device_for_host_values()
        n_layers, width = self._agree(
            "observe", step, {"mode": MODES.index(mode)}, maxed=(local_layers, local_width), device=device
        )
        payload = np.zeros((n_layers, width + 3), dtype=np.int64)
        if self.count_tokens:
            payload[:local_layers, :local_width] = counts
        widths = np.where(present, n_experts, 0)
        payload[:local_layers, width] = present
        payload[:local_layers, width + 1] = widths
        payload[:local_layers, width + 2] = widths * widths
        tensor = torch.from_numpy(payload).to(device)
        self._all_reduce(tensor, dist.ReduceOp.SUM, "observe", step)
        total = tensor.cpu().numpy()
        reporting, width_sum, width_squares = total[:, width], total[:, width + 1], total[:, width + 2]
        # The reporting ranks agree on a layer's n_experts exactly when n * sum(w^2) == (sum w)^2 (Cauchy-Schwarz).
        disagree = reporting * width_squares != width_sum * width_sum
        if disagree.any():
            layer = int(np.argmax(disagree))
            mine = int(widths[layer]) if layer < local_layers and present[layer] else "not reported"
            raise DistributedMismatchError(
                f"{self._who()}: ranks disagree in observe() at step {step}: layer {layer} has different n_experts "
                f"on different ranks (this rank: {mine})"
            )
        agreed_widths = np.where(reporting > 0, width_sum // np.maximum(reporting, 1), 1)
        return total[:, :width], agreed_widths, np.arange(n_layers, dtype=np.int64)

    # -- collectives -----------------------------------------------------------------
    def _device_for_host_values(self, cuda_device: torch.device | None = None) -> torch.device:
        """CPU where the group reduces CPU tensors; else ``cuda_device`` (default: the current CUDA device)."""
        if self.reduces_cpu_tensors:
            return torch.device("cpu")
        return cuda_device if cuda_device is not None else torch.device("cuda", torch.cuda.current_device())

    def _agree(
        self, call: str, step: int, checked: dict[str, int], *, device: torch.device, maxed: Sequence[int] = ()
    ) -> list[int]:
        """Check that every rank makes this call with the same step and ``checked`` values; fold in stop requests.

        One MAX all-reduce. Returns ``maxed`` maximised over the group.
        """
        values = {"call": REDUCING_CALLS.index(call), "step": step, **checked}
        stop_flag = self.rank + 1 if self._pending_stop is not None else 0
        header = [signed for value in values.values() for signed in (value, -value)] + [stop_flag, *maxed]
        tensor = torch.tensor(header, dtype=torch.int64, device=device)
        self._all_reduce(tensor, dist.ReduceOp.MAX, call, step)
        reduced = tensor.tolist()
        differences = []
        for position, (name, value) in enumerate(values.items()):
            highest, lowest = reduced[2 * position], -reduced[2 * position + 1]
            if highest != lowest:
                shown: tuple[object, object, object] = (lowest, highest, value)
                if name == "call":
                    shown = (
                        _CALL_LABELS[REDUCING_CALLS[lowest]],
                        _CALL_LABELS[REDUCING_CALLS[highest]],
                        _CALL_LABELS[call],
                    )
                differences.append(f"{name}: {shown[0]} on some ranks, {shown[1]} on others (this rank: {shown[2]})")
        if differences:
            raise DistributedMismatchError(
                f"{self._who()}: ranks disagree in {_CALL_LABELS[call]} at step {step}: "
                + "; ".join(differences)
                + ". Every rank must call snapshot()/observe() at the same steps and step() equally often."
            )
        requester = reduced[2 * len(values)]
        if requester:
            reason = self._pending_stop or f"a handler on rank {requester - 1} of the process group asked to stop"
            self._pending_stop = None
            self._on_stop(reason)
        return reduced[2 * len(values) + 1 :]

    def _all_reduce(self, tensor: torch.Tensor, op: dist.ReduceOp.RedOpType, call: str, step: int) -> None:
        try:
            work = dist.all_reduce(tensor, op=op, group=self.group, async_op=True)
            if self.timeout is None:
                work.wait()
            else:
                work.wait(self.timeout)
        except RuntimeError as error:
            waited = "the group's timeout" if self.timeout is None else f"{self.timeout.total_seconds():g} s"
            raise CollectiveError(
                f"{self._who()}: the monitor's collective in {_CALL_LABELS[call]} at step {step} failed after "
                f"waiting up to {waited} ({error}). Another rank did not make the same call: every rank must call "
                "snapshot()/observe() at the same steps and step() equally often."
            ) from error

    def _who(self) -> str:
        return f"rank {self.rank} of {self.size}"


def rank_reduction(
    process_group: dist.ProcessGroup | None,
    *,
    timeout_s: float | None,
    expert_ids: Sequence[int] | Mapping[int, Sequence[int]] | None,
    count_tokens: bool,
    on_stop: Callable[[str], None],
) -> RankReduction | None:
    """The Monitor's reduction: ``None`` in a single process (torch.distributed not initialised, no group given)."""
    if process_group is None and not (dist.is_available() and dist.is_initialized()):
        if expert_ids is not None or not count_tokens:
            raise InvalidInputError(
                "expert_ids" if expert_ids is not None else "count_tokens",
                expert_ids if expert_ids is not None else count_tokens,
                "needs torch.distributed: call init_process_group before Monitor()",
            )
        return None
    return RankReduction(
        process_group, timeout_s=timeout_s, expert_ids=expert_ids, count_tokens=count_tokens, on_stop=on_stop
    )


def _check_expert_ids(
    expert_ids: Sequence[int] | Mapping[int, Sequence[int]] | None,
) -> Sequence[int] | dict[int, list[int]] | None:
    """Normalise ``expert_ids`` to a list or ``{layer_id: list}``; ids must be distinct non-negative integers."""
    if expert_ids is None:
        return None
    by_layer = expert_ids if isinstance(expert_ids, Mapping) else {None: expert_ids}
    checked: dict[int | None, list[int]] = {}
    for layer_id, ids in by_layer.items():
        field = "expert_ids" if layer_id is None else f"expert_ids[{layer_id}]"
        try:
            values = [int(i) for i in ids]
        except (TypeError, ValueError):
            raise InvalidInputError(field, ids, "must be a sequence of integer expert ids") from None
        if not values or min(values) < 0 or len(set(values)) != len(values):
            raise InvalidInputError(field, values, "must list distinct expert ids >= 0, at least one")
        checked[layer_id if layer_id is None else int(layer_id)] = values
    if None in checked:
        return checked[None]
    return {layer_id: ids for layer_id, ids in checked.items() if layer_id is not None}


def _expert_column_map(
    expert_ids: Sequence[int] | dict[int, list[int]] | None, layer_ids: list[int], n_experts: list[int]
) -> torch.Tensor | None:
    """``[L, width + 2]`` int64: the column each staged column of each layer moves to (``None``: no remapping)."""
    if expert_ids is None:
        return None
    if isinstance(expert_ids, dict):
        unknown = sorted(set(expert_ids) - set(layer_ids))
        if unknown:
            raise InvalidInputError(
                f"expert_ids[{unknown[0]}]", expert_ids[unknown[0]], f"layer {unknown[0]} is not recorded ({layer_ids})"
            )
    width = max(n_experts)
    columns = np.tile(np.arange(width + 2, dtype=np.int64), (len(layer_ids), 1))
    for position, (layer_id, n) in enumerate(zip(layer_ids, n_experts, strict=True)):
        ids = expert_ids.get(layer_id) if isinstance(expert_ids, dict) else expert_ids
        if ids is None:
            continue
        if max(ids) >= n:
            field = f"expert_ids[{layer_id}]" if isinstance(expert_ids, dict) else "expert_ids"
            raise InvalidInputError(field, ids, f"layer {layer_id} has {n} experts: ids must be 0..{n - 1}")
        columns[position, :width] = width  # local ids past the slice: out of range
        columns[position, : len(ids)] = ids
    return torch.from_numpy(columns)
