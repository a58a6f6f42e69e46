"""The report's colours, shared by the PNG figures, the HTML page and ``chronomoe watch`` (CSS hex strings).

Every palette is safe for the common colour-vision deficiencies:

* alert states are ordered by lightness as well as hue (pale blue, orange,
  dark wine: Paul Tol's and Okabe and Ito's colours), so they read in
  greyscale too; no data is a neutral grey;
* metric heatmaps use viridis (perceptually uniform, designed for colour-blind
  readers), darkest for healthy, brightest for the worst values;
* expert loads use a blue-white-red diverging map (ColorBrewer RdBu, marked
  colour-blind safe) around the balanced load, dead experts in near-black;
* runs are told apart by the Okabe-Ito qualitative colours.

Text drawn on a coloured cell uses the colour of :data:`STATE_TEXT_COLORS`,
chosen for a contrast of at least 4.5:1 (WCAG 2 AA, :func:`contrast_ratio`).
"""

from __future__ import annotations

from ..alerts import AlertState

STATE_COLORS = {
    AlertState.NOMINAL: "#cfe2f3",
    AlertState.PRE_COLLAPSE: "#e69f00",
    AlertState.COLLAPSE_CONFIRMED: "#882255",
}
STATE_TEXT_COLORS = {
    AlertState.NOMINAL: "#1a1a1a",
    AlertState.PRE_COLLAPSE: "#1a1a1a",
    AlertState.COLLAPSE_CONFIRMED: "#ffffff",
}
TRANSITION_COLORS = {**STATE_COLORS, AlertState.NOMINAL: "#3d85c6"}
"""Marks of transitions, by the state entered: the states' colours, a stronger blue for back to nominal (the
pale nominal fill would vanish as a thin mark on white)."""
NO_DATA_COLOR = "#a6a6a6"
"""A snapshot window in which a layer received no token, or a padding cell of a heatmap."""
NO_DATA_TEXT_COLOR = "#1a1a1a"

VIRIDIS_STOPS = (
    "#440154",
    "#482878",
    "#3e4989",
    "#31688e",
    "#26828e",
    "#1f9e89",
    "#35b779",
    "#6ece58",
    "#b5de2b",
    "#fde725",
)
"""matplotlib's viridis at 10 evenly spaced points (0 to 1); interpolated linearly between them."""

LOAD_STOPS = ("#2166ac", "#67a9cf", "#d1e5f0", "#f7f7f7", "#fddbc7", "#ef8a62", "#b2182b")
"""ColorBrewer RdBu (reversed), 7 classes: under-used experts blue, balanced white, over-used red."""
DEAD_EXPERT_COLOR = "#262626"

RUN_COLORS = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#56b4e9", "#e69f00", "#000000", "#f0e442")
"""Okabe-Ito, the order of the runs of a report (the first is the baseline of comparisons)."""

TEXT_COLOR = "#1a1a1a"
MUTED_TEXT_COLOR = "#595959"
"""Secondary text (axes, captions): 7:1 on white."""


def _channel(value: int) -> float:
    """One sRGB channel (0..255) linearised, as WCAG 2 defines relative luminance."""
    scaled = value / 255
    return scaled / 12.92 if scaled <= 0.03928 else ((scaled + 0.055) / 1.055) ** 2.4


def relative_luminance(color: str) -> float:
    """WCAG 2 relative luminance of a ``#rrggbb`` colour, 0 (black) to 1 (white)."""
    if len(color) != 7 or color[0] != "#":
        raise ValueError(f"color must be #rrggbb, got {color!r}")
    red, green, blue = (int(color[index : index + 2], 16) for index in (1, 3, 5))
    return 0.2126 * _channel(red) + 0.7152 * _channel(green) + 0.0722 * _channel(blue)


def contrast_ratio(foreground: str, background: str) -> float:
    """WCAG 2 contrast ratio of two ``#rrggbb`` colours, 1 to 21 (AA asks 4.5 for body text)."""
    lighter, darker = sorted((relative_luminance(foreground), relative_luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


ACTION_COLORS = {"adjust": "#0072b2", "relax": "#009e73", "abstain": "#d55e00"}
"""Controller actions marked on the step axis (Okabe-Ito); other actions are drawn in :data:`MUTED_TEXT_COLOR`."""
