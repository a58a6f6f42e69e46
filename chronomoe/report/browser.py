"""Open a report page in headless Chromium and check what it drew: no error, every panel drawn, layer selection.

Chromium is driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: JSON messages on file descriptors 3 and 4), so
nothing but the browser itself is needed: no driver, no network, no Python
package. It is started headless, sandbox-less (CI runs as root), without GPU,
background networking, component updates or first-run dialogs, with an empty
profile folder that is removed afterwards.

:func:`check_report_page` loads a page and returns a :class:`PageCheck`:

* ``errors``: every uncaught exception, ``console.error`` and browser log
  entry of level error (a resource that failed to load, for one);
* ``panels``: for each element with a ``data-panel`` attribute, how much it
  drew (a canvas: the fraction of its pixels that are inked, neither blank
  nor white, and its number of colours; an SVG: its drawn marks);
  ``empty_panels`` lists those that drew nothing;
* ``layer_selection``: what went wrong when a layer was chosen in the select
  box and then by a click on a row of the first overview heatmap (``None``
  when the heading and the expert heatmap followed both times);
* a PNG screenshot of the page, when asked.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..errors import InvalidInputError

CHROMIUM_VARIABLE = "CHRONOMOE_CHROMIUM"
"""Environment variable naming the Chromium executable (default: the first of :data:`CHROMIUM_NAMES` on PATH)."""
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)
MIN_INKED = 0.01
"""Fraction of a canvas's pixels that must be inked for it to count as drawn."""
MIN_COLORS = 3
"""Distinct colours a drawn canvas holds at least (a blank one has one; axes and labels add a second)."""


def find_chromium() -> str | None:
    """The Chromium executable: :data:`CHROMIUM_VARIABLE` if set, else the first of :data:`CHROMIUM_NAMES` on PATH."""
    named = os.environ.get(CHROMIUM_VARIABLE)
    if named:
        return named
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


class BrowserError(RuntimeError):
    """Chromium could not be started, stopped answering, or answered a command with an error."""


