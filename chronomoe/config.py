"""MonitorConfig: every option of a :class:`~chronomoe.Monitor`, typed, validated and documented in one place.

``Monitor(run_id, config=MonitorConfig(...), **overrides)``: the overrides
replace fields of ``config`` (or of the defaults), by name; nested groups
take a dict (``distributed={"count_tokens": False}``) or their own config
object. An unknown option is an error naming it and the closest valid name.
The whole configuration is validated before the Monitor creates anything on
disk, and its resolved form (:meth:`MonitorConfig.resolved`) is written into
the run manifest under ``monitor_config`` (``chronomoe config RUN`` prints
it).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .alerts import AlertRules
from .errors import InvalidInputError
from .io.run_folder import OnExistingRun
from .metrics import UNDERUSE_RATIO


class DistributedConfig(BaseModel):
    """Options of a run under ``torch.distributed`` (see ``docs/distributed.md``); all ignored in one process.

    The Monitor must be created after ``torch.distributed.init_process_group``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    process_group: Any = Field(
        None, description="group whose ranks' counts are summed at each snapshot (None: the world)"
    )
    expert_ids: list[int] | dict[int, list[int]] | None = Field(
        None,
        description="expert parallelism: global ids of this rank's experts when it records local ids "
        "(one list for every layer, or {layer_id: list})",
    )
    count_tokens: bool = Field(
        True, description="False on a rank whose routing replicates another's (tensor-parallel peers)"
    )
    write_on_all_ranks: bool = Field(
        False, description="every rank writes to output_dir/rank<r>/ (default: rank 0 of the group writes)"
    )
    collective_timeout: float | None = Field(
        None, gt=0, description="seconds a collective waits for the other ranks (None: the group's timeout)"
    )

    @property
    def requested(self) -> bool:
        """Whether any option asks for torch.distributed (which must then be initialised)."""
        return self.process_group is not None or self.expert_ids is not None or not self.count_tokens


class MonitorConfig(BaseModel):
    """How a Monitor records, alerts and writes. Every field has a default; see each field's description."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    output_dir: Path | None = Field(None, description="parent folder of run folders; None writes nothing")
    model_name: str = Field("", description="recorded in snapshots and the manifest")
    rules: AlertRules = Field(default_factory=AlertRules.default, description="alert thresholds and persistences")
    n_experts: list[int] | None = Field(
        None, description="experts of each MoE layer, for record() without attach() (attach finds them itself)"
    )
    top_k: int | list[int] = Field(1, description="experts per token (one for all layers, or per layer)")
    write_events: bool = Field(True, description="write routing_events.jsonl (one event per step and layer)")
    storage: Literal["jsonl", "parquet"] = Field(
        "jsonl",
        description="how the run folder is written: JSONL files, or Parquet tables (needs chronomoe[parquet])",
    )
    fsync: bool = Field(False, description="fsync the run's files after every snapshot (durable on power loss)")
    bytes_per_sync: int | None = Field(
        None,
        ge=0,
        strict=True,
        description="fdatasync a file on a background thread every this many bytes written to it, so that an fsync "
        "waits only for the tail (0: never; None: 8 MiB with fsync, else never)",
    )
    io_errors: Literal["log", "raise"] = Field(
        "log", description="log: an I/O error is logged once and the run goes on; raise: it propagates"
    )
    on_existing_run: OnExistingRun = Field(
        "refuse",
        description="when output_dir/run_id already holds a recorded run: refuse (raise, naming the folder), "
        "resume (append; new steps must come after the recorded ones) or new (record into run_id-2, -3, ...)",
    )
    capacity: int = Field(128, ge=1, description="steps the recorder stages on the device between drains")
    underuse_ratio: float = Field(
        UNDERUSE_RATIO,
        gt=0,
        le=1,
        description="a live expert below this fraction of the uniform share 1/n_experts counts as under-used",
    )
    strict_handlers: bool = Field(False, description="let bus handler exceptions propagate (for tests)")
    training_config: dict[str, Any] = Field(
        default_factory=dict, description="your training configuration, stored verbatim in the manifest"
    )
    distributed: DistributedConfig = Field(default_factory=DistributedConfig, description="torch.distributed options")

    @field_validator("n_experts")
    @classmethod
    def _positive_expert_counts(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or min(value) < 1):
            raise ValueError("must list at least one layer, each with >= 1 expert")
        return value

    @field_validator("top_k")
    @classmethod
    def _positive_top_k(cls, value: int | list[int]) -> int | list[int]:
        if (value if isinstance(value, int) else min(value, default=0)) < 1:
            raise ValueError("must be >= 1 (per layer when a list)")
        return value

    @classmethod
    def build(cls, config: MonitorConfig | None = None, **overrides: Any) -> MonitorConfig:
        """``config`` (default: the defaults) with ``overrides`` applied, validated.

        Raises :class:`~chronomoe.errors.InvalidInputError` naming an unknown
        option (with the closest valid name) or the first invalid field and value.
        """
        if config is not None and not isinstance(config, MonitorConfig):
            raise InvalidInputError(
                "config",
                type(config).__name__,
                "must be a chronomoe.MonitorConfig (your own training configuration goes in training_config=)",
            )
        unknown = sorted(set(overrides) - set(cls.model_fields))
        if unknown:
            raise InvalidInputError(unknown[0], overrides[unknown[0]], _closest_option(unknown[0]))
        base = {} if config is None else {name: getattr(config, name) for name in config.model_fields_set}
        if isinstance(overrides.get("distributed"), dict) and "distributed" in base:
            overrides["distributed"] = base["distributed"].model_copy(update=overrides["distributed"])
        try:
            return cls.model_validate({**base, **overrides})
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "config"
            raise InvalidInputError(field, first.get("input"), first["msg"]) from None

    def resolved(self) -> dict[str, Any]:
        """The whole configuration as JSON-ready data, defaults included (what the manifest stores).

        A process group is shown by its type name.
        """
        data = self.model_dump(mode="json", exclude={"distributed"})
        distributed = self.distributed.model_dump(mode="json", exclude={"process_group"})
        group = self.distributed.process_group
        distributed["process_group"] = None if group is None else type(group).__name__
        return {**data, "distributed": distributed}


def _closest_option(name: str) -> str:
    """The reason for refusing an unknown option: the valid names, the closest one first."""
    nested = {field: f"distributed={{{field!r}: ...}}" for field in DistributedConfig.model_fields}
    if name in nested:
        return f"is a distributed option: pass {nested[name]}"
    close = difflib.get_close_matches(name, [*MonitorConfig.model_fields, *nested], n=1)
    hint = f"did you mean {nested.get(close[0], close[0])}? " if close else ""
    return f"is not an option of Monitor; {hint}Options: {', '.join(MonitorConfig.model_fields)}"
