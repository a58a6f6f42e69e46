"""The PressureController's policy as a validated, hashable configuration (:class:`PressureConfig`); what each
field does is in :mod:`chronomoe.controller.pressure`."""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PressureConfig(BaseModel):
    """The PressureController's policy; every field has a documented default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Literal["alert", "continuous"] = Field(
        "alert", description="alert: act on layers whose alert state warrants it; continuous: on every layer"
    )
    rate: float = Field(0.2, gt=0, description="bias change per decision at pressure 1 and full step scale")
    max_step: float = Field(0.2, gt=0, description="largest change of one expert's bias per decision")
    max_bias: float = Field(4.0, gt=0, description="largest absolute bias of any expert")
    tolerance: float = Field(0.25, ge=0, description="MaxVio at or below which a layer is balanced enough")
    hold_for: int | None = Field(
        None,
        ge=0,
        description="snapshots it keeps acting after a layer leaves its alert state (None: until within tolerance)",
    )
    warmup: int = Field(0, ge=0, description="TRAIN snapshots observed before the first action")
    layers: list[int] | None = Field(None, description="layer ids it may act on (None: all)")
    harm_margin: float = Field(
        0.5,
        ge=0,
        description="rise of MaxVio after an adjustment that counts as harm (above window-to-window noise)",
    )
    abstain_after: int = Field(3, ge=1, description="harmful adjustments in a row after which it abstains")
    relax_rate: float = Field(
        0.0, ge=0, lt=1, description="fraction of the bias removed per relaxing snapshot (0: off)"
    )
    relax_after: int = Field(5, ge=1, description="balanced snapshots before relaxation starts")
    relax_margin: float = Field(0.5, gt=0, le=1, description="relax only while MaxVio < relax_margin * tolerance")
    dry_run: bool = Field(False, description="decide and record as if applying; never touch the model")

    def digest(self) -> str:
        """A short hash of the configuration: the policy a decision came from."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]
