"""RouterBiasActuator: a per-layer, per-expert bias that changes which experts are selected, never how they are gated.

The reference actuator (auxiliary-loss-free balancing, Wang et al. 2024): a
bias ``b`` is added to a router's scores for top-k *selection only*; the
chosen experts' gating weights are still the unbiased scores. On each router
site (:mod:`chronomoe.capture.routers`):

* ``family-bias`` routers (transformers' ``e_score_correction_bias``): the
  family's own fp32 buffer holds ``baseline + offset``, where ``baseline`` is
  what the checkpoint loaded and ``offset`` is what controllers applied;
* ``selection-hook`` routers: a fp32 buffer ``chronomoe_selection_bias`` is
  registered on the router (so it is part of the model's ``state_dict``) and
  a forward hook replaces the router's selection: the top k of
  ``logits + bias``, gated by ``softmax(logits)`` at the chosen experts,
  normalised over them exactly when the router normalises its own (found
  once, at install, by calling the router on a random input). The bias is in
  logits, not probabilities: experts a collapsed router gives almost no
  probability all look alike in probability space, so a bias there would
  send every token to the same next expert; in logits they keep their
  differences, and tokens move over gradually.

:meth:`RouterBiasActuator.read` and :meth:`~RouterBiasActuator.apply` work on
the offsets, ``[L, width]`` float64 on the host; ``apply`` copies the new
values to the device asynchronously (a pinned host buffer, ``non_blocking``),
so it adds no host synchronisation, and the forward hook reads only device
tensors, so the training step has none either. :meth:`~RouterBiasActuator.remove`
takes the hooks and installed buffers off and restores family biases to
their baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from chronomoe.capture.routers import RouterSite
from chronomoe.errors import InvalidInputError

from .actuators import check_layout, check_values

INSTALLED_BIAS = "chronomoe_selection_bias"
"""Name of the buffer the actuator registers on routers that have no bias of their own."""


class RouterBiasActuator:
    """The selection-only router bias of every router site (see the module docstring).

    Args:
        sites: the routers, in layer order (``find_routers`` of the attached layers).
    """

    name = "router_bias"
    changes_model = True

    def __init__(self, sites: Sequence[RouterSite]) -> None:
        if not sites:
            raise InvalidInputError("sites", [], "no router to act on: the attached layers have no router found")
        self.sites = tuple(sites)
        self.layer_ids = tuple(site.layer_id for site in self.sites)
        self.n_experts = tuple(site.n_experts for site in self.sites)
        self._offsets: np.ndarray = np.zeros((len(self.sites), max(self.n_experts)), dtype=np.float64)
        self._biases: list[torch.Tensor] = []
        self._baselines: list[torch.Tensor] = []
        self._handles: list[Any] = []
        for site in self.sites:
            if site.convention == "family-bias":
                assert site.bias_attribute is not None
                bias = getattr(site.module, site.bias_attribute)
                self._baselines.append(bias.detach().clone())
            else:
                bias = self._install(site)
                self._baselines.append(torch.zeros_like(bias))
            self._biases.append(bias)

    def _install(self, site: RouterSite) -> torch.Tensor:
        router = site.module
        if hasattr(router, INSTALLED_BIAS):
            raise InvalidInputError(
                site.path, INSTALLED_BIAS, "already holds a selection bias: remove() the other actuator first"
            )
        normalises, scale = _probe_gating(router, site)
        device = next(router.parameters()).device
        router.register_buffer(INSTALLED_BIAS, torch.zeros(site.n_experts, dtype=torch.float32, device=device))
        self._handles.append(router.register_forward_hook(_selection_hook(normalises, scale)))
        bias: torch.Tensor = getattr(router, INSTALLED_BIAS)
        return bias

    def read(self) -> np.ndarray:
        """The offsets controllers applied, ``[L, width]`` float64 (a copy)."""
        offsets: np.ndarray = self._offsets.copy()
        return offsets

    def apply(self, values: np.ndarray, layers: np.ndarray) -> None:
        """Set the offsets of the layers in the boolean mask ``layers``; copied to the device without a sync."""
        check_values(self, values, layers)
        for position in np.flatnonzero(layers).tolist():
            bias = self._biases[position]
            offsets = torch.from_numpy(values[position, : self.n_experts[position]]).to(torch.float32)
            if bias.is_cuda:  # a pinned source lets the copy run asynchronously, in stream order
                offsets = offsets.pin_memory()
            with torch.no_grad():
                bias.copy_(offsets.to(bias.device, non_blocking=True)).add_(self._baselines[position])
        self._offsets[layers] = values[layers]

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layer_ids": list(self.layer_ids),
            "n_experts": list(self.n_experts),
            "values": self._offsets.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_layout(self, state)
        values = np.asarray(state["values"], dtype=np.float64).reshape(self._offsets.shape)
        self.apply(values, np.ones(len(self.sites), dtype=bool))

    def remove(self) -> None:
        """Take the hooks and installed buffers off; family biases go back to their baseline. Idempotent."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for site, bias, baseline in zip(self.sites, self._biases, self._baselines, strict=True):
            if site.convention == "family-bias":
                with torch.no_grad():
                    bias.copy_(baseline)
            elif hasattr(site.module, INSTALLED_BIAS):
                delattr(site.module, INSTALLED_BIAS)
        self._offsets[:] = 0.0


def _probe_gating(router: nn.Module, site: RouterSite) -> tuple[bool, float]:
    """Whether the router normalises its top-k weights over the chosen experts, and any constant factor on them.

    Calls the router once on random hidden states from a generator of its own (the global RNG is not
    touched) and compares its weights with the softmax of its logits at the chosen experts. This reads
    values on the host: it runs once, at install, never in a training step.
    """
    weight = getattr(router, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != site.n_experts:
        raise InvalidInputError(
            f"{site.path}.weight",
            getattr(weight, "shape", None),
            f"a selection-hook router needs a [n_experts={site.n_experts}, hidden] weight",
        )
    generator = torch.Generator(device=weight.device).manual_seed(0)
    hidden = torch.randn(16, weight.shape[1], generator=generator, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        output = router(hidden)
    if not (isinstance(output, (tuple, list)) and len(output) == 3):
        raise InvalidInputError(
            f"{site.path}.forward()",
            type(output).__name__,
            "a selection-hook router must return (logits, weights, indices)",
        )
    logits, weights, indices = output
    probs = torch.softmax(logits.float(), dim=-1).gather(-1, indices.long())
    chosen_sum = probs.sum(-1)
    weight_sum = weights.float().sum(-1)
    normalises = bool(torch.allclose(weight_sum, torch.ones_like(weight_sum), atol=1e-3)) and not bool(
        torch.allclose(chosen_sum, torch.ones_like(chosen_sum), atol=1e-3)
    )
    scale = 1.0 if normalises else float((weight_sum / chosen_sum).mean())
    return normalises, scale


def _selection_hook(normalises: bool, scale: float) -> Any:
    """The forward hook that reselects experts with the bias and gates them without it (device ops only; k is
    the router's own, read from its output's shape)."""

    def hook(router: nn.Module, args: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        logits, weights, indices = output
        scores = logits.float()
        probs = torch.softmax(scores, dim=-1)
        chosen = torch.topk(scores + getattr(router, INSTALLED_BIAS), indices.shape[-1], dim=-1).indices
        gates = probs.gather(-1, chosen)
        if normalises:
            gates = gates / gates.sum(dim=-1, keepdim=True)
        if scale != 1.0:
            gates = gates * scale
        return logits, gates.to(weights.dtype), chosen.to(indices.dtype)

    return hook
