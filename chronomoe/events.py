"""RoutingEvent: the atomic log record, one per (step, layer, mode).

It records the *actual dispatch* (tokens each expert processed, after
capacity drops), not the router's preferences. ``token_count`` is derived as
``sum(expert_token_counts)``, never from ``batch * seq_len``, so it agrees
with what the experts really saw.

Counts are held as a read-only ``int64`` numpy array, so that windows of
thousands of events aggregate without per-element Python work; JSON carries
them as a list of integers.
"""

from __future__ import annotations

import math
import time
from enum import Enum
from typing import Annotated, Any

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from typing_extensions import Self

from .event_batch import build_events
from .modes import MODES as MODES
from .modes import Mode as Mode

INT64_LIMIT = 2.0**63
"""Counts (and their sums) must stay below this, so int64 arithmetic never wraps."""


def _to_numpy(value: Any) -> np.ndarray:
    """Array view of a list, tuple, numpy array or torch tensor (torch is not imported).

    Raises ``ValueError`` (which pydantic reports with the field's name) for
    what cannot be read as an array: ragged lists, tensors on the meta device.
    """
    try:
        if hasattr(value, "detach") and hasattr(value, "cpu"):
            tensor = value.detach()
            if getattr(tensor, "is_meta", False):
                raise ValueError("is a tensor on the meta device, which holds no values")
            if tensor.is_floating_point():
                tensor = tensor.double()  # bfloat16 and float8 have no numpy dtype
            array: np.ndarray = tensor.cpu().numpy()
            return array
        return np.asarray(value)
    except (TypeError, RuntimeError, NotImplementedError) as error:
        raise ValueError(f"cannot be read as an array: {error}") from None


def _check_numeric(array: np.ndarray, what: str) -> None:
    """Refuse arrays of bools, complex numbers, strings or objects."""
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise ValueError(f"must hold {what}, got dtype {array.dtype}")


def _as_counts(value: Any) -> np.ndarray:
    if (
        isinstance(value, np.ndarray)
        and value.dtype == np.int64
        and not value.flags.writeable
        and value.ndim == 1
        and (not value.size or value.min() >= 0)
    ):
        return value  # already validated (a view handed out by another record): no copy
    array = _to_numpy(value)
    if array.ndim != 1:
        raise ValueError(f"must be a 1-D sequence of per-expert counts, got shape {array.shape}")
    _check_numeric(array, "integers")
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array) | (array != np.round(array))
        if bad.any():
            index = int(np.argmax(bad))
            raise ValueError(f"element [{index}] = {array[index].item()!r} is not an integer count")
    if array.size and array.min() < 0:
        index = int(np.argmin(array))
        raise ValueError(f"element [{index}] = {array[index].item()!r} is negative")
    if array.size and array.sum(dtype=np.float64) >= INT64_LIMIT:
        raise ValueError(f"sums to {array.sum(dtype=np.float64)!r}, beyond the int64 range of token counts")
    counts = array.astype(np.int64)
    counts.flags.writeable = False
    return counts


def _as_floats(value: Any) -> np.ndarray:
    array = _to_numpy(value)
    if array.ndim != 1:
        raise ValueError(f"must be a 1-D sequence, got shape {array.shape}")
    _check_numeric(array, "numbers")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        index = int(np.argmax(~np.isfinite(array)))
        raise ValueError(f"element [{index}] = {array[index].item()!r} is not finite")
    array.flags.writeable = False
    return array


def _integer(value: Any) -> int:
    """Accept Python and numpy integers (not bools, not floats, not strings)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"must be an integer, got {type(value).__name__} {value!r}")
    return int(value)


def _integer_list(array: np.ndarray) -> list[int]:
    values: list[int] = array.tolist()
    return values


Integer = Annotated[int, BeforeValidator(_integer)]
"""An integer field that refuses floats, bools and numeric strings."""


CountsArray = Annotated[
    np.ndarray,
    BeforeValidator(_as_counts),
    PlainSerializer(_integer_list, return_type=list[int]),
    WithJsonSchema({"type": "array", "items": {"type": "integer", "minimum": 0}}),
]
"""Per-expert token counts: 1-D, non-negative integers, stored as read-only int64."""

FloatArray = Annotated[
    np.ndarray,
    BeforeValidator(_as_floats),
    PlainSerializer(_integer_list, return_type=list[float]),
    WithJsonSchema({"type": "array", "items": {"type": "number"}}),
]
"""1-D finite floats, stored as read-only float64."""


def _json_form(value: Any) -> Any:
    """A field value as the seed's dicts held it: arrays and tuples as lists, enums as their values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_json_form(item) for item in value]
    if isinstance(value, dict):
        return {name: _json_form(item) for name, item in value.items()}
    return value


