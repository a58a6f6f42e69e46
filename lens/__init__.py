"""Lenses: Phase 2's router-input transforms.

:class:`LensState` and :class:`LensStateKeeper` need no torch; :class:`ChronoLens`
and :class:`IdentityLens` (torch modules) are imported on first use, so that
``import chronomoe`` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .state import LensState, LensStateKeeper

if TYPE_CHECKING:
    from .modules import ChronoLens, IdentityLens

__all__ = ["ChronoLens", "IdentityLens", "LensState", "LensStateKeeper"]


def __getattr__(name: str) -> Any:
    if name in ("ChronoLens", "IdentityLens"):
        from . import modules

        return getattr(modules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
