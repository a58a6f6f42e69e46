"""The colours of the alert states, shared by the report's figures and its HTML page (CSS hex strings)."""

from __future__ import annotations

from ..alerts import AlertState

STATE_COLORS = {
    AlertState.NOMINAL: "#d9ead3",
    AlertState.PRE_COLLAPSE: "#f6b26b",
    AlertState.COLLAPSE_CONFIRMED: "#cc4125",
}
NO_DATA_COLOR = "#e0e0e0"
"""A snapshot window in which a layer received no token, or a padding cell of a heatmap."""
