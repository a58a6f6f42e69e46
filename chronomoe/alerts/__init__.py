"""Alert rules and the per-layer alert state machine."""

from .machine import AlertBank, AlertMachine, AlertState, AlertTransition, StateChange
from .rules import AlertRules

__all__ = ["AlertBank", "AlertMachine", "AlertRules", "AlertState", "AlertTransition", "StateChange"]
