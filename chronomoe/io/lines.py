"""Line-level safety of JSONL files: bounded line reading, torn tails, regular files only.

A crash mid-write can leave a file's last line without its newline: a torn
tail. Readers skip it with a warning (:func:`iter_lines`, :func:`last_line`);
a writer moves it aside to ``<file>.torn`` before appending
(:func:`open_for_append`), so it never glues onto the next record.

Lines are read one at a time with a bounded ``readline``: a line longer than
``max_line_bytes`` (default :data:`MAX_LINE_BYTES`, 64 MiB) is refused with
:class:`~chronomoe.errors.CorruptRecordError` without being read whole. A
path that is not a regular file (a FIFO would block, a device never end) is
refused with :class:`~chronomoe.errors.InvalidInputError`; writes never
follow a symlink.
"""

from __future__ import annotations

import io
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import CorruptRecordError, InvalidInputError, check_integer

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 2**20
"""Longest JSONL line (newline included) the loaders read; a longer one is refused unread."""

TORN_SUFFIX = ".torn"
"""Suffix of the file next to a JSONL file that receives its torn tails, one a line."""

_BLOCK = 2**16
"""Bytes read per call when reading a file backwards, and the readers' buffer size."""

_TORN_TAILS_REPORTED: set[tuple[str, int, int]] = set()
"""Torn last lines already warned about in this process, as (real path, line number, length)."""


def check_max_line_bytes(max_line_bytes: int) -> int:
    """Refuse a line size limit that is not an integer >= 1 (bools refused too), naming it."""
    return check_integer("max_line_bytes", max_line_bytes, 1)


# -- reading ---------------------------------------------------------------
def _non_blocking_opener(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


@contextmanager
def open_regular_file(path: Path) -> Iterator[BinaryIO]:
    """Open for reading, closed on leaving the ``with`` block; refuse what is not a regular file (a FIFO
    would block, a device never end) with :class:`~chronomoe.errors.InvalidInputError`."""
    # Buffered by _BLOCK: with the default 8 KiB, readline makes a read() call every four event lines.
    with open(path, "rb", buffering=_BLOCK, opener=_non_blocking_opener) as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise InvalidInputError("path", str(path), "is not a regular file")
        yield handle


def numbered_lines(path: str | os.PathLike[str], max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes]]:
    """``(line_number, line)`` of every line of a file, from 1, newline kept; only the last line can lack
    its newline (a torn tail).

    A line longer than ``max_line_bytes`` (newline included) raises
    :class:`~chronomoe.errors.CorruptRecordError` after reading at most
    ``max_line_bytes + 1`` bytes of it. A path that is not a regular file
    raises :class:`~chronomoe.errors.InvalidInputError`.
    """
    path = Path(path)
    limit = check_max_line_bytes(max_line_bytes)
    with open_regular_file(path) as handle:
        readline = handle.readline
        line_number = 0
        while line := readline(limit + 1):
            line_number += 1
            if len(line) > limit:
                raise CorruptRecordError(
                    str(path), line_number, f"line longer than max_line_bytes={limit}; refused without reading it"
                )
            yield line_number, line


def iter_lines(path: str | os.PathLike[str], max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes]]:
    """:func:`numbered_lines` of a JSONL file without blank lines and without a torn last line, which is
    skipped with a warning (once per process for each torn tail, however often the file is read)."""
    for line_number, line in numbered_lines(path, max_line_bytes):
        if line[-1] != 0x0A:
            torn_tail = (os.path.realpath(path), line_number, len(line))
            if torn_tail not in _TORN_TAILS_REPORTED:  # a report reads a file several times: warn once
                _TORN_TAILS_REPORTED.add(torn_tail)
                logger.warning("%s:%d: skipping torn last line (%d bytes, no newline)", path, line_number, len(line))
            return
        if not line.isspace():
            yield line_number, line


def last_line(path: str | os.PathLike[str], max_line_bytes: int = MAX_LINE_BYTES) -> bytes | None:
    """The last complete non-blank line of a JSONL file (a torn tail ignored), read from the end; ``None`` if none.

    Its cost is the length of the lines read, never the file's. A last line
    longer than ``max_line_bytes`` raises :class:`~chronomoe.errors.InvalidInputError`.
    """
    path = Path(path)
    limit = check_max_line_bytes(max_line_bytes)
    with open_regular_file(path) as handle:
        descriptor = handle.fileno()
        end = line_start(descriptor, os.fstat(descriptor).st_size)  # drops a torn tail
        while end > 0:
            start = line_start(descriptor, end - 1)
            if end - start > limit:
                raise InvalidInputError("path", str(path), f"its last line is longer than max_line_bytes={limit}")
            line = os.pread(descriptor, end - start, start)
            if not line.isspace():
                return line
            end = start
    return None


def line_start(descriptor: int, end: int) -> int:
    """Offset just after the last newline before ``end`` (0 when none), reading backwards in blocks."""
    while end > 0:
        start = max(0, end - _BLOCK)
        newline = os.pread(descriptor, end - start, start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


# -- appending -------------------------------------------------------------
def _no_follow_opener(path: str, flags: int) -> int:
    """Open without following a symlink: a link planted in a run folder must not redirect writes."""
    return os.open(path, flags | os.O_NOFOLLOW, 0o666)


def open_for_append(path: Path) -> io.FileIO:
    """Open ``path`` unbuffered for append (not through a symlink), first moving a torn last line
    (no trailing newline) aside."""
    handle = open(path, "a+b", buffering=0, opener=_no_follow_opener)  # noqa: SIM115 (the writer keeps it open)
    try:
        _move_torn_tail_aside(path, handle.fileno())
    except BaseException:
        handle.close()
        raise
    return handle


def _move_torn_tail_aside(path: Path, descriptor: int) -> None:
    """Append a last line without its newline to ``<file>.torn`` (newline added) and cut it from the file.

    Reads backwards from the end in blocks, so the cost is the torn tail's
    length, never the file's.
    """
    size = os.fstat(descriptor).st_size
    if not size or os.pread(descriptor, 1, size - 1) == b"\n":
        return
    keep = line_start(descriptor, size)
    torn_path = move_tail_aside(path, descriptor, keep, TORN_SUFFIX)
    logger.warning(
        "%s ended in a torn line (%d bytes, a crash mid-write); moved it to %s",
        path,
        size - keep,
        torn_path,
    )


def move_tail_aside(path: Path, descriptor: int, keep: int, suffix: str) -> Path:
    """Append the bytes of ``descriptor``'s file from offset ``keep`` on to ``<path><suffix>`` (ended by a
    newline if they lack one), then cut the file to ``keep`` bytes; the aside file's path.

    Nothing is lost: the bytes are in the aside file before the file is cut.
    Copies in blocks, so memory stays flat whatever the tail's length.
    """
    size = os.fstat(descriptor).st_size
    aside_path = path.with_name(path.name + suffix)
    with open(aside_path, "ab", opener=_no_follow_opener) as aside:
        for offset in range(keep, size, _BLOCK):
            aside.write(os.pread(descriptor, min(_BLOCK, size - offset), offset))
        if size > keep and os.pread(descriptor, 1, size - 1) != b"\n":
            aside.write(b"\n")
    os.ftruncate(descriptor, keep)
    return aside_path
