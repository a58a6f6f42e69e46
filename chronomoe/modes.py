"""The two modes of a forward: records and alert machines are kept apart per mode."""

from __future__ import annotations

from typing import Literal

Mode = Literal["TRAIN", "INFER"]
"""``TRAIN`` for forwards in training mode, ``INFER`` for ``model.eval()`` forwards."""
MODES: tuple[Mode, ...] = ("TRAIN", "INFER")
"""Every mode, in the order buffers index them."""
