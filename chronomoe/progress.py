"""Progress bars for the commands that can take more than a couple of seconds on big runs: one helper for all.

Every command that reads or writes a run folder at length (``report``,
``replay``, ``validate``, exports and imports) shows its progress through
:func:`progress_bar`, so they all behave alike: a tqdm bar on stderr, shown
only when stderr is a terminal (never in logs, pipes or CI) and, by
:func:`show_progress`, only when the work is large enough to take a while::

    from chronomoe.progress import progress_bar, show_progress

    size = path.stat().st_size
    with progress_bar(size, unit="B", description=path.name, enabled=show_progress(size)) as bar:
        for chunk in read(path):
            ...
            bar.update(len(chunk))

Where a callback is expected, pass ``bar.update``: it takes the amount of
work just done (bytes, lines, records: the bar's ``unit``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TextIO

PROGRESS_MIN_BYTES = 16 * 2**20
"""Work of at least this many bytes gets a bar (on a terminal): below it, a command takes about a second."""


class Progress(Protocol):
    """What :func:`progress_bar` yields: ``update(amount)`` after each piece of work."""

    def update(self, amount: int = 1) -> None: ...


class _Silent:
    """The bar when none is shown: updates do nothing."""

    def update(self, amount: int = 1) -> None:
        pass


def show_progress(size_bytes: int, min_bytes: int | None = None, stream: TextIO | None = None) -> bool:
    """Whether a bar is worth showing: ``stream`` (default stderr) is a terminal and the work is ``min_bytes``
    (default :data:`PROGRESS_MIN_BYTES`) or more."""
    output = stream if stream is not None else sys.stderr
    return size_bytes >= (PROGRESS_MIN_BYTES if min_bytes is None else min_bytes) and output.isatty()


@contextmanager
def progress_bar(
    total: int,
    *,
    unit: str = "B",
    description: str = "",
    enabled: bool | None = None,
    stream: TextIO | None = None,
) -> Iterator[Progress]:
    """A progress bar of ``total`` ``unit`` s on ``stream`` (default stderr); yields an object with ``update``.

    ``enabled`` ``None`` shows the bar when ``stream`` is a terminal; ``False``
    (or a stream that is not a terminal) yields a bar that shows nothing.
    Amounts are shown scaled (bytes by 1024: KB, MB).
    """
    output = stream if stream is not None else sys.stderr
    if enabled is False or not output.isatty():
        yield _Silent()
        return
    from tqdm import tqdm

    with tqdm(
        total=total,
        unit=unit,
        unit_scale=True,
        unit_divisor=1024 if unit == "B" else 1000,
        desc=description,
        file=output,
    ) as bar:
        yield bar


def count_lines(path: str | os.PathLike[str]) -> int:
    """Newlines in a file, read in 1 MiB blocks: the total of a bar counted in lines (records)."""
    with open(path, "rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
