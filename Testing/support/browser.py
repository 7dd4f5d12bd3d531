"""Debian's Chromium, headless, driven through its DevTools protocol (CDP) over one websocket.

Only what the viewer tests need: open a page, evaluate JavaScript, wait for a condition, click, take
a screenshot, and keep every console message and uncaught exception the page produced.  Every wait
is bounded; the browser is stopped by its process group id, whatever happened.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium tries Google's hosts at every start, which this
# closed network refuses; SwiftShader gives OHIF (WebGL) a GPU in software.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
         "--no-first-run", "--no-default-browser-check", "--window-size=1600,1000", "--remote-debugging-port=0",
         "--remote-allow-origins=*")


@dataclass
class PageLog:
    """What the page said: console messages (level, text) and uncaught exceptions."""

    console: list[tuple[str, str]] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)

    def errors(self) -> list[str]:
        return self.exceptions + [text for level, text in self.console if level == "error"]


class Browser:
    def __init__(self, websocket_url: str, log: PageLog):
        import websocket

        self._socket = websocket.create_connection(websocket_url, timeout=30, suppress_origin=True)
        self._next_id = 0
        self._pending: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self.log = log
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)

    def _read(self) -> None:
        import websocket

        while True:
            try:
                message = json.loads(self._socket.recv())
            except (websocket.WebSocketException, OSError, ValueError):
                for waiting in list(self._pending.values()):
                    waiting.put({"error": {"message": "browser connection closed"}})
                return
            if "id" in message:
                waiting = self._pending.pop(message["id"], None)
                if waiting is not None:
                    waiting.put(message)
            else:
                self._event(message)

    def _event(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
            self.log.console.append((params.get("type", ""), text))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.log.exceptions.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.log.console.append((entry.get("level", ""), entry.get("text", "")))

    def call(self, method: str, params: dict | None = None, *, session: bool = False, timeout_s: float = 60.0) -> dict:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            answer: queue.Queue = queue.Queue()
            self._pending[ident] = answer
            message = {"id": ident, "method": method, "params": params or {}}
            if session:
                message["sessionId"] = self._session
            self._socket.send(json.dumps(message))
        try:
            reply = answer.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"{method}: no answer within {timeout_s} s") from None
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def open(self, url: str) -> None:
        self.call("Page.navigate", {"url": url}, session=True)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                           session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout_s: float, what: str, poll_s: float = 0.5):
        """The expression's value once it is truthy; a failure naming `what` (and the page's errors) if it never is."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):
                value = self.evaluate(expression)
                if value:
                    return value
            time.sleep(poll_s)
        raise AssertionError(f"{what}: not within {timeout_s:.0f} s; page errors: {self.log.errors()[-5:]}")

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def click_text(self, text: str, selector: str = "*") -> bool:
        """Click the innermost visible element under `selector` whose own text is `text`."""
        script = f"""(() => {{
            const wanted = {json.dumps(text)};
            const nodes = [...document.querySelectorAll({json.dumps(selector)})].filter(n =>
                n.offsetParent !== null && n.textContent.trim() === wanted &&
                ![...n.children].some(c => c.textContent.trim() === wanted));
            if (!nodes.length) return false;
            nodes[0].scrollIntoView({{block: 'center'}});
            nodes[0].click();
            return true; }})()"""
        return bool(self.evaluate(script))

    def double_click(self, selector: str) -> bool:
        script = f"""(() => {{ const n = document.querySelector({json.dumps(selector)}); if (!n) return false;
            n.dispatchEvent(new MouseEvent('dblclick', {{bubbles: true}})); return true; }})()"""
        return bool(self.evaluate(script))

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout_s=5)
        with contextlib.suppress(Exception):
            self._socket.close()


@contextlib.contextmanager
def chromium(folder: Path, log: PageLog | None = None):
    """A headless Chromium with its own profile under `folder`; stopped (its whole process group) on exit."""
    if not os.path.exists(CHROMIUM) or shutil.which("chromium") is None:
        pytest.fail("Chromium is not installed: Testing/setup-and-test.sh installs Debian's chromium")
    folder.mkdir(parents=True, exist_ok=True)
    stderr = open(folder / "chromium.log", "w+")
    process = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={folder / 'profile'}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    browser = None
    try:
        browser = Browser(_devtools_url(folder / "chromium.log", process), log or PageLog())
        yield browser
    finally:
        if browser is not None:
            browser.close()
        _stop_group(process)
        stderr.close()


def _devtools_url(log_path: Path, process: subprocess.Popen, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = re.search(r"DevTools listening on (ws://\S+)", log_path.read_text(errors="replace"))
        if match:
            return match.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"Chromium gave no DevTools address: {log_path.read_text(errors='replace')[-1500:]}")


def _stop_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
