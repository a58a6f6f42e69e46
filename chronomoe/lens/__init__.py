"""Lenses: Phase 2's router-input transforms. ``LensState`` needs no torch; the modules do."""

from .state import FollowsBus, LensState

__all__ = ["ChronoLens", "FollowsBus", "IdentityLens", "LensState"]


def __getattr__(name: str):
    if name in ("ChronoLens", "IdentityLens"):
        from . import modules

        return getattr(modules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
