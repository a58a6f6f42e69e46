"""The built-in conventions by which :func:`~chronomoe.capture.attach` finds MoE layers, and their hooks.

Each convention says which module of a layer is hooked, what its hook reads
and what that tensor holds. They are tried in this order on every module of
the model; every match is hooked:

============================  ==========================================  ==========================================
convention                    module                                      recorded
============================  ==========================================  ==========================================
``experts-call:<parameter>``  experts module, ``forward(hidden,           the routing argument, before the experts
                              <parameter>, <weights>)``, ``<parameter>``  run (forward pre-hook): expert ids
                              in :data:`ROUTING_PARAMETERS`, with an      ``[T, k]`` (``top_k_index``,
                              expert count (transformers 5.x)             ``router_indices``) or a one-hot dispatch
                                                                          mask ``[..., E]`` after capacity drops
                                                                          (``selected_experts``)
``experts-counts``            experts module, ``forward(hidden,           the ``tokens_per_expert`` argument
                              tokens_per_expert, probs)`` and an          ``[E_local]`` (tokens each local expert
                              expert count (Megatron-Core)                receives, after capacity drops), placed at
                                                                          the global ids of the parent's
                                                                          ``local_expert_indices``
``torchtitan-router``         router whose class name ends in             its output ``[1]``: expert ids
                              ``Router``, with integer ``num_experts``    ``[B, L, k]`` (forward hook), what the
                              and ``top_k``, ``forward(x,                 router chose
                              expert_bias...)`` (torchtitan's
                              ``TokenChoiceTopKRouter``)
``nanomoe-used-capacity``     router whose class name ends in             its output ``[0]``: ``used_capacity``
                              ``Router`` with an integer ``n_exp``        ``[E]``, tokens kept per expert after
                                                                          capacity drops
============================  ==========================================  ==========================================

A hook refuses (with :class:`~chronomoe.errors.InvalidInputError`) a tensor
that does not have the shape its convention promises, rather than count
something else. Hooks read only host metadata (names, shapes, dtypes,
devices); the counting happens on the device, in ``record``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import InvalidInputError
from .layers import AttachedLayer, LayerSpec, RecordFunction

#: Routing argument names of experts modules (second forward parameter) -> what the tensor holds.
ROUTING_PARAMETERS: dict[str, str] = {
    "top_k_index": "indices",
    "router_indices": "indices",
    "selected_experts": "dispatch_mask",
}
#: Second forward parameter of experts modules that receive their token counts (Megatron-Core).
COUNTS_PARAMETER = "tokens_per_expert"
#: First characters of the second forward parameter of torchtitan routers (``expert_bias_E``, ``expert_bias``).
ROUTER_BIAS_PARAMETER_PREFIX = "expert_bias"
#: Attributes read, in order, for a module's number of routed experts.
EXPERT_COUNT_ATTRIBUTES = (
    "num_experts",
    "total_experts",
    "num_local_experts",
    "n_routed_experts",
    "moe_num_experts",
    "n_experts",
    "n_exp",
)
#: Attributes read, in order, for experts per token (on the module, then on its ``config``).
TOP_K_ATTRIBUTES = ("top_k", "num_experts_per_tok", "moe_router_topk")

LOOKED_FOR = (
    "experts modules whose forward takes (hidden_states, <one of "
    + ", ".join(ROUTING_PARAMETERS)
    + ">, <weights>) and that have an expert count ("
    + ", ".join(EXPERT_COUNT_ATTRIBUTES)
    + "), as in transformers 5.x MoE models; experts modules whose forward takes (hidden, tokens_per_expert, "
    "probs), as in Megatron-Core; routers (class name ending in 'Router') with num_experts and top_k whose "
    "forward takes (x, expert_bias...), as in torchtitan; nanoMoE-style routers (class name ending in 'Router', "
    "an integer n_exp attribute, forward returning (used_capacity, ...)). For another model pass "
    "modules={path: n_experts} and extractor=callable(module, args, kwargs, output) -> {'indices': t} or {'counts': t}"
)


# -- detection -----------------------------------------------------------------------
def detect(path: str, named: Mapping[str, nn.Module]) -> tuple[LayerSpec, str] | None:
    """The first convention the module at ``path`` follows, as a spec with ``n_experts`` and ``top_k`` filled in,
    and the convention's name; None when it follows none."""

    module = named[path]
    parent = named.get(path.rpartition(".")[0]) if path else None
    second = _second_parameter(module)
    n_experts = int_attribute(module, EXPERT_COUNT_ATTRIBUTES)
    is_router = type(module).__name__.endswith("Router")
    if second in ROUTING_PARAMETERS and n_experts is not None:
        return LayerSpec(path, n_experts, top_k=top_k_of(module, parent)), f"experts-call:{second}"
    if second == COUNTS_PARAMETER and n_experts is not None:
        placement = global_placement(parent, n_experts)
        width = n_experts if placement is None else placement[1]
        return LayerSpec(path, width, top_k=top_k_of(module, parent)), "experts-counts"
    top_k = int_attribute(module, ("top_k",))
    if (
        is_router
        and second is not None
        and second.startswith(ROUTER_BIAS_PARAMETER_PREFIX)
        and top_k is not None
        and int_attribute(module, ("num_experts",)) is not None
    ):
        return LayerSpec(path, int_attribute(module, ("num_experts",)), top_k=top_k), "torchtitan-router"
    n_exp = int_attribute(module, ("n_exp",))
    if n_exp is not None and is_router:
        return LayerSpec(path, n_exp, top_k=top_k_of(module)), "nanomoe-used-capacity"
    return None


