"""Per-expert weight and gradient norms of attached MoE layers, measured on the device, read once per snapshot.

:class:`ExpertHealthTracker` finds each attached layer's per-expert parameters
and keeps two device buffers of ``[layers, widest layer]`` float32:

* **gradients**, at every optimizer step (:meth:`ExpertHealthTracker.hook_optimizer`
  installs an optimizer step pre-hook, when the step's gradients are final:
  gradient accumulation summed, clipping applied): each expert's squared
  gradient norm is added to the buffer, with ``torch.linalg.vector_norm``
  kernels and an ``add_``: no host synchronisation, no Python branch on a value;
* **weights**, at each snapshot: each expert's squared norm.

At each TRAIN snapshot of the monitor it follows (:meth:`ExpertHealthTracker.follow`)
the two buffers are copied to the host in one transfer (the one
synchronisation), combined with the snapshot's token counts into an
:class:`~chronomoe.expert_health.ExpertHealthRecord`, written to
``expert_health.jsonl`` and published on the bus's ``"expert_health"`` topic.

Which parameters are an expert's, inside the layer's experts module (the
attached module, or for a router convention the sibling module whose expert
count is the layer's): a parameter under a child list of one module per
expert (``local_experts.3...``, ``experts.3...``) is expert 3's; one named
``weight3`` / ``bias3`` (Transformer Engine's grouped linears) is expert 3's;
one whose first dimension is the local expert count (``gate_up_proj [E, ...]``,
``w1_EFD``) is all experts', row ``e`` being expert ``e``'s. Megatron's local
experts sit at their global ids (``local_expert_indices``). A layer where
none is found is left out and listed in :attr:`ExpertHealthTracker.untracked`.

Under ``torch.distributed`` each rank measures the parameters it holds
(``DTensor`` s by their local shards); the records rank 0 writes are its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import InvalidInputError
from ..expert_health import EXPERT_HEALTH_FILE, ExpertHealthConfig, ExpertHealthRecord, layer_health
from .conventions import EXPERT_COUNT_ATTRIBUTES, global_placement, int_attribute
from .layers import AttachedLayer

if TYPE_CHECKING:
    from ..bus import Subscription
    from ..monitor import Monitor
    from ..snapshots import SystemSnapshot

_INDEXED_NAME = re.compile(r"(?:weight|bias)(\d+)$")


@dataclass(frozen=True)
class ExpertTensors:
    """A layer's per-expert parameters.

    Attributes:
        experts_path: the module that holds them.
        stacked: parameters whose rows ``0..n_local-1`` are the local experts.
        indexed: parameters of one local expert each, with ``expert_of[i]`` its local id.
        offset: global id of local expert 0.
        n_local: the module's experts.
    """

    experts_path: str
    stacked: tuple[nn.Parameter, ...]
    indexed: tuple[nn.Parameter, ...]
    expert_of: tuple[int, ...]
    offset: int
    n_local: int


class ExpertHealthTracker:
    """Per-expert weight and gradient norms of ``layers`` of ``model`` (see the module docstring).

    Args:
        model: the model ``layers`` were attached on.
        layers: the attached layers (``monitor.attach(model).layers``).
        config: thresholds of the silent-expert signal.

    Attributes:
        layers: the tracked layers, in the order of the records.
        tensors: each tracked layer's :class:`ExpertTensors`.
        untracked: ids of the layers without per-expert parameters found.
        last_record: the record of the last snapshot followed (None before the first).

    Raises:
        InvalidInputError: no per-expert parameter found in any layer.
    """

    def __init__(
        self, model: nn.Module, layers: Sequence[AttachedLayer], *, config: ExpertHealthConfig | None = None
    ) -> None:
        self.config = config or ExpertHealthConfig()
        named = dict(model.named_modules())
        found = [(layer, find_expert_tensors(layer, named)) for layer in layers]
        tracked = [(layer, tensors) for layer, tensors in found if tensors is not None]
        self.untracked = tuple(layer.layer_id for layer, tensors in found if tensors is None)
        if not tracked:
            raise InvalidInputError(
                "layers", [layer.path for layer in layers], "no per-expert parameter found in any layer"
            )
        self.layers = tuple(layer for layer, _ in tracked)
        self.tensors = tuple(tensors for _, tensors in tracked)
        self.device = (self.tensors[0].stacked + self.tensors[0].indexed)[0].device
        width = max(layer.n_experts for layer in self.layers)
        self._grad_squares = torch.zeros(len(self.layers), width, dtype=torch.float32, device=self.device)
        self._grad_steps = [0] * len(self.layers)
        self._index = [
            torch.tensor(tensors.expert_of, dtype=torch.int64, device=self.device) + tensors.offset
            for tensors in self.tensors
        ]
        self._handles: list[RemovableHandle] = []
        self._subscription: Subscription | None = None
        self.last_record: ExpertHealthRecord | None = None

    # -- device side ------------------------------------------------------------------------
    def _squared_norms(self, position: int, gradients: bool) -> tuple[torch.Tensor, bool]:
        """``[width]`` squared norms of a layer's experts' weights or gradients, and whether any tensor had one
        (a parameter without a gradient is skipped: ``grad is None`` is host metadata)."""
        tensors = self.tensors[position]
        total = self._grad_squares.new_zeros(self._grad_squares.shape[1])
        seen = False
        for parameter in tensors.stacked:
            value = _local(parameter.grad if gradients else parameter)
            if value is None:
                continue
            dims = tuple(range(1, value.dim()))
            norms = torch.linalg.vector_norm(value.detach(), dim=dims, dtype=torch.float32) if dims else value.abs()
            total.narrow(0, tensors.offset, tensors.n_local).add_(norms.float().square())
            seen = True
        values = [_local(parameter.grad if gradients else parameter) for parameter in tensors.indexed]
        if any(value is not None for value in values):
            # A parameter without a gradient (a frozen expert) counts as a zero, which keeps the index whole.
            zero = total.new_zeros(())
            present = [zero if value is None else value.detach() for value in values]
            norms = torch.stack(torch._foreach_norm(present, 2, dtype=torch.float32))
            total.index_add_(0, self._index[position], norms.square())
            seen = True
        return total, seen

    @torch.no_grad()
    def accumulate_gradients(self) -> None:
        """Add the current gradients' squared norms per expert (sync-free); call once per optimizer step,
        after the gradients are final and before they are zeroed (:meth:`hook_optimizer` does)."""
        for position in range(len(self.layers)):
            squares, seen = self._squared_norms(position, gradients=True)
            if seen:
                self._grad_squares[position].add_(squares)
                self._grad_steps[position] += 1

    def hook_optimizer(self, optimizer: Any) -> RemovableHandle:
        """Call :meth:`accumulate_gradients` before every ``optimizer.step()`` (a ``torch.optim.Optimizer`` or
        anything with ``register_step_pre_hook``, such as torchtitan's ``OptimizersContainer``).
        Returns the hook's handle; :meth:`remove` removes it too."""
        register = getattr(optimizer, "register_step_pre_hook", None)
        if not callable(register):
            raise InvalidInputError("optimizer", type(optimizer).__name__, "has no register_step_pre_hook")
        handle: RemovableHandle = register(lambda *args, **kwargs: self.accumulate_gradients())
        self._handles.append(handle)
        return handle

    # -- snapshot cadence ----------------------------------------------------------------------
    @torch.no_grad()
    def measure(self, run_id: str, step: int, token_counts: dict[int, np.ndarray]) -> ExpertHealthRecord:
        """The record of the window since the last call: weight norms now, gradient norms accumulated since
        (their buffer then starts again from zero). ``token_counts`` gives each layer's ``[n_experts]`` tokens
        in the window (a layer missing counts zero). One device-to-host copy."""
        weights = torch.stack(
            [self._squared_norms(position, gradients=False)[0] for position in range(len(self.layers))]
        )
        both = torch.stack([weights, self._grad_squares]).cpu().numpy()
        self._grad_squares.zero_()
        steps, self._grad_steps = self._grad_steps, [0] * len(self.layers)
        layers = []
        for position, layer in enumerate(self.layers):
            width = layer.n_experts
            grads = np.sqrt(both[1, position, :width] / steps[position]) if steps[position] else None
            counts = np.asarray(token_counts.get(layer.layer_id, np.zeros(width)), dtype=np.int64)[:width]
            layers.append(
                layer_health(
                    layer.layer_id, np.sqrt(both[0, position, :width]), grads, steps[position], counts, self.config
                )
            )
        return ExpertHealthRecord(
            run_id=run_id,
            step=step,
            silent_grad_ratio=self.config.silent_grad_ratio,
            min_token_share=self.config.min_token_share,
            layers=layers,
        )

    def follow(self, monitor: Monitor) -> Subscription:
        """At each TRAIN snapshot of ``monitor``: :meth:`measure` with its counts, write the record to the run
        folder's ``expert_health.jsonl`` (when the monitor writes one), publish it on ``"expert_health"``.
        Replaces an earlier follow; :meth:`remove` ends it."""
        if self._subscription is not None:
            self._subscription.unsubscribe()

        def on_snapshot(snapshot: SystemSnapshot) -> None:
            counts = {layer.layer_id: np.asarray(layer.expert_token_counts) for layer in snapshot.layers}
            record = self.measure(snapshot.run_id, snapshot.step, counts)
            self.last_record = record
            if monitor.writer is not None:
                monitor.writer.append_jsonl(EXPERT_HEALTH_FILE, [record])
            monitor.bus.publish("expert_health", record)

        self._subscription = monitor.bus.subscribe("snapshot", on_snapshot, mode="TRAIN")
        return self._subscription

    def remove(self) -> None:
        """Remove the optimizer hooks and the monitor subscription (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._subscription is not None:
            self._subscription.unsubscribe()
            self._subscription = None


def _local(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A ``DTensor``'s local shard (norms of shards need no collective), any other tensor itself."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def find_expert_tensors(layer: AttachedLayer, named: dict[str, nn.Module]) -> ExpertTensors | None:
    """The per-expert parameters of an attached layer (see the module docstring), or None."""
    parent_path = layer.path.rpartition(".")[0]
    candidates = [layer.path] + [
        path
        for path, module in named.items()
        if path.startswith(f"{parent_path}.") and not path.startswith(f"{layer.path}.") and path != layer.path
        if int_attribute(module, EXPERT_COUNT_ATTRIBUTES) == layer.n_experts
    ]
    for path in candidates:
        tensors = _expert_tensors(path, named[path], named.get(path.rpartition(".")[0]), layer)
        if tensors is not None:
            return tensors
    return None


def _expert_tensors(
    path: str, module: nn.Module, parent: nn.Module | None, layer: AttachedLayer
) -> ExpertTensors | None:
    n_local = int_attribute(module, EXPERT_COUNT_ATTRIBUTES)
    if n_local is None or n_local > layer.n_experts:
        return None
    offset = 0 if n_local == layer.n_experts else (global_placement(parent, n_local) or (-1, 0))[0]
    if offset < 0:
        return None
    stacked, indexed, expert_of = [], [], []
    for name, parameter in module.named_parameters():
        expert = _expert_in_name(name, module, n_local)
        if expert is not None:
            indexed.append(parameter)
            expert_of.append(expert)
        elif parameter.dim() >= 1 and parameter.shape[0] == n_local:
            stacked.append(parameter)
    if not stacked and not indexed:
        return None
    return ExpertTensors(path, tuple(stacked), tuple(indexed), tuple(expert_of), offset, n_local)


def _expert_in_name(name: str, module: nn.Module, n_local: int) -> int | None:
    """The local expert a parameter belongs to by its name: under a list of ``n_local`` modules, or ``weight<e>``."""
    parts = name.split(".")
    owner: Any = module
    for part in parts[:-1]:
        if isinstance(owner, (nn.ModuleList, nn.Sequential)) and len(owner) == n_local and part.isdigit():
            return int(part)
        owner = getattr(owner, part, None)
    match = _INDEXED_NAME.fullmatch(parts[-1])
    if match is not None and int(match.group(1)) < n_local:
        return int(match.group(1))
    return None
