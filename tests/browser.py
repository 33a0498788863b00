"""Open HTML pages in a real headless Chromium and report what it saw: console errors, uncaught
exceptions, and each chart's SVG.

Chromium (the Debian package, /usr/bin/chromium) is driven through the DevTools protocol over a
pipe (``--remote-debugging-pipe``: NUL-separated JSON messages on file descriptors 3 and 4), so
no websocket client, driver or browser download is needed.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BROWSER = "chromium"
TIMEOUT_S = 60.0

# Waits (in the page) until every plotly div has drawn its SVG, or 20 s pass; then describes the
# charts: per div, its SVG count and the traces drawn in its scatter layer.
_CHARTS = """
(async () => {
  const divs = () => [...document.querySelectorAll('.plotly-graph-div')];
  const drawn = d => d.querySelector('svg.main-svg') !== null;
  for (let i = 0; i < 200 && !divs().every(drawn); i++) {
    await new Promise(r => setTimeout(r, 100));
  }
  return {
    charts: divs().map(d => ({id: d.id, svgs: d.querySelectorAll('svg.main-svg').length,
                              traces: d.querySelectorAll('.scatterlayer .trace').length,
                              paths: d.querySelectorAll('.scatterlayer path').length})),
    canvases: document.querySelectorAll('canvas').length,
    title: document.title,
    headings: [...document.querySelectorAll('h2')].map(h => h.textContent),
  };
})()
"""


@dataclass
class PageReport:
    """What the browser saw on one page."""

    errors: list[str] = field(default_factory=list)
    """Console errors, uncaught exceptions and error log entries, as text."""
    charts: list[dict] = field(default_factory=list)
    """Per chart div: ``id``, ``svgs``, ``traces`` and ``paths`` drawn."""
    canvases: int = 0
    """Canvas elements (WebGL charts draw into one)."""
    title: str = ""
    headings: list[str] = field(default_factory=list)


def _high_fd(fd: int) -> int:
    new = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    os.set_inheritable(new, True)
    return new


class Chromium:
    """A headless Chromium driven over the DevTools pipe (use as a context manager)."""

    def __init__(self):
        exe = shutil.which(BROWSER)
        if exe is None:
            raise RuntimeError(
                f"{BROWSER} is not installed: the report tests open pages in a real browser "
                "(Debian/Ubuntu: apt-get install chromium)"
            )
        self._profile = tempfile.mkdtemp(prefix="kvsim-chromium-")
        to_browser_r, self._to_browser = map(_high_fd, os.pipe())
        self._from_browser, from_browser_w = map(_high_fd, os.pipe())

        def wire():  # in the child: the protocol's fds 3 (commands in) and 4 (replies out)
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self._proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             f"--user-data-dir={self._profile}", "--no-first-run", "--no-default-browser-check",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire, close_fds=False,
        )  # fmt: skip
        os.close(to_browser_r)
        os.close(from_browser_w)
        os.set_inheritable(self._to_browser, False)
        os.set_inheritable(self._from_browser, False)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._send("Browser.close")
            self._proc.wait(timeout=20)
        except Exception:
            self._proc.kill()
            self._proc.wait()
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)
            shutil.rmtree(self._profile, ignore_errors=True)

    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        return self._id

    def _until(self, done, timeout_s: float = TIMEOUT_S) -> dict:
        end = time.monotonic() + timeout_s
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                msg = json.loads(raw)
                self.events.append(msg)
                if done(msg):
                    return msg
            left = end - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium exited")
            self._buf += chunk

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        i = self._send(method, params, session)
        reply = self._until(lambda m: m.get("id") == i)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def open(self, path: Path) -> PageReport:
        """Load a page and report its errors and charts."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        sid = session["sessionId"]
        start = len(self.events)
        for method in ("Runtime.enable", "Log.enable", "Page.enable"):
            self.call(method, session=sid)
        self.call("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=sid)
        self._until(
            lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == sid
        )
        seen = self.call("Runtime.evaluate", {"expression": _CHARTS, "awaitPromise": True,
                                              "returnByValue": True}, session=sid)  # fmt: skip
        report = PageReport(**seen["result"]["value"])
        for m in self.events[start:]:
            if m.get("sessionId") != sid:
                continue
            p = m.get("params", {})
            if m.get("method") == "Runtime.consoleAPICalled" and p.get("type") in (
                "error",
                "assert",
            ):
                report.errors.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in p["args"])
                )
            elif m.get("method") == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                report.errors.append(d.get("exception", {}).get("description") or d.get("text"))
            elif m.get("method") == "Log.entryAdded" and p["entry"]["level"] == "error":
                report.errors.append(p["entry"]["text"])
        self.call("Target.closeTarget", {"targetId": target})
        return report
