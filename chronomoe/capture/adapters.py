"""Find a model's MoE layers and hook their dispatch into a ``record`` function.

The built-in conventions (transformers 5.x experts calls, Megatron-Core
experts counts, torchtitan routers, nanoMoE routers) are listed, with what
each records, in :mod:`chronomoe.capture.conventions`; every module that
follows one is hooked. Any other model: ``attach(model, record, modules=...,
extractor=...)`` (see :func:`attach`). A model where nothing matches raises
:class:`~chronomoe.errors.InvalidInputError` saying what was looked for.

Hooks are sync-free: they read only host metadata (argument names, shapes,
``module.training``) and hand the tensors to
:meth:`~chronomoe.capture.recorder.RoutingRecorder.record`, which accumulates
on the device. ``module.training`` picks the mode: ``TRAIN`` or ``INFER``.
``torch.compile`` traces the hooks into the graph (no graph break, also with
``fullgraph=True``); forwards re-run by activation checkpointing are skipped,
compiled or not.

What is not seen: an experts-call hook records what the router sent; tokens an
experts module drops internally (its own capacity limit) still count. A
kernel that replaces the whole MoE block (transformers ``use_kernels=True``)
never calls the experts module: its layers stay ``no_data``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError
from .conventions import EXPERT_COUNT_ATTRIBUTES, LOOKED_FOR, detect, install_hook, int_attribute, top_k_of
from .layers import AttachedLayer, LayerSpec, RecordFunction

logger = logging.getLogger(__name__)

#: ``extractor(module, args, kwargs, output)`` returns ``{"indices": tensor}``, ``{"counts": tensor}`` or None.
Extractor = Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], "Mapping[str, torch.Tensor] | None"]


class Attachment:
    """Hooks installed by :func:`attach`; :meth:`remove` takes them all off.

    Attributes:
        layers: the hooked layers, in module order.
        device: where the recorder accumulates (the device of the MoE layers' parameters).
    """

    def __init__(self, layers: Sequence[AttachedLayer], device: torch.device) -> None:
        self.layers = tuple(layers)
        self.device = device
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __repr__(self) -> str:
        return f"Attachment({len(self.layers)} layers on {self.device}, hooks={'on' if self._handles else 'removed'})"


def attach(
    model: nn.Module,
    record: RecordFunction,
    *,
    extractor: Extractor | None = None,
    modules: Sequence[LayerSpec] | Mapping[str, int] | None = None,
) -> Attachment:
    """Find the MoE layers of ``model`` and hook their dispatch into ``record``.

    Args:
        model: any ``nn.Module`` (compiled models too: hooks are registered on the
            original modules, which ``torch.compile`` traces).
        record: called by the hooks, in every forward of a found layer, as
            ``record(layer_id, indices=...|counts=..., mode=...)``. The caller
            declares the layers (``attachment.layers``) to whatever ``record``
            feeds before the first forward (``Monitor.attach`` does).
        extractor: ``callable(module, args, kwargs, output)`` called after each
            forward of the ``modules``; returns ``{"indices": tensor}`` (expert
            ids, top-k last) or ``{"counts": tensor}`` (``[n_experts]`` tokens per
            expert) — the keywords of ``record`` — or None to record nothing.
            It runs in the training step: keep it sync-free (no ``.item()``,
            ``.cpu()``, ``.tolist()``, ``bincount``, ``nonzero``).
        modules: the modules to hook instead of searching: ``LayerSpec``s, or
            ``{path: n_experts}``. Without ``extractor`` each must match a
            built-in convention. Required with ``extractor``.

    Layer ids come from the first integer in each module path
    (``model.layers.3.mlp.experts`` -> 3); when some path has none or two
    layers share one (encoder and decoder stacks), layers are numbered
    0..L-1 in module order instead.

    Raises:
        InvalidInputError: no MoE layer found (the message lists what was looked
            for), an unknown module path, or ``extractor`` without ``modules``.
    """
    named = dict(model.named_modules())
    if modules is None:
        if extractor is not None:
            raise InvalidInputError(
                "modules", None, "extractor= needs modules=: the modules it reads and their n_experts"
            )
        found = [match for match in (detect(path, named) for path in named) if match is not None]
        if not found:
            raise InvalidInputError("model", type(model).__name__, f"no MoE layer found; looked for {LOOKED_FOR}")
    else:
        found = [_from_spec(spec, named, extractor) for spec in _specs(modules)]
    layers = _assign_layer_ids(found)
    device = _device_of([named[layer.path] for layer in layers], model)

    attachment = Attachment(layers, device)
    for layer in layers:
        module = named[layer.path]
        if layer.convention == "extractor":
            assert extractor is not None  # the extractor convention is only given with one
            handle = module.register_forward_hook(_extractor_hook(record, layer, extractor), with_kwargs=True)
        else:
            handle = install_hook(record, layer, module, _parent(layer.path, named), device)
        attachment._handles.append(handle)
    logger.info("attached to %d MoE layers: %s", len(layers), [(layer.layer_id, layer.path) for layer in layers])
    return attachment


# -- specs ------------------------------------------------------------------------------
def _specs(modules: Sequence[LayerSpec] | Mapping[str, int]) -> list[LayerSpec]:
    if isinstance(modules, Mapping):
        return [LayerSpec(path, n_experts) for path, n_experts in modules.items()]
    specs = list(modules)
    if not specs or not all(isinstance(spec, LayerSpec) for spec in specs):
        raise InvalidInputError(
            "modules", modules, "must be a non-empty list of LayerSpec or a {path: n_experts} mapping"
        )
    return specs


def _from_spec(spec: LayerSpec, named: Mapping[str, nn.Module], extractor: Extractor | None) -> tuple[LayerSpec, str]:
    """``spec`` completed from its module (the user's values win), with the convention to record."""
    module = named.get(spec.path)
    if module is None:
        raise InvalidInputError("modules.path", spec.path, "is not a module of the model (see model.named_modules())")
    if extractor is not None:
        n_experts = spec.n_experts or int_attribute(module, EXPERT_COUNT_ATTRIBUTES)
        if n_experts is None:
            raise InvalidInputError(
                f"modules[{spec.path!r}].n_experts",
                spec.n_experts,
                "required: the module has no expert-count attribute",
            )
        top_k = spec.top_k or top_k_of(module, _parent(spec.path, named))
        return LayerSpec(spec.path, n_experts, spec.layer_id, top_k), "extractor"
    detected = detect(spec.path, named)
    if detected is None:
        raise InvalidInputError(
            "modules.path", spec.path, f"matches no built-in convention; pass extractor=. Looked for {LOOKED_FOR}"
        )
    found, convention = detected
    return LayerSpec(spec.path, spec.n_experts or found.n_experts, spec.layer_id, spec.top_k or found.top_k), convention


def _assign_layer_ids(found: Sequence[tuple[LayerSpec, str]]) -> list[AttachedLayer]:
    """Explicit ids, else the first integer of each path, else 0..L-1 in module order."""
    ids = [spec.layer_id if spec.layer_id is not None else _first_integer(spec.path) for spec, _ in found]
    if None in ids or len(set(ids)) != len(ids):
        if any(spec.layer_id is not None for spec, _ in found):
            raise InvalidInputError("modules.layer_id", ids, "must be given for every module and distinct")
        logger.info("MoE module paths do not give distinct layer ids %s; numbering layers 0..%d", ids, len(ids) - 1)
        ids = list(range(len(found)))
    layers = []
    for layer_id, (spec, convention) in zip(ids, found, strict=True):
        # Detection and _from_spec fill n_experts and top_k in; ids are all set by now.
        assert layer_id is not None and spec.n_experts is not None and spec.top_k is not None
        layers.append(AttachedLayer(layer_id, spec.path, spec.n_experts, spec.top_k, convention))
    return layers


def _parent(path: str, named: Mapping[str, nn.Module]) -> nn.Module | None:
    return named.get(path.rpartition(".")[0]) if path else None


def _first_integer(path: str) -> int | None:
    hit = re.search(r"(?:^|\.)(\d+)(?:\.|$)", path)
    return int(hit.group(1)) if hit else None


def _device_of(modules: Sequence[nn.Module], model: nn.Module) -> torch.device:
    """Device of the first parameter or buffer of the MoE modules, else of the model, else CPU."""
    tensors = (tensor for owner in (*modules, model) for tensor in (*owner.parameters(), *owner.buffers()))
    first = next(tensors, None)
    return torch.device("cpu") if first is None else first.device


# -- the extractor hook ----------------------------------------------------------------
# The recorder itself skips forwards that activation checkpointing re-runs inside backward.
def _extractor_hook(
    record: RecordFunction, layer: AttachedLayer, extractor: Extractor
) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], None]:
    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        dispatch = extractor(module, args, kwargs, output)
        if dispatch is None:
            return
        if not isinstance(dispatch, Mapping) or len(dispatch) != 1 or not set(dispatch) <= {"indices", "counts"}:
            raise InvalidInputError(
                f"extractor({layer.path})", dispatch, "must return {'indices': tensor}, {'counts': tensor} or None"
            )
        record(layer.layer_id, **dispatch, mode="TRAIN" if module.training else "INFER")

    return hook
