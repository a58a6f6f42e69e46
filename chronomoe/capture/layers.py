"""The records of attaching: what the hooks call (:class:`RecordFunction`), what a user asks to hook
(:class:`LayerSpec`) and what was hooked (:class:`AttachedLayer`); shared by :mod:`.adapters` and
:mod:`.conventions`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class RecordFunction(Protocol):
    """What the hooks call: ``record(layer_id, indices=..., mode=...)`` or ``record(layer_id, counts=..., mode=...)``
    (:meth:`chronomoe.Monitor.record`). It must be sync-free."""

    def __call__(
        self,
        layer_id: int,
        indices: torch.Tensor | None = None,
        counts: torch.Tensor | None = None,
        mode: str = "TRAIN",
    ) -> None: ...


@dataclass(frozen=True)
class LayerSpec:
    """A module to hook, for ``attach(modules=[...])``.

    Attributes:
        path: the module's name in ``model.named_modules()``.
        n_experts: routed experts of the layer (default: the module's expert-count attribute).
        layer_id: id in events and snapshots (default: the first integer in ``path``).
        top_k: experts per token, for ``counts`` records (``indices`` records read it from the last dim).
    """

    path: str
    n_experts: int | None = None
    layer_id: int | None = None
    top_k: int | None = None


@dataclass(frozen=True)
class AttachedLayer:
    """One hooked MoE layer.

    Attributes:
        layer_id: id in events and snapshots.
        path: the module's name in ``model.named_modules()``.
        n_experts: routed experts.
        top_k: experts per token as configured (recorded ``indices`` update it from their last dim).
        convention: how it is recorded: a convention of :mod:`~chronomoe.capture.conventions`
            (``"experts-call:<parameter>"``, ``"experts-counts"``, ``"torchtitan-router"``,
            ``"nanomoe-used-capacity"``) or ``"extractor"``.
    """

    layer_id: int
    path: str
    n_experts: int
    top_k: int
    convention: str
