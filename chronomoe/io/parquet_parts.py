"""Parquet part files that survive a crash: row groups appended as frames, sealed into standard Parquet.

A table of a Parquet run (events, snapshots, ...) is a folder of *parts*.
A writer appends to its current part one row group per batch (a snapshot's
events, a snapshot, ...), each in one ``write()``; the part is named
``<name>.parquet.partial`` while it grows and becomes ``<name>.parquet`` once
*sealed* (its Parquet footer appended, then an atomic rename), so globs such
as ``routing_events/*.parquet`` only ever see complete files.

Layout of a part::

    PAR1                                   the Parquet magic (4 bytes)
    frame 1, frame 2, ...                  one per row group
    footer, footer length, PAR1            only once sealed

    frame = header (24 bytes: b"CMRG", footer length u32, row group length u64, CRC-32 of each)
            + the row group's own footer (offsets as if its row group began at byte 4)
            + the row group (column chunks as pyarrow encoded them)

Each frame says everything needed to read its row group, so whatever a
crash leaves is recoverable: the complete frames (each checked by its length
and CRCs) are the part's row groups, and bytes after the last complete frame
are a torn tail. :func:`scan_frames` finds them, :func:`read_part` reads a
part (sealed, growing or torn) without changing it, :func:`seal` finishes
one. The sealed footer is pyarrow's combination of the frames' footers with
their offsets moved to where the row groups lie
(:func:`~chronomoe.io.parquet_footer.shift_offsets`); the frame headers and
per-row-group footers stay in the file, unread by Parquet readers (about 1%
of a part of events).
"""

from __future__ import annotations

import errno
import io
import logging
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CorruptRecordError
from .parquet_footer import shift_offsets

logger = logging.getLogger(__name__)

MAGIC = b"PAR1"
SEALED_SUFFIX = ".parquet"
PARTIAL_SUFFIX = ".parquet.partial"
TORN_SUFFIX = ".parquet.torn"
"""Suffix of the file that receives the torn tails cut from a part (appended, one after another)."""

_FRAME = struct.Struct("<4sIQII")
_FRAME_MAGIC = b"CMRG"
_TRAILER = struct.Struct("<I4s")


def encode_frame(table: pa.Table, **write_options: object) -> bytes:
    """One frame holding ``table`` as a single row group (``write_options`` go to ``pq.write_table``)."""
    footer, body = encode_row_group(table, **write_options)
    return pack_frame(footer, [body])


def encode_row_group(table: pa.Table, **write_options: object) -> tuple[bytes, pa.Buffer]:
    """``table`` as pyarrow writes it in a file of one row group: its footer (the Thrift ``FileMetaData``) and
    its body (the bytes between the leading magic and the footer, offsets counted from the file's start)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=max(1, table.num_rows), write_page_index=False, **write_options)
    data = sink.getvalue()
    footer_length, _ = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
    footer_start = len(data) - _TRAILER.size - footer_length
    return data[footer_start : len(data) - _TRAILER.size].to_pybytes(), data[len(MAGIC) : footer_start]


def pack_frame(footer: bytes, body: Sequence[bytes | pa.Buffer]) -> bytes:
    """A frame of a row group's ``footer`` and its body, given in pieces (offsets as if the body began at byte
    4 of a file)."""
    body_crc, body_length = 0, 0
    for piece in body:
        body_crc = zlib.crc32(piece, body_crc)
        body_length += len(piece)
    header = _FRAME.pack(_FRAME_MAGIC, len(footer), body_length, zlib.crc32(footer), body_crc)
    return b"".join((header, footer, *body))


@dataclass
class FrameScan:
    """What :func:`scan_frames` found: the frames' footers (offsets moved to where their row groups lie),
    the byte where the last complete frame ends, and the file's size (a torn tail when larger)."""

    footers: list[bytes]
    end: int
    size: int

    @property
    def torn_bytes(self) -> int:
        return self.size - self.end


