"""Sync-free routing capture (torch): the recorder, the capture session and model attachment.

* :class:`RoutingRecorder` accumulates tokens per expert on the model's device;
* :class:`CaptureSession` turns a run's ``record()`` calls into snapshot windows and events;
* :func:`attach` finds a model's MoE layers and hooks them into a ``record`` function
  (``monitor.attach(model)`` calls it).
"""

from .adapters import Attachment, attach
from .layers import AttachedLayer, LayerSpec
from .recorder import RoutingRecorder, StagedSteps
from .session import CaptureSession, LayerLayout, Window

__all__ = [
    "AttachedLayer",
    "Attachment",
    "CaptureSession",
    "LayerLayout",
    "LayerSpec",
    "RoutingRecorder",
    "StagedSteps",
    "Window",
    "attach",
]
