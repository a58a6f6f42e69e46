"""Following a JSONL file while a writer appends to it: :class:`JsonlFollower`, ``tail -f`` for records.

Each :meth:`JsonlFollower.poll` returns the complete lines appended since the
last one. A last line without its newline (the writer is mid-``write()``, or
a crash tore it) is not returned until its newline arrives; if the next
writer moves it aside and cuts the file back, nothing of it was returned.
The first poll of an existing file returns only its last ``start_lines``
lines, read backwards from the end, so following a long run starts at once;
so does the first poll after the file shrank below what was read or was
replaced (another inode).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CorruptRecordError
from ..io.lines import MAX_LINE_BYTES, open_regular_file

_BLOCK = 2**16


class JsonlFollower:
    """The complete new lines of one JSONL file, poll after poll (see the module docstring).

    Args:
        path: the file (it may not exist yet).
        start_lines: lines of an existing file returned by the first poll (its last ones).
        max_line_bytes: longest line accepted; a longer one raises :class:`~chronomoe.errors.CorruptRecordError`.
    """

    def __init__(self, path: str | os.PathLike[str], start_lines: int, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.path = Path(path)
        self.start_lines = start_lines
        self.max_line_bytes = max_line_bytes
        self.offset = 0
        self.waiting_bytes = 0
        """Bytes after the last complete line: a line being written (or torn)."""
        self._inode: int | None = None

    def poll(self) -> list[bytes]:
        """The complete lines appended since the last poll (newlines stripped, blank lines dropped)."""
        if not self.path.is_file():
            self._inode, self.offset, self.waiting_bytes = None, 0, 0
            return []
        with open_regular_file(self.path) as handle:
            descriptor = handle.fileno()
            status = os.fstat(descriptor)
            if status.st_ino != self._inode or status.st_size < self.offset:
                self._inode = status.st_ino
                self.offset = _start_of_last_lines(descriptor, status.st_size, self.start_lines)
            data = os.pread(descriptor, status.st_size - self.offset, self.offset)
        complete = data.rfind(b"\n") + 1
        self.waiting_bytes = len(data) - complete
        if self.waiting_bytes > self.max_line_bytes:
            raise CorruptRecordError(
                str(self.path), 0, f"its last line is longer than max_line_bytes={self.max_line_bytes}"
            )
        self.offset += complete
        return [line for line in data[:complete].split(b"\n") if line.strip()]


def _start_of_last_lines(descriptor: int, size: int, count: int) -> int:
    """Offset of the first of the last ``count`` complete lines, read backwards in blocks.

    They start after the ``count + 1``-th newline from the end, whether the
    file ends with a newline or with a torn tail (whose newline is missing).
    """
    seen, position = 0, size
    while position > 0:
        start = max(0, position - _BLOCK)
        block = os.pread(descriptor, position - start, start)
        index = len(block)
        while (index := block.rfind(b"\n", 0, index)) >= 0:
            seen += 1
            if seen == count + 1:
                return start + index + 1
        position = start
    return 0