def _second_parameter(module: nn.Module) -> str | None:
    """Name of ``forward``'s second positional parameter, if it has one."""
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    positional = [
        p for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    return positional[1].name if len(positional) >= 2 else None


def int_attribute(owner: Any, names: tuple[str, ...]) -> int | None:
    """The first of ``names`` that ``owner`` has as a positive integer (not a bool)."""
    for name in names:
        value = getattr(owner, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def top_k_of(*owners: nn.Module | None) -> int:
    """Experts per token: the first of :data:`TOP_K_ATTRIBUTES` on each owner or its ``config``, else 1."""
    for owner in owners:
        for holder in (owner, getattr(owner, "config", None)):
            top_k = int_attribute(holder, TOP_K_ATTRIBUTES)
            if top_k is not None:
                return top_k
    return 1


def global_placement(parent: nn.Module | None, n_local: int) -> tuple[int, int] | None:
    """``(offset, n_global)`` of an experts module's local experts among all experts of its layer, read from the
    parent MoE layer's ``local_expert_indices`` (contiguous, as Megatron-Core places them) and
    ``config.num_moe_experts``; None when the parent does not say (then local ids are the layer's ids)."""
    indices = getattr(parent, "local_expert_indices", None)
    n_global = int_attribute(getattr(parent, "config", None), ("num_moe_experts",))
    if n_global is None or not isinstance(indices, (list, tuple)) or len(indices) != n_local:
        return None
    offset = indices[0] if indices and isinstance(indices[0], int) else -1
    if list(indices) != list(range(offset, offset + n_local)) or offset < 0 or offset + n_local > n_global:
        return None
    return offset, n_global


# -- hooks ---------------------------------------------------------------------------------
def _mode(module: nn.Module) -> str:
    return "TRAIN" if module.training else "INFER"


def install_hook(
    record: RecordFunction, layer: AttachedLayer, module: nn.Module, parent: nn.Module | None, device: torch.device
) -> RemovableHandle:
    """Hook ``module`` (the layer's module under its convention) so that each of its forwards calls ``record``.

    ``parent`` is the module holding it (Megatron's MoE layer says where its local experts sit among all);
    ``device`` is where the recorder counts (host tensors handed to experts are copied there).
    """
    if layer.convention.startswith("experts-call:"):
        return module.register_forward_pre_hook(_experts_call_hook(record, layer, module), with_kwargs=True)
    if layer.convention == "experts-counts":
        n_local = int_attribute(module, EXPERT_COUNT_ATTRIBUTES)
        assert n_local is not None  # detection found it
        offset = (global_placement(parent, n_local) or (0, n_local))[0]
        hook = _experts_counts_hook(record, layer, module, n_local, offset, device)
        return module.register_forward_pre_hook(hook, with_kwargs=True)
    if layer.convention == "torchtitan-router":
        return module.register_forward_hook(_router_ids_hook(record, layer))
    if layer.convention == "nanomoe-used-capacity":
        return module.register_forward_hook(_used_capacity_hook(record, layer))
    raise InvalidInputError("convention", layer.convention, "is not a built-in convention")


def _argument(
    layer: AttachedLayer, module: nn.Module, name: str
) -> Callable[[tuple[Any, ...], dict[str, Any]], torch.Tensor]:
    """Reads forward argument ``name`` of a call, positional or keyword; refuses anything but a tensor."""
    position = list(inspect.signature(module.forward).parameters).index(name)

    def read(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
        value = kwargs[name] if name in kwargs else args[position] if len(args) > position else None
        if not isinstance(value, torch.Tensor):
            raise InvalidInputError(f"{layer.path}.forward({name})", type(value).__name__, "expected a tensor")
        return value

    return read


def _experts_call_hook(
    record: RecordFunction, layer: AttachedLayer, experts: nn.Module
) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], None]:
    name = layer.convention.split(":", 1)[1]
    read = _argument(layer, experts, name)

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        routing = read(args, kwargs)
        if ROUTING_PARAMETERS[name] == "indices":
            record(layer.layer_id, indices=routing, mode=_mode(module))
        else:
            record(layer.layer_id, counts=routing.reshape(-1, layer.n_experts).sum(dim=0), mode=_mode(module))

    return hook


def _experts_counts_hook(
    record: RecordFunction, layer: AttachedLayer, experts: nn.Module, n_local: int, offset: int, device: torch.device
) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], None]:
    read = _argument(layer, experts, COUNTS_PARAMETER)
    padding = (offset, layer.n_experts - offset - n_local)

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        counts = read(args, kwargs)
        if counts.dim() != 1 or counts.shape[0] != n_local or counts.is_floating_point() or counts.dtype == torch.bool:
            raise InvalidInputError(
                f"{layer.path}.forward(tokens_per_expert)",
                (tuple(counts.shape), str(counts.dtype)),
                f"expected an integer tensor of {n_local} counts, one per local expert",
            )
        if counts.device != device:
            # Megatron's all-to-all dispatcher hands its experts a host tensor: copied without waiting for the
            # device (a pageable source is staged at once).
            counts = counts.to(device, non_blocking=True)
        if padding != (0, 0):
            counts = F.pad(counts.to(torch.int64), padding)  # the local experts at their global ids
        record(layer.layer_id, counts=counts, mode=_mode(module))

    return hook