def finite_or_none(name: str, value: float | None) -> float | None:
    """Reject NaN and infinities in an optional float field, naming it."""
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


class Record(BaseModel):
    """Base of every ChronoMoE record: frozen, strict about unknown fields.

    Equality compares array fields element-wise (pydantic's default would
    raise on numpy arrays).

    Seed-style access: the seed's loaders returned plain dicts, so code
    written against it reads ``record["layer_id"]``, ``record.get("val_loss")``,
    ``"loss" in record`` and ``record.keys()``. These read a field as its JSON
    form: arrays and tuples as lists, enums as their string values; nested
    records stay records, which read the same way. ``to_dict()`` is the whole
    record as a plain JSON-ready dict. Attribute access (``record.layer_id``)
    is the typed form, for new code.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        for name in type(self).model_fields:
            mine, theirs = getattr(self, name), getattr(other, name)
            if isinstance(mine, np.ndarray) or isinstance(theirs, np.ndarray):
                if not np.array_equal(mine, theirs):
                    return False
            elif mine != theirs:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def __getitem__(self, key: str) -> Any:
        """The field ``key`` in its JSON form (see the class docstring); ``KeyError`` for a name that is no field."""
        if not isinstance(key, str) or key not in type(self).model_fields:
            raise KeyError(key)
        return _json_form(getattr(self, key))

    def get(self, key: str, default: Any = None) -> Any:
        """``self[key]``, or ``default`` when ``key`` is not a field (``dict.get``)."""
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in type(self).model_fields

    def keys(self) -> list[str]:
        """The field names, in declaration order (the keys of :meth:`to_dict`)."""
        return list(type(self).model_fields)

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain JSON-ready dict (the seed's serialisation method)."""
        return self.model_dump(mode="json")

    @classmethod
    def trusted(cls, **values: Any) -> Self:
        """Build from values the library computed and checked itself, skipping validation.

        Every field must be given. About three times cheaper than ``model_construct``
        (1.6 against 5.1 us per event); used where the library builds records in bulk
        (snapshots, readers, event batches).
        """
        return cls.trusted_from_dict(values)

    @classmethod
    def trusted_from_dict(cls, values: dict[str, Any]) -> Self:
        """:meth:`trusted` from a dict of every field, which the record keeps (the caller must not change it
        afterwards): for records built in bulk from a template dict, without unpacking keywords (1 against 4 us
        per 19-field decision)."""
        record = _new_object(cls)
        _set_dict(record, values)
        every_field = _EVERY_FIELD.get(cls)
        if every_field is None:
            every_field = _EVERY_FIELD[cls] = set(cls.model_fields)
        _set_fields_set(record, every_field)
        _set_extra(record, None)
        _set_private(record, None)
        return record


# BaseModel's slots, set through their descriptors rather than object.__setattr__, which looks each name up
# first: 1.6 instead of 2.0 us per record, and Record.trusted runs once per event read or batched.
_new_object = object.__new__
_set_dict = vars(BaseModel)["__dict__"].__set__
_set_fields_set = vars(BaseModel)["__pydantic_fields_set__"].__set__
_set_extra = vars(BaseModel)["__pydantic_extra__"].__set__
_set_private = vars(BaseModel)["__pydantic_private__"].__set__
_EVERY_FIELD: dict[type[BaseModel], set[str]] = {}
"""Each record class's field names: the fields set of every record built by ``trusted``, one set shared by them
all (0.6 us a record less than a set of its own). Safe because records are frozen: pydantic adds to a fields set
only on assignment, and ``model_copy`` copies it first."""