class Browser:
    """One headless Chromium and one page in it, driven over the DevTools protocol on a pipe.

    Use as a context manager; :meth:`call` sends a command to the page and
    returns its result; events received meanwhile are kept in :attr:`events`.
    """

    def __init__(self, executable: str | None = None, timeout: float = 60.0, width: int = 1280, height: int = 900):
        found = executable or find_chromium()
        if found is None:
            raise BrowserError(f"no Chromium found: install it (apt-get install chromium) or set {CHROMIUM_VARIABLE}")
        self.executable, self.timeout, self.width, self.height = found, timeout, width, height
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        self._buffer = b""
        self._session: str | None = None

    def __enter__(self) -> Browser:
        self._profile = tempfile.mkdtemp(prefix="chronomoe-chromium-")
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        # The child's ends are moved above 9, so that putting them on 3 and 4 in the child overwrites neither.
        child_ends = [fcntl.fcntl(end, fcntl.F_DUPFD_CLOEXEC, 10) for end in (to_browser, from_browser)]
        os.close(to_browser)
        os.close(from_browser)
        command = [self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", "about:blank"]

        def wire_pipes() -> None:  # in the child: the protocol reads fd 3 and writes fd 4
            os.dup2(child_ends[0], 3)  # dup2's copies are inherited; every other descriptor is close-on-exec
            os.dup2(child_ends[1], 4)

        try:
            # Not pass_fds=(3, 4): subprocess marks those inheritable before wire_pipes runs, and fails (EBADF)
            # when the parent has no descriptor 3 or 4 open. Python opens every descriptor close-on-exec, so
            # with close_fds=False the browser inherits 0-2, 3 and 4 only.
            self._process = subprocess.Popen(
                command,
                close_fds=False,
                preexec_fn=wire_pipes,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as error:
            shutil.rmtree(self._profile, ignore_errors=True)
            raise BrowserError(f"could not start {self.executable}: {error}") from None
        finally:
            for end in child_ends:
                os.close(end)
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"}, browser=True)["targetId"]
            attached = self.call("Target.attachToTarget", {"targetId": target, "flatten": True}, browser=True)
            self._session = attached["sessionId"]
            for domain in ("Runtime", "Log", "Page"):
                self.call(f"{domain}.enable")
            self.resize(self.height)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for descriptor in (self._write, self._read):
            with contextlib.suppress(OSError):
                os.close(descriptor)
        self._process.kill()
        self._process.wait(timeout=30)
        shutil.rmtree(self._profile, ignore_errors=True)

    def resize(self, height: int) -> None:
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def call(self, method: str, params: dict[str, Any] | None = None, *, browser: bool = False) -> dict[str, Any]:
        """Send ``method`` (to the page unless ``browser``) and wait for its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if not browser and self._session is not None:
            message["sessionId"] = self._session
        os.write(self._write, orjson.dumps(message) + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message', reply['error'])}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            if "method" in reply:
                self.events.append(reply)

    def wait_for_event(self, method: str) -> dict[str, Any]:
        """The first event ``method`` received from now on (or already kept in :attr:`events`)."""
        deadline = time.monotonic() + self.timeout
        while True:
            for event in self.events:
                if event["method"] == method:
                    self.events.remove(event)
                    return event
            reply = self._receive(deadline)
            if "method" in reply:
                self.events.append(reply)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"evaluating {expression[:60]!r}: {_exception_text(result['exceptionDetails'])}")
        return result["result"].get("value")

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._read], [], [], remaining)[0]:
                raise BrowserError(f"Chromium did not answer within {self.timeout:g} s")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise BrowserError("Chromium closed the DevTools pipe (it exited)")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        reply: dict[str, Any] = orjson.loads(message)
        return reply


def _exception_text(details: dict[str, Any]) -> str:
    exception = details.get("exception", {})
    return str(exception.get("description") or details.get("text") or exception)


def page_errors(events: Sequence[dict[str, Any]]) -> list[str]:
    """The errors among DevTools events: uncaught exceptions, ``console.error``, browser log errors."""
    errors = []
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.exceptionThrown":
            errors.append(f"uncaught: {_exception_text(params['exceptionDetails'])}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
            errors.append(f"console.{params['type']}: {text}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"log: {entry.get('text', '')} {entry.get('url', '')}".strip())
    return errors


_PANELS_SCRIPT = """(() => {
  const out = {};
  for (const node of document.querySelectorAll("[data-panel]")) {
    if (node.tagName === "CANVAS") {
      if (!node.width || !node.height) { out[node.dataset.panel] = {inked: 0, colors: 0, marks: 0}; continue; }
      const pixels = node.getContext("2d").getImageData(0, 0, node.width, node.height).data;
      const colors = new Set(); let inked = 0;
      for (let i = 0; i < pixels.length; i += 4) {
        const a = pixels[i + 3], white = pixels[i] === 255 && pixels[i + 1] === 255 && pixels[i + 2] === 255;
        if (a && !white) inked++;
        if (colors.size < 64) colors.add((pixels[i] << 16) | (pixels[i + 1] << 8) | pixels[i + 2] | (a ? 0 : 1 << 24));
      }
      out[node.dataset.panel] = {inked: inked / (pixels.length / 4), colors: colors.size, marks: 0};
    } else {
      const marks = [...node.querySelectorAll("path, rect")]
        .filter((n) => n.tagName === "rect" || /L/.test(n.getAttribute("d") || ""));
      out[node.dataset.panel] = {inked: 0, colors: 0, marks: marks.length};
    }
  }
  return out;
})()"""

_EXPERTS_DIGEST = """[...document.querySelectorAll("canvas[data-kind=experts]")]
  .map((c) => c.dataset.layer + ":" + c.toDataURL().length + ":" + c.toDataURL().slice(-4096)).join("|")"""
_EXPERTS_LAYERS = """[...new Set([...document.querySelectorAll("canvas[data-kind=experts]")]
  .filter((c) => c.dataset.layer !== undefined).map((c) => c.dataset.layer))]"""


@dataclass
class PageCheck:
    """What :func:`check_report_page` found (see the module docstring)."""

    errors: list[str] = field(default_factory=list)
    panels: dict[str, dict[str, float]] = field(default_factory=dict)
    layer_selection: str | None = None
    screenshot: Path | None = None
    sections: dict[str, tuple[int, int]] = field(default_factory=dict)
    """``(top, height)`` in the screenshot's pixels of each ``section`` element with an id."""

    @property
    def empty_panels(self) -> list[str]:
        """Panels that drew nothing: a canvas under :data:`MIN_INKED` or :data:`MIN_COLORS`, an SVG without marks."""
        return [
            name
            for name, drawn in self.panels.items()
            if not (drawn["marks"] > 0 or (drawn["inked"] >= MIN_INKED and drawn["colors"] >= MIN_COLORS))
        ]

    @property
    def ok(self) -> bool:
        return not self.errors and bool(self.panels) and not self.empty_panels and self.layer_selection is None


def _select_layer_and_compare(browser: Browser) -> str | None:
    """Choose another layer in the select box, then click a row of the first overview heatmap; say what failed."""
    layers = browser.evaluate("[...document.querySelectorAll('#layer-select option')].map((o) => o.value)")
    if not layers or len(layers) < 2:
        return None if layers else "the layer select box has no options"
    before = browser.evaluate("document.querySelector('.selected-layer').textContent")
    digest = browser.evaluate(_EXPERTS_DIGEST)
    choice = layers[0] if before != layers[0] else layers[-1]
    browser.evaluate(
        f"(() => {{ const s = document.getElementById('layer-select'); s.value = {orjson.dumps(choice).decode()};"
        " s.dispatchEvent(new Event('change')); })()"
    )
    shown = browser.evaluate("document.querySelector('.selected-layer').textContent")
    if shown != choice:
        return f"choosing layer {choice} in the select box shows layer {shown!r}"
    if browser.evaluate(_EXPERTS_LAYERS) != [choice] or browser.evaluate(_EXPERTS_DIGEST) == digest:
        return f"choosing layer {choice} in the select box did not redraw the expert heatmaps"
    geometry = browser.evaluate(
        "(() => { const c = document.querySelector('canvas[data-kind=overview]'); c.scrollIntoView({block: 'center'});"
        " const b = c.getBoundingClientRect(); return {x: b.left + b.width / 2, top: b.top,"
        " rowTop: +c.dataset.rowTop, rowHeight: +c.dataset.rowHeight, labels: c.dataset.rowLabels.split(',')}; })()"
    )
    labels = geometry["labels"]
    row = 0 if labels[0] != choice else len(labels) - 1
    y = geometry["top"] + geometry["rowTop"] + (row + 0.5) * geometry["rowHeight"]
    for kind in ("mousePressed", "mouseReleased"):
        browser.call(
            "Input.dispatchMouseEvent", {"type": kind, "x": geometry["x"], "y": y, "button": "left", "clickCount": 1}
        )
    shown = browser.evaluate("document.querySelector('.selected-layer').textContent")
    if shown != labels[row]:
        return f"clicking the row of layer {labels[row]} in the overview shows layer {shown!r}"
    return None


def check_report_page(
    page: str | os.PathLike[str],
    screenshot: str | os.PathLike[str] | None = None,
    *,
    width: int = 1280,
    screenshot_height: int | None = None,
    executable: str | None = None,
    timeout: float = 60.0,
) -> PageCheck:
    """Load ``page`` in headless Chromium and check it (see the module docstring).

    The screenshot shows the page ``width`` pixels wide, the whole page or its
    first ``screenshot_height`` pixels, as the page stood before the layer
    selection was exercised. Raises :class:`BrowserError` when Chromium cannot
    be run, and :class:`~chronomoe.errors.InvalidInputError` when ``page`` is not a file.
    """
    path = Path(page).resolve()
    if not path.is_file():
        raise InvalidInputError("page", str(page), "is not a file")
    check = PageCheck()
    with Browser(executable, timeout, width) as browser:
        browser.call("Page.navigate", {"url": path.as_uri()})
        browser.wait_for_event("Page.loadEventFired")
        deadline = time.monotonic() + timeout
        while browser.evaluate("document.body.dataset.ready") != "1" and not page_errors(browser.events):
            if time.monotonic() > deadline:
                check.errors.append(f"the page's script did not finish drawing within {timeout:g} s")
                break
            time.sleep(0.05)
        check.panels = browser.evaluate(_PANELS_SCRIPT) or {}
        check.sections = {
            name: (int(top), int(height))
            for name, top, height in browser.evaluate(
                "[...document.querySelectorAll('section[id]')].map((s) => "
                "[s.id, s.getBoundingClientRect().top + window.scrollY, s.getBoundingClientRect().height])"
            )
        }
        if screenshot is not None:
            full_height = int(browser.evaluate("document.documentElement.scrollHeight"))
            height = min(full_height, screenshot_height or full_height)
            browser.resize(height)
            shot = browser.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})
            check.screenshot = Path(screenshot)
            check.screenshot.write_bytes(base64.b64decode(shot["data"]))
            browser.resize(browser.height)
        if not page_errors(browser.events):
            check.layer_selection = _select_layer_and_compare(browser)
        check.errors.extend(page_errors(browser.events))
    return check


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m chronomoe.report.browser PAGE [--screenshot PNG] [--width W] [--height H]``: check a report
    page in headless Chromium; print what was found; exit code 0 when it passes, 1 when not, 2 on an error."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m chronomoe.report.browser", description=main.__doc__)
    parser.add_argument("page", type=Path)
    parser.add_argument("--screenshot", type=Path, help="write a PNG screenshot of the page here")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in pixels (default: 1280)")
    parser.add_argument("--height", type=int, help="screenshot only the first HEIGHT pixels (default: the whole page)")
    args = parser.parse_args(argv)
    try:
        check = check_report_page(args.page, args.screenshot, width=args.width, screenshot_height=args.height)
    except (BrowserError, InvalidInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"panels drawn: {len(check.panels) - len(check.empty_panels)} of {len(check.panels)}")
    for name in check.empty_panels:
        print(f"empty panel: {name}")
    for message in check.errors:
        print(f"page error: {message}")
    print(f"layer selection: {check.layer_selection or 'works'}")
    if check.screenshot is not None:
        print(f"screenshot: {check.screenshot}")
    print("ok" if check.ok else "FAILED")
    return 0 if check.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
