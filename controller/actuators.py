"""Actuators: the one way a controller reaches the model.

An actuator holds a per-layer, per-expert quantity it can change (the
reference one: a router bias that changes which experts are *selected*, not
their gating weights). Its contract:

* :meth:`Actuator.read` gives the current values, ``[L, width]`` float64 on
  the host (padding columns, at or beyond a layer's ``n_experts``, are 0),
  layers in :attr:`Actuator.layer_ids` order;
* :meth:`Actuator.apply` sets new values for some layers; the actuator does
  not judge them (bounds, rates and centring are the controller's policy)
  but refuses values of the wrong shape or that are not finite, naming them;
* :meth:`Actuator.state_dict` / :meth:`Actuator.load_state_dict` carry the
  values across a checkpoint;
* :attr:`Actuator.changes_model` says whether applying changes a model (a
  decision's ``applied`` is true only then).

:class:`HostBiasActuator` keeps the values on the host only: what a
controller acts on when no model is attached, or in dry-run (recommend-only)
mode, so that its decisions are computed exactly as if applied but nothing
is touched. The torch actuator on routers is
:class:`chronomoe.controller.router_bias.RouterBiasActuator`.

Write your own by implementing the protocol (for instance a per-expert
learning-rate multiplier, or a capacity factor) and binding it to a
controller that knows what its values mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from chronomoe.errors import InvalidInputError


@runtime_checkable
class Actuator(Protocol):
    """What a controller acts through (see the module docstring)."""

    name: str
    layer_ids: tuple[int, ...]
    n_experts: tuple[int, ...]
    changes_model: bool

    def read(self) -> np.ndarray: ...

    def apply(self, values: np.ndarray, layers: np.ndarray) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class HostBiasActuator:
    """Per-layer, per-expert values held on the host: the actuator of dry runs and of runs without a model.

    Args:
        layer_ids: the layers, in the order of :meth:`read`'s rows.
        n_experts: each layer's expert count.
        name: how decisions name it.
    """

    changes_model = False

    def __init__(self, layer_ids: Sequence[int], n_experts: Sequence[int], name: str = "router_bias") -> None:
        self.name = name
        self.layer_ids = tuple(int(i) for i in layer_ids)
        self.n_experts = tuple(int(n) for n in n_experts)
        if len(self.layer_ids) != len(self.n_experts) or not self.n_experts or min(self.n_experts) < 1:
            raise InvalidInputError(
                "n_experts", list(self.n_experts), f"must give >= 1 expert for each of {self.layer_ids}"
            )
        self._values: np.ndarray = np.zeros((len(self.layer_ids), max(self.n_experts)), dtype=np.float64)

    def read(self) -> np.ndarray:
        """A copy of the values, ``[L, width]`` float64."""
        values: np.ndarray = self._values.copy()
        return values

    def apply(self, values: np.ndarray, layers: np.ndarray) -> None:
        """Set the rows of ``values`` selected by the boolean mask ``layers`` (``[L]``)."""
        check_values(self, values, layers)
        if layers.all():  # the usual case: no gathered copy of every row
            np.copyto(self._values, values)
        else:
            self._values[layers] = values[layers]

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layer_ids": list(self.layer_ids),
            "n_experts": list(self.n_experts),
            "values": self._values.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_layout(self, state)
        self._values = np.asarray(state["values"], dtype=np.float64).reshape(self._values.shape)


def check_values(actuator: Actuator, values: np.ndarray, layers: np.ndarray) -> None:
    """Refuse values an actuator cannot take: the wrong shape, not finite, or set in padding columns."""
    shape = (len(actuator.layer_ids), max(actuator.n_experts))
    if values.shape != shape:
        raise InvalidInputError("values", values.shape, f"must be {shape}: [layers, widest layer's experts]")
    if layers.shape != (shape[0],) or layers.dtype != np.bool_:
        raise InvalidInputError("layers", layers.shape, f"must be a boolean mask of {shape[0]} layers")
    selected = values if layers.all() else values[layers]  # no copy in the usual case of every layer
    if not np.isfinite(selected).all():
        raise InvalidInputError("values", selected.tolist(), "must be finite")
    if min(actuator.n_experts) < shape[1]:
        padding = np.arange(shape[1])[None, :] >= np.asarray(actuator.n_experts)[:, None]
        if np.any(values[padding & layers[:, None]]):
            raise InvalidInputError("values", "padding", "columns beyond a layer's n_experts must stay 0")


def check_layout(actuator: Actuator, state: dict[str, Any]) -> None:
    """Refuse a checkpoint of another actuator or of other layers."""
    if state.get("name") != actuator.name or list(state.get("layer_ids", ())) != list(actuator.layer_ids):
        raise InvalidInputError(
            "actuator state",
            {"name": state.get("name"), "layer_ids": state.get("layer_ids")},
            f"is not of this actuator ({actuator.name}, layers {list(actuator.layer_ids)})",
        )