def scan_frames(data: bytes | memoryview, *, check_bodies: bool = True) -> FrameScan:
    """The complete frames of a growing part's bytes (see the module docstring); stops at the first frame
    that is incomplete or fails its CRC (``check_bodies=False`` checks the footers' only)."""
    view = memoryview(data)
    size = len(view)
    if size < len(MAGIC) or bytes(view[: len(MAGIC)]) != MAGIC:
        return FrameScan([], 0, size)
    position = len(MAGIC)
    footers = []
    while position + _FRAME.size <= size:
        magic, footer_length, body_length, footer_crc, body_crc = _FRAME.unpack_from(view, position)
        footer_start = position + _FRAME.size
        body_start = footer_start + footer_length
        end = body_start + body_length
        if magic != _FRAME_MAGIC or end > size:
            break
        footer = bytes(view[footer_start:body_start])
        if zlib.crc32(footer) != footer_crc or (check_bodies and zlib.crc32(view[body_start:end]) != body_crc):
            break
        footers.append(shift_offsets(footer, body_start - len(MAGIC)))
        position = end
    return FrameScan(footers, position, size)


def combine(footers: Sequence[bytes]) -> pq.FileMetaData:
    """One file's metadata holding the row groups of every footer, in order (at least one footer)."""
    combined: pq.FileMetaData | None = None
    for footer in footers:
        metadata = pq.read_metadata(pa.BufferReader(MAGIC + footer + _TRAILER.pack(len(footer), MAGIC)))
        if combined is None:
            combined = metadata
        else:
            combined.append_row_groups(metadata)
    if combined is None:
        raise ValueError("no footer to combine")
    return combined


def sealing_bytes(footers: Sequence[bytes]) -> bytes:
    """What sealing appends to a part whose complete frames have ``footers``: its footer, length and magic."""
    sink = pa.BufferOutputStream()
    combine(footers).write_metadata_file(sink)
    metadata_file: bytes = sink.getvalue().to_pybytes()  # PAR1, footer, length, PAR1
    return metadata_file[len(MAGIC) :]


def sealed_name(partial: Path) -> Path:
    return partial.with_name(partial.name[: -len(PARTIAL_SUFFIX)] + SEALED_SUFFIX)


@dataclass(frozen=True)
class OpenPart:
    """A part opened for reading: ``data``, its bytes as mapped when it was opened (zero-copy, and still valid
    when the part is sealed or renamed meanwhile), and ``file``, a ``ParquetFile`` over them."""

    data: pa.Buffer
    file: pq.ParquetFile

    def reader(self) -> pq.ParquetFile:
        """Another ``ParquetFile`` over the same bytes and metadata, for another thread: pyarrow's are not safe
        to share between threads (their read cache)."""
        return pq.ParquetFile(pa.BufferReader(self.data), metadata=self.file.metadata)


def open_part(path: Path) -> OpenPart | None:
    """A part opened without being changed: a sealed part as it is, a growing or torn one (``.partial``) through
    the footer of its complete frames; ``None`` for a part without any.

    Raises :class:`~chronomoe.errors.CorruptRecordError` for a sealed part that Parquet cannot read.
    """
    if path.name.endswith(PARTIAL_SUFFIX):
        try:
            data = _mapped(path)
        except FileNotFoundError:
            if not sealed_name(path).exists():
                raise
            return open_part(sealed_name(path))  # sealed since it was listed
        scan = scan_frames(memoryview(data))
        if not scan.footers:
            return None
        return OpenPart(data, pq.ParquetFile(pa.BufferReader(data), metadata=combine(scan.footers)))
    try:
        data = _mapped(path)
        return OpenPart(data, pq.ParquetFile(pa.BufferReader(data)))
    except (OSError, pa.ArrowException) as error:
        raise CorruptRecordError(str(path), 0, f"not a readable Parquet file: {error}") from None


def _mapped(path: Path) -> pa.Buffer:
    """The file's bytes, memory-mapped (an empty buffer for an empty file, which cannot be mapped)."""
    if not path.stat().st_size:
        return pa.py_buffer(b"")
    buffer: pa.Buffer = pa.memory_map(str(path)).read_buffer()
    return buffer


