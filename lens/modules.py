"""Lens modules (torch): transform router inputs given a LensState."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import torch
from torch import nn

from .state import LensState, LensStateKeeper


class ChronoLens(LensStateKeeper, nn.Module, metaclass=ABCMeta):
    """Base of lenses: ``forward(x, state=None, layer_id=0)`` returns router inputs of ``x``'s shape.

    ``state`` defaults to the lens's own :attr:`state`, which it keeps current
    once connected to a bus (``bus.connect(lens)``; a Monitor connects its
    lens). Phase 2 lenses override :meth:`forward`.
    """

    def __init__(self) -> None:
        nn.Module.__init__(self)
        self.state = LensState()

    @abstractmethod
    def forward(self, x: torch.Tensor, state: LensState | None = None, layer_id: int = 0) -> torch.Tensor:
        """Transformed router input for ``layer_id``, same shape as ``x``."""


class IdentityLens(ChronoLens):
    """Returns its input itself: same tensor object, same values, same autograd graph, no copy."""

    def forward(self, x: torch.Tensor, state: LensState | None = None, layer_id: int = 0) -> torch.Tensor:
        return x
