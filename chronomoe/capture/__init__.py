"""Sync-free routing capture (torch): the recorder and model attachment.

:class:`RoutingRecorder` accumulates tokens per expert on the model's device;
:func:`attach` finds a model's MoE layers and hooks them into a
:class:`~chronomoe.Monitor` (``monitor.attach(model)`` calls it).
"""

from .adapters import AttachedLayer, Attachment, LayerSpec, attach
from .recorder import RoutingRecorder, StagedSteps

__all__ = ["AttachedLayer", "Attachment", "LayerSpec", "RoutingRecorder", "StagedSteps", "attach"]
