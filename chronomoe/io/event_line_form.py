"""The writer's canonical event line, cut into pieces read without a JSON parser: :func:`cut_line` and the parsers.

:func:`~chronomoe.io.serialize.event_line` writes an event as the bytes
``{"timestamp":T,"run_id":"R","step":S`` (the *opening*),
``,"mode":"M","layer_id":L,"n_experts":N,"top_k":K,"expert_token_counts":[``
(the *layer part*), the counts ``C``, ``],"active_experts":[``, the active
experts ``A``, and ``],"token_count":X,"router_prob_sums":null,"loss":F,
"aux_loss":G}`` and a newline (the *tail*; ``F`` and ``G`` a float or
``null``): no space, the keys in that order. :func:`cut_line` cuts a line
there; :func:`opening`, :func:`layer_part` and :func:`tail` each read a
piece whole or refuse it (``None``), and :mod:`chronomoe.io.event_lines`
checks ``C`` and ``A`` with numpy. A line whose pieces are all read is the
concatenation of the pieces, so it is in the canonical form whatever bytes
:func:`cut_line` looked for. The openings and tails of a step's lines are
the same bytes, and so are the layer parts of a layer's: the reader parses
each distinct piece once.

Each parser admits only values that ``RoutingEvent.model_validate_json``
reads as the fast path does, so an accepted line has no duplicate or
missing key and no value of another type:

* integers are ``0`` or digits without a leading zero, at most 18 of them:
  below ``10**18``, so ``int()`` of them is the model's (int64) value;
* floats have a fraction or an exponent (an integer timestamp is the
  model's float but JSON's int), an exponent of at most three digits;
  ``float()`` rounds them correctly, as the model's parser does
  (tests/test_fuzz.py holds the two to agree), to a value that may be
  infinite (``1e999``), which the parsers refuse as the model does;
* ``run_id`` is one or more bytes other than a quote, a backslash or a
  control character: a JSON string without escapes, whose value is its
  bytes decoded as UTF-8 (bytes that are not UTF-8 are refused);
* ``mode`` is one of :data:`~chronomoe.modes.MODES`;
  ``1 <= top_k <= n_experts``.
"""

from __future__ import annotations

import math
import re

from ..modes import MODES

MODE_KEY = b',"mode":'
COUNTS_END = b'],"active_experts":['

_INTEGER = rb"(0|[1-9][0-9]{0,17})"
_FLOAT = rb"(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+(?:[eE][+-]?[0-9]{1,3})?|[eE][+-]?[0-9]{1,3}))"

_OPENING = re.compile(rb'\{"timestamp":' + _FLOAT + rb',"run_id":"([^"\\\x00-\x1f]+)","step":' + _INTEGER)
_LAYER_PART = re.compile(
    rb',"mode":"(' + b"|".join(re.escape(mode.encode()) for mode in MODES)
    + rb')","layer_id":' + _INTEGER
    + rb',"n_experts":' + _INTEGER
    + rb',"top_k":' + _INTEGER
    + rb',"expert_token_counts":\['
)  # fmt: skip
_TAIL = re.compile(
    rb'\],"token_count":' + _INTEGER
    + rb',"router_prob_sums":null,"loss":(?:null|' + _FLOAT
    + rb'),"aux_loss":(?:null|' + _FLOAT
    + rb')\}\n?'
)  # fmt: skip
_MODE_NAMES = {mode.encode(): mode for mode in MODES}


def cut_line(line: bytes) -> tuple[bytes, bytes, bytes, bytes, bytes] | None:
    """``(opening, layer_part, counts, active, tail)``: the line cut before the first ``,"mode":``, after the
    first ``[`` after it, at the first ``]`` after that (which must begin ``],"active_experts":[``) and at the
    first ``]`` after that; ``counts`` and ``active`` are the bytes inside the two arrays. ``None`` when the line
    has no such places."""
    mode_key = line.find(MODE_KEY)
    counts_start = line.find(b"[", mode_key) + 1
    counts_end = line.find(b"]", counts_start)
    if mode_key < 0 or counts_start == 0 or not line.startswith(COUNTS_END, counts_end):
        return None  # counts_end < 0 fails startswith: one byte is left from -1
    active_start = counts_end + len(COUNTS_END)
    active_end = line.find(b"]", active_start)
    if active_end < 0:
        return None
    return (
        line[:mode_key],
        line[mode_key:counts_start],
        line[counts_start:counts_end],
        line[active_start:active_end],
        line[active_end:],
    )


def opening(piece: bytes) -> tuple[float, str, int] | None:
    """``(timestamp, run_id, step)`` of a line's opening; ``None`` unless it is one, with a finite timestamp."""
    match = _OPENING.fullmatch(piece)
    if match is None:
        return None
    timestamp = float(match[1])
    try:
        run_id = match[2].decode()
    except UnicodeDecodeError:
        return None
    return (timestamp, run_id, int(match[3])) if math.isfinite(timestamp) else None


def layer_part(piece: bytes) -> tuple[str, int, int, int] | None:
    """``(mode, layer_id, n_experts, top_k)`` of a line's layer part; ``None`` unless it is one with
    ``1 <= top_k <= n_experts``."""
    match = _LAYER_PART.fullmatch(piece)
    if match is None:
        return None
    mode, layer_id, n_experts, top_k = match.groups()
    width, top = int(n_experts), int(top_k)
    return (_MODE_NAMES[mode], int(layer_id), width, top) if 1 <= top <= width else None


def tail(piece: bytes) -> tuple[int, float | None, float | None] | None:
    """``(token_count, loss, aux_loss)`` of a line's tail; ``None`` unless it is one with finite losses."""
    match = _TAIL.fullmatch(piece)
    if match is None:
        return None
    token_count, loss, aux_loss = match.groups()
    losses = (None if loss is None else float(loss), None if aux_loss is None else float(aux_loss))
    if not all(value is None or math.isfinite(value) for value in losses):
        return None
    return int(token_count), *losses
