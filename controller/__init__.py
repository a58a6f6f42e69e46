"""Controllers: bus participants that turn snapshots and transitions into decisions, and act through actuators.

* :mod:`.protocol`: the :class:`Controller` protocol (``on_snapshot``, ``on_transition``) and
  :class:`ActuatedController` (one that is bound an actuator);
* :mod:`.decisions`: :class:`ControlDecision`, the audit record published on ``"decision"``;
* :mod:`.actuators`: the :class:`Actuator` protocol and :class:`HostBiasActuator`;
* :mod:`.noop`: :class:`NoOpController`, the default, which decides "no action";
* :mod:`.pressure`: :class:`PressureController`, bounded, audited balancing through a router bias;
* :mod:`.router_bias` (torch, imported on use): :class:`~.router_bias.RouterBiasActuator`.

A controller joins a bus with ``bus.connect(controller)``; a Monitor does it
for ``Monitor(controller=...)`` and ``monitor.set_controller(...)``.
"""

from .actuators import Actuator, HostBiasActuator
from .decisions import ActuatorChange, ControlDecision
from .noop import NoOpController
from .pressure import PressureController
from .pressure_config import PressureConfig
from .protocol import ActuatedController, Controller

__all__ = [
    "ActuatedController",
    "Actuator",
    "ActuatorChange",
    "ControlDecision",
    "Controller",
    "HostBiasActuator",
    "NoOpController",
    "PressureConfig",
    "PressureController",
]