def read_part(path: Path) -> pq.ParquetFile | None:
    """:func:`open_part`'s ``ParquetFile`` (``None`` for a part without a complete row group)."""
    part = open_part(path)
    return None if part is None else part.file


def write_all(descriptor: int, data: bytes, offset: int) -> None:
    """Write ``data`` at ``offset`` whole (a regular file may accept fewer bytes than asked)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(descriptor, view, offset)
        if not written:
            raise OSError(errno.EIO, "pwrite() accepted no bytes")
        view, offset = view[written:], offset + written


@dataclass
class Repair:
    """What :func:`seal` did to a growing or torn part."""

    path: Path
    row_groups: int
    torn_bytes: int
    sealed: Path | None


def _no_follow_opener(path: str, flags: int) -> int:
    """Open without following a symlink: a link planted in a run folder must not redirect writes."""
    return os.open(path, flags | os.O_NOFOLLOW, 0o666)


def open_part_for_append(path: Path) -> io.FileIO:
    """Open a growing part unbuffered for appending frames: a new one starts with the Parquet magic, an existing
    one has a torn tail cut first (moved to ``<name>.parquet.torn``)."""
    handle = open(path, "a+b", buffering=0, opener=_no_follow_opener)  # noqa: SIM115 (the writer keeps it open)
    try:
        if os.fstat(handle.fileno()).st_size:
            _cut_torn_tail(path, handle.fileno(), scan_frames(_read_all(handle.fileno())))
        if not os.fstat(handle.fileno()).st_size:  # new, or torn inside its magic
            write_all(handle.fileno(), MAGIC, 0)
    except BaseException:
        handle.close()
        raise
    return handle


def _read_all(descriptor: int) -> bytes:
    return os.pread(descriptor, os.fstat(descriptor).st_size, 0)


def _cut_torn_tail(partial: Path, descriptor: int, scan: FrameScan) -> None:
    """Move the bytes after a part's last complete frame to ``<name>.parquet.torn``, logged, and cut them."""
    if not scan.torn_bytes:
        return
    torn_path = partial.with_name(partial.name[: -len(PARTIAL_SUFFIX)] + TORN_SUFFIX)
    with open(torn_path, "ab", opener=_no_follow_opener) as torn:
        torn.write(os.pread(descriptor, scan.torn_bytes, scan.end))  # a buffered file object writes all of it
    os.ftruncate(descriptor, max(scan.end, 0))
    logger.warning(
        "%s ended in %d torn bytes (a crash mid-write) after %d complete row groups; moved them to %s",
        partial,
        scan.torn_bytes,
        len(scan.footers),
        torn_path,
    )


def seal(partial: Path, *, fsync: bool = False, check_bodies: bool = True) -> Repair:
    """Finish a part: cut a torn tail (moved to ``<name>.parquet.torn``), append the footer of its complete
    frames, rename it ``<name>.parquet``. A part without a complete frame is removed (its bytes moved aside).
    ``check_bodies=False`` trusts the row groups' bytes (a part this process wrote) and checks only the frames.

    Logs a warning when a torn tail was cut. Raises ``OSError`` when the files cannot be written.
    """
    with open(partial, "r+b", buffering=0, opener=_no_follow_opener) as handle:
        descriptor = handle.fileno()
        scan = scan_frames(_read_all(descriptor), check_bodies=check_bodies)
        _cut_torn_tail(partial, descriptor, scan)
        if scan.footers:
            write_all(descriptor, sealing_bytes(scan.footers), scan.end)
            if fsync:
                os.fsync(descriptor)
    if not scan.footers:
        partial.unlink()
        return Repair(partial, 0, scan.torn_bytes, None)
    sealed = sealed_name(partial)
    os.replace(partial, sealed)
    return Repair(partial, len(scan.footers), scan.torn_bytes, sealed)
