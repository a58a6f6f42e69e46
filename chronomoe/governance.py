"""RouterGovernance: what the governance layer installs on an attached model's routers, and takes off again.

On the routers of the attached layers (:func:`~chronomoe.capture.routers.find_routers`):

* the lens, as forward pre-hooks on the routers' inputs (when the lens is a
  :class:`~chronomoe.lens.ChronoLens`): :meth:`RouterGovernance.set_lens`;
* a :class:`~chronomoe.controller.router_bias.RouterBiasActuator`, bound to the
  controller, when the controller acts on the model (an
  :class:`~chronomoe.controller.ActuatedController` whose ``wants_actuator``
  is true; a dry-run controller's is false, and then nothing of the model is
  touched): :meth:`RouterGovernance.set_controller`.

The two are independent: replacing the lens keeps the actuator and its bias,
and the other way round. The Monitor calls these when the model, the lens or
the controller changes, and :meth:`RouterGovernance.remove` on ``detach``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.hooks import RemovableHandle

from chronomoe.controller import ActuatedController
from chronomoe.controller.router_bias import RouterBiasActuator
from chronomoe.lens import ChronoLens
from chronomoe.lens.router_hooks import apply_lens_to_routers

from .capture.routers import RouterSite


class RouterGovernance:
    """The lens hooks and the bias actuator on one model's routers.

    Args:
        sites: the routers of the attached layers (may be empty: then nothing is installed).
    """

    def __init__(self, sites: Sequence[RouterSite]) -> None:
        self.sites = tuple(sites)
        self._lens_handles: list[RemovableHandle] = []
        self.actuator: RouterBiasActuator | None = None

    def set_lens(self, lens: object) -> None:
        """Hook ``lens`` onto the routers' inputs (only a :class:`~chronomoe.lens.ChronoLens`), replacing the last."""
        for handle in self._lens_handles:
            handle.remove()
        self._lens_handles = apply_lens_to_routers(lens, self.sites) if isinstance(lens, ChronoLens) else []

    def set_controller(self, controller: object) -> None:
        """Give ``controller`` a fresh bias actuator on the routers when it wants one; the last one is removed."""
        if self.actuator is not None:
            self.actuator.remove()
            self.actuator = None
        if isinstance(controller, ActuatedController) and controller.wants_actuator and self.sites:
            self.actuator = RouterBiasActuator(self.sites)
            controller.bind(self.actuator)

    def remove(self) -> None:
        """Take the lens hooks and the actuator off the model (idempotent)."""
        self.set_lens(None)
        self.set_controller(None)
