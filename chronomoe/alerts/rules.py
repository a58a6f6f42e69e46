"""Alert rules: the thresholds and persistence counts of the collapse alerts.

Defaults are the seed's table (``specs/default_rules.json``):

==================  =============================================  ===============================
alert               condition on one snapshot                      persistence (default)
==================  =============================================  ===============================
PRE_COLLAPSE        ``Neff < neff_ratio * n_experts`` or           ``pre_persistence`` (3)
                    ``Top2 > pre_top2`` (layers of > 2 experts)
COLLAPSE_CONFIRMED  ``dead >= confirm_min_dead`` and               ``confirm_persistence`` (5)
                    ``Top2 > confirm_top2``
step down           the current alert's condition fails            ``resolve_persistence`` (1)
==================  =============================================  ===============================

Persistence counts consecutive snapshots that hold data; a snapshot whose
window dispatched no token for the layer neither advances nor resets them.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np
from pydantic import Field, ValidationError, ValidationInfo, field_validator

from ..errors import InvalidInputError
from ..events import Integer, Record


class AlertRules(Record):
    """Thresholds (dimensionless shares and ratios) and persistence (snapshots)."""

    neff_ratio: float = Field(0.6, description="PRE_COLLAPSE when Neff < neff_ratio * n_experts; in (0, 1]")
    pre_top2: float = Field(0.75, description="PRE_COLLAPSE when Top2 > pre_top2; in (0, 1]")
    pre_persistence: Integer = Field(3, ge=1, description="consecutive snapshots before PRE_COLLAPSE")
    confirm_top2: float = Field(0.85, description="COLLAPSE_CONFIRMED needs Top2 > confirm_top2; in (0, 1]")
    confirm_min_dead: Integer = Field(1, ge=1, description="COLLAPSE_CONFIRMED needs at least this many dead experts")
    confirm_persistence: Integer = Field(5, ge=1, description="consecutive snapshots before COLLAPSE_CONFIRMED")
    resolve_persistence: Integer = Field(1, ge=1, description="consecutive healthy snapshots before stepping down")

    @field_validator("neff_ratio", "pre_top2", "confirm_top2")
    @classmethod
    def _ratio(cls, value: float, info: ValidationInfo) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"{info.field_name}={value!r} must be in (0, 1]")
        return value

    @classmethod
    def default(cls) -> AlertRules:
        """The rules shipped in ``specs/default_rules.json`` (the seed's table), read once per process."""
        return _packaged_default_rules()

    @classmethod
    def from_file(cls, path: str | Path) -> AlertRules:
        """Load rules from a JSON file; missing keys take their defaults.

        Raises :class:`~chronomoe.errors.InvalidInputError` naming the file
        and the offending field.
        """
        path = Path(path)
        try:
            data = path.read_bytes()  # bytes: pydantic reports invalid UTF-8 as a ValidationError
        except OSError as error:
            raise InvalidInputError("rules_file", str(path), f"cannot be read: {error.strerror}") from None
        try:
            return cls.model_validate_json(data)
        except ValidationError as error:
            first = error.errors()[0]
            if not first["loc"]:  # the document itself (not JSON, not an object): name the file, not its bytes
                raise InvalidInputError("rules_file", str(path), first["msg"]) from None
            field = ".".join(str(part) for part in first["loc"])
            raise InvalidInputError(f"{path}:{field}", first.get("input"), first["msg"]) from None

    def pre_condition(self, n_effective: np.ndarray, n_experts: np.ndarray, top2_share: np.ndarray) -> np.ndarray:
        """Element-wise PRE_COLLAPSE condition for one snapshot (arrays over layers).

        The Top2 clause applies to layers of more than two experts only: with
        one or two experts Top2 is always 1, and a balanced 2-expert layer
        would otherwise warn forever (its Neff clause still applies).
        """
        return (n_effective < self.neff_ratio * n_experts) | ((top2_share > self.pre_top2) & (n_experts > 2))

    def collapse_condition(self, dead_count: np.ndarray, top2_share: np.ndarray) -> np.ndarray:
        """Element-wise COLLAPSE_CONFIRMED condition for one snapshot (arrays over layers)."""
        return (dead_count >= self.confirm_min_dead) & (top2_share > self.confirm_top2)


@functools.cache
def _packaged_default_rules() -> AlertRules:
    """``specs/default_rules.json``; cached because rules are immutable records and a Monitor, a replay or a
    seed-style ``from_counts`` call each ask for them."""
    text = resources.files("chronomoe.specs").joinpath("default_rules.json").read_text()
    return AlertRules.model_validate_json(text)
