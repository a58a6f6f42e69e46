"""What the ``chronomoe`` subcommands share: exit codes, argument types, the one-line error parser, options."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import InvalidInputError
from ..events import MODES

EXIT_OK = 0
EXIT_NO = 1
EXIT_ERROR = 2
EXIT_BROKEN_PIPE = 128 + 13
"""The status of a process ended by SIGPIPE, as shells report it: what ``chronomoe`` returns when the reader of
its output goes away."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad arguments give one line on stderr (not the usage block) and exit code 2, like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@contextmanager
def output_option(option: str, path: Path) -> Iterator[None]:
    """Name the command-line option when its output folder cannot be made or written."""
    try:
        yield
    except OSError as error:
        raise InvalidInputError(option, str(path), error.strerror or str(error)) from None


def layer_ids(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"must be comma-separated layer ids such as 0,5,17, got {text!r}")
    return values


def even_columns(text: str) -> int:
    value = positive_int(text)
    if value < 2 or value % 2:
        raise argparse.ArgumentTypeError(f"must be an even integer >= 2, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def mode_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode",
        type=str.upper,  # the records say TRAIN and INFER; --mode infer means the same
        choices=MODES,
        default="TRAIN",
        help="which snapshots: TRAIN or INFER, in any case (default: TRAIN)",
    )


def schema_name(text: str) -> str:
    from ..schemas import RECORD_MODELS

    if text not in RECORD_MODELS:
        raise argparse.ArgumentTypeError(f"unknown record type {text!r}; choose from {', '.join(RECORD_MODELS)}")
    return text
