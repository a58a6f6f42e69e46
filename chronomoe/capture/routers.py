"""The routers of attached MoE layers: where a lens reads the router's input and a bias actuator acts.

For each layer :func:`~chronomoe.capture.attach` found through its experts
call, the router is the sibling module the MoE block calls first (its
``gate`` or ``router`` attribute): in transformers 5.x a ``*TopKRouter``
whose forward takes the hidden states and returns ``(router_logits,
top_k_weights, top_k_index)``. Two bias conventions:

* ``family-bias``: the router already holds a selection-only bias buffer
  (:data:`FAMILY_BIAS_ATTRIBUTES`; transformers' ``e_score_correction_bias``
  of DeepSeek-V3, GLM-4 MoE and 30-odd other families), added to the scores
  for top-k selection only. An actuator writes it in place.
* ``selection-hook``: a softmax top-k router without such a bias (Mixtral,
  Qwen3-MoE, OLMoE, the toy model). An actuator installs one, with a forward
  hook that selects the top k of ``softmax(logits) + bias`` and gates them
  with the unbiased probabilities.

Layers found otherwise (nanoMoE routers, extractors) have no router site.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from .layers import AttachedLayer

FAMILY_BIAS_ATTRIBUTES = ("e_score_correction_bias",)
"""Router attributes that hold a selection-only bias per expert."""

ROUTER_ATTRIBUTES = ("gate", "router")
"""Attributes of an MoE block that hold its router, tried in this order."""


@dataclass(frozen=True)
class RouterSite:
    """The router of one attached layer.

    Attributes:
        layer_id: the layer's id in events and snapshots.
        path: the router's name in ``model.named_modules()``.
        module: the router module.
        n_experts: routed experts.
        top_k: experts per token.
        convention: ``"family-bias"`` (with ``bias_attribute``) or ``"selection-hook"``.
        bias_attribute: the family's bias buffer, for ``"family-bias"``.
    """

    layer_id: int
    path: str
    module: nn.Module
    n_experts: int
    top_k: int
    convention: str
    bias_attribute: str | None = None


def find_routers(model: nn.Module, layers: Sequence[AttachedLayer]) -> list[RouterSite]:
    """The router sites of ``layers`` (attached through an experts call), in layer order; layers whose
    router is not found are left out."""
    named: Mapping[str, nn.Module] = dict(model.named_modules())
    sites = []
    for layer in layers:
        if not layer.convention.startswith("experts-call"):
            continue
        block_path = layer.path.rpartition(".")[0]
        block = named.get(block_path)
        router_name = next(
            (
                name
                for name in ROUTER_ATTRIBUTES
                if isinstance(getattr(block, name, None), nn.Module) and getattr(block, name) is not named[layer.path]
            ),
            None,
        )
        if block is None or router_name is None:
            continue
        router = getattr(block, router_name)
        bias_attribute = next((name for name in FAMILY_BIAS_ATTRIBUTES if hasattr(router, name)), None)
        sites.append(
            RouterSite(
                layer_id=layer.layer_id,
                path=f"{block_path}.{router_name}" if block_path else router_name,
                module=router,
                n_experts=layer.n_experts,
                top_k=layer.top_k,
                convention="family-bias" if bias_attribute else "selection-hook",
                bias_attribute=bias_attribute,
            )
        )
    return sites
