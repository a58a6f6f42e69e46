"""Errors raised by ChronoMoE.

Every error the library raises on bad outside data derives from
:class:`ChronoMoEError` and names the offending field (or file and line) and
value, so a user can fix the input without reading library code. Record
validation errors from pydantic (``pydantic.ValidationError``) carry the field
location and input value in the same spirit.
"""

from __future__ import annotations

from typing import Any


class ChronoMoEError(Exception):
    """Base class of every error ChronoMoE raises on purpose."""


class InvalidInputError(ChronoMoEError, ValueError):
    """An argument or record field has a value the library cannot accept.

    Attributes:
        field: dotted name of the offending field or argument.
        value: the rejected value (possibly abbreviated for large inputs).
    """

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}={_abbreviate(value)}: {reason}")


class CorruptRecordError(ChronoMoEError, ValueError):
    """A JSONL line that is not the last line of its file could not be parsed or validated."""

    def __init__(self, path: str, line_number: int, reason: str) -> None:
        self.path = path
        self.line_number = line_number
        self.reason = reason
        super().__init__(f"{path}:{line_number}: {reason}")


def check_integer(field: str, value: Any, minimum: int, note: str = "") -> int:
    """``value`` when it is an integer of at least ``minimum`` (a bool is refused too), else
    :class:`InvalidInputError` naming ``field`` and the value (``note`` added to the reason)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(field, value, f"must be an integer >= {minimum}{note}")
    return value


def _abbreviate(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
