"""What may join a Monitor's bus as its controller or lens: the checks run before anything is created, the
marker of an argument left out, and a participant's checkpoint state."""

from __future__ import annotations

from enum import Enum
from typing import Any

from chronomoe.controller import Controller
from chronomoe.lens import LensStateKeeper

from .errors import InvalidInputError


class Default(Enum):
    """Marks a participant argument left out: the Monitor makes its default one (``None`` means none)."""

    PARTICIPANT = "default"


DEFAULT = Default.PARTICIPANT


def check_controller(controller: object) -> None:
    """Raise :class:`~chronomoe.errors.InvalidInputError` naming ``controller`` unless it is a
    :class:`~chronomoe.controller.Controller`, ``None`` or :data:`DEFAULT`."""
    if controller is None or controller is DEFAULT:
        return
    if not isinstance(controller, Controller):
        raise InvalidInputError(
            "controller",
            controller,
            "must have on_snapshot and on_transition methods (chronomoe.controller.Controller) or be None",
        )


def check_lens(lens: object) -> None:
    """Raise :class:`~chronomoe.errors.InvalidInputError` naming ``lens`` unless it is a
    :class:`~chronomoe.lens.LensStateKeeper`, ``None`` or :data:`DEFAULT`."""
    if lens is None or lens is DEFAULT:
        return
    if not isinstance(lens, LensStateKeeper):
        raise InvalidInputError("lens", lens, "must be a chronomoe.lens.ChronoLens (or LensStateKeeper) or None")


def participant_state(participant: object) -> dict[str, Any] | None:
    """A controller's ``state_dict()`` when it has one (stateless controllers have none)."""
    state_dict = getattr(participant, "state_dict", None)
    if not callable(state_dict):
        return None
    state: dict[str, Any] = state_dict()
    return state
