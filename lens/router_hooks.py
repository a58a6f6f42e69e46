"""Putting a lens on the router path: each attached router reads ``lens(hidden_states, None, layer_id)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from chronomoe.capture.routers import RouterSite

from .modules import ChronoLens


def apply_lens_to_routers(lens: ChronoLens, sites: Sequence[RouterSite]) -> list[RemovableHandle]:
    """Forward pre-hooks that pass each router's hidden states through ``lens``; remove the handles to undo.

    The hidden states are the router's first positional argument (or its
    ``hidden_states`` keyword). The hook only calls the lens, with
    ``state=None`` (a lens reads its own current state): an
    :class:`~chronomoe.lens.IdentityLens` returns the very tensor it gets, so
    routing, outputs and recorded counts stay bitwise identical, compiled or not.
    """
    return [site.module.register_forward_pre_hook(_lens_hook(lens, site.layer_id), with_kwargs=True) for site in sites]


def _lens_hook(lens: ChronoLens, layer_id: int) -> Any:
    def hook(
        module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if args:
            return (lens(args[0], None, layer_id), *args[1:]), kwargs
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": lens(kwargs["hidden_states"], None, layer_id)}
        return args, kwargs

    return hook