class RoutingEvent(Record):
    """Actual dispatch of one MoE layer at one step.

    Fields:
        timestamp: unix time in seconds when the event was recorded.
        run_id: run identifier.
        step: training step (>= 0).
        mode: ``"TRAIN"`` or ``"INFER"`` (``model.eval()`` forwards).
        layer_id: MoE layer index (>= 0).
        n_experts: experts in the layer (>= 1).
        top_k: experts each token is routed to, in ``1..n_experts``.
        expert_token_counts: ``[n_experts]`` tokens each expert processed.
        active_experts: indices whose count is > 0 (derived when omitted;
            rejected when it disagrees with the counts).
        token_count: ``sum(expert_token_counts)`` (derived; rejected when a
            given value disagrees).
        router_prob_sums: optional ``[n_experts]`` sum of router
            probabilities per expert over the step's tokens.
        loss, aux_loss: optional finite losses at this step.
    """

    timestamp: float = Field(default_factory=time.time)
    run_id: str = Field(min_length=1)
    step: Integer = Field(ge=0)
    mode: Mode = "TRAIN"
    layer_id: Integer = Field(ge=0)
    n_experts: Integer = Field(ge=1)
    top_k: Integer = Field(ge=1)
    expert_token_counts: CountsArray
    active_experts: tuple[int, ...] | None = None
    token_count: int | None = None
    router_prob_sums: FloatArray | None = None
    loss: float | None = None
    aux_loss: float | None = None

    @field_validator("loss", "aux_loss", "timestamp")
    @classmethod
    def _finite(cls, value: float | None, info: Any) -> float | None:
        return finite_or_none(info.field_name, value)

    @model_validator(mode="after")
    def _derive_and_check(self) -> RoutingEvent:
        counts = self.expert_token_counts
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k={self.top_k} must be in 1..n_experts={self.n_experts}")
        if counts.shape[0] != self.n_experts:
            raise ValueError(f"expert_token_counts has {counts.shape[0]} entries, n_experts={self.n_experts}")
        if self.router_prob_sums is not None and self.router_prob_sums.shape[0] != self.n_experts:
            raise ValueError(
                f"router_prob_sums has {self.router_prob_sums.shape[0]} entries, n_experts={self.n_experts}"
            )
        active = tuple(np.flatnonzero(counts).tolist())
        if self.active_experts is not None and tuple(self.active_experts) != active:
            raise ValueError(
                f"active_experts={list(self.active_experts)} disagrees with the counts, "
                f"whose non-zero experts are {list(active)}"
            )
        total = int(counts.sum())
        if self.token_count is not None and self.token_count != total:
            raise ValueError(f"token_count={self.token_count} disagrees with sum(expert_token_counts)={total}")
        # Frozen model: derived fields are filled in once, here.
        self.__dict__["active_experts"] = active
        self.__dict__["token_count"] = total
        return self

    @classmethod
    def from_router_output(
        cls,
        run_id: str,
        step: int,
        mode: Mode,
        layer_id: int,
        used_capacity: Any,
        n_experts: int,
        top_k: int,
        **fields: Any,
    ) -> RoutingEvent:
        """Build an event from a router's per-expert dispatch counts.

        ``used_capacity`` is ``[n_experts]`` tokens each expert processed
        after capacity drops (a torch tensor on any device, a numpy array or a
        list). Copying a CUDA tensor here synchronises with the device: in a
        training loop prefer :meth:`chronomoe.Monitor.record`, which does not.
        Extra keyword fields (``loss``, ``router_prob_sums``, ...) pass through.
        """
        return cls(
            run_id=run_id,
            step=step,
            mode=mode,
            layer_id=layer_id,
            n_experts=n_experts,
            top_k=top_k,
            expert_token_counts=used_capacity,
            **fields,
        )

    @classmethod
    def from_lists(
        cls,
        *,
        run_id: Any,
        step: Any,
        layer_id: Any,
        n_experts: Any,
        top_k: Any,
        expert_token_counts: Any,
        mode: Any = "TRAIN",
        timestamp: Any = None,
        router_prob_sums: Any = None,
        loss: Any = None,
        aux_loss: Any = None,
    ) -> list[RoutingEvent]:
        """Build many events at once, validated as ``RoutingEvent(...)`` validates each, about four times faster.

        ``expert_token_counts`` is ``[events, n_experts]``: a list of count
        rows (lists of ints, or 1-D integer arrays) or a 2-D integer array; it
        fixes the number of events. Every other argument is one value for all
        events, or a list, tuple or 1-D array of one value per event
        (``layer_id=[0, 1, 2]``); ``router_prob_sums``, when given, is per
        event (rows or ``None``). ``timestamp`` defaults to the time now, the
        same for the whole batch.

        The events equal those built one at a time (``==``, ``model_dump``),
        and a batch is rejected when one of its events would be, with that
        event's error (the first in batch order: ``pydantic.ValidationError``
        naming the field and value, with a note giving the event's index); a
        per-event argument of another length than the counts raises
        :class:`~chronomoe.errors.InvalidInputError`. One difference: counts
        given as integer objects that numpy does not know as integers (a class
        with ``__index__``, ``gmpy2.mpz``) are read as the integers they stand
        for, where ``RoutingEvent(...)`` rejects their object array. The
        events' counts are read-only views of one matrix. Fast for plain
        Python values (see :mod:`chronomoe.event_batch`); an event with other
        values costs what ``RoutingEvent(...)`` costs.
        """
        columns = {
            "timestamp": timestamp,
            "run_id": run_id,
            "step": step,
            "mode": mode,
            "layer_id": layer_id,
            "n_experts": n_experts,
            "top_k": top_k,
            "loss": loss,
            "aux_loss": aux_loss,
        }
        events: list[RoutingEvent] = build_events(cls, columns, expert_token_counts, router_prob_sums)
        return events


# The seed's home of ExpertState, beside RoutingEvent.
from .expert_state import ExpertState as ExpertState  # noqa: E402