def _router_ids_hook(record: RecordFunction, layer: AttachedLayer) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        expert_ids = output[1] if isinstance(output, (tuple, list)) and len(output) >= 2 else None
        if (
            not isinstance(expert_ids, torch.Tensor)
            or expert_ids.is_floating_point()
            or expert_ids.dim() < 1
            or expert_ids.shape[-1] != layer.top_k
        ):
            raise InvalidInputError(
                f"{layer.path}.forward()[1]",
                (tuple(getattr(expert_ids, "shape", ())), str(getattr(expert_ids, "dtype", type(expert_ids)))),
                f"torchtitan router convention expects integer expert ids [..., top_k={layer.top_k}]; "
                "pass extractor= for this router",
            )
        record(layer.layer_id, indices=expert_ids, mode=_mode(module))

    return hook


def _used_capacity_hook(
    record: RecordFunction, layer: AttachedLayer
) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        used_capacity = output[0] if isinstance(output, (tuple, list)) and output else None
        if not isinstance(used_capacity, torch.Tensor) or tuple(used_capacity.shape) != (layer.n_experts,):
            raise InvalidInputError(
                f"{layer.path}.forward()[0]",
                tuple(getattr(used_capacity, "shape", ())),
                f"nanoMoE convention expects used_capacity of shape ({layer.n_experts},); "
                "pass extractor= for this router",
            )
        record(layer.layer_id, counts=used_capacity, mode=_mode(module))

    return hook
