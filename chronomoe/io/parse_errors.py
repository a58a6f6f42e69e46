"""What goes wrong when a JSONL line is parsed into a record, and how it is told in one line."""

from __future__ import annotations

import orjson
from pydantic import ValidationError

from ..errors import InvalidInputError

PARSE_ERRORS = (ValidationError, orjson.JSONDecodeError, InvalidInputError, ValueError, TypeError)
"""Errors a record parser raises on a bad line; the loaders turn them into
:class:`~chronomoe.errors.CorruptRecordError` naming the file and line."""


def describe_parse_error(error: Exception) -> str:
    """One line of ``error``'s message: a ValidationError's first error as ``location: message``, the
    first line of any other error's text (its type's name when it has none)."""
    text = str(error)
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        return f"{location}: {first['msg']}" if location else first["msg"]
    return text.splitlines()[0] if text else type(error).__name__
