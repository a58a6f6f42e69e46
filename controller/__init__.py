"""Controllers: bus participants that turn snapshots and transitions into decisions.

* :mod:`.protocol`: the :class:`Controller` protocol (``on_snapshot``, ``on_transition``);
* :mod:`.decisions`: :class:`ControlDecision`, published on the ``"decision"`` topic;
* :mod:`.noop`: :class:`NoOpController`, the default, which decides "no action".

A controller joins a bus with ``bus.connect(controller)``.
"""

from .decisions import ControlDecision
from .noop import NoOpController
from .protocol import Controller

__all__ = ["ControlDecision", "Controller", "NoOpController"]
