"""The dashboard under a real `streamlit run` on a free local port, and Debian's Chromium to look at it.

Shared by the browser tests (tests/browser/conftest.py) and the page benchmark (benchmarks/page.py); plain
Python, no pytest, so that `python -m benchmarks` runs without the test packages' fixtures.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class AppServer:
    url: str
    artifacts: Path
    process: subprocess.Popen
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_app(
    artifacts: Path,
    log: Path,
    *,
    env: dict[str, str] | None = None,
    watch_files: bool = False,
    timeout_s: float = 60.0,
) -> AppServer:
    """Start `streamlit run dashboard/app.py` on `artifacts` in a session of its own (stop_app ends its whole
    process group, training workers included), its output in `log`, and wait until /_stcore/health answers.

    `env` adds variables (LORA_DATA_DIR, ...); watch_files=False turns Streamlit's file watcher off (the tests
    change no source file), True keeps it as a user's `streamlit run` has it."""
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.headless", "true"]
    cmd += ["--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false"]
    if not watch_files:
        cmd += ["--server.fileWatcherType", "none"]
    full_env = {**os.environ, **(env or {}), "LORA_ARTIFACTS_DIR": str(artifacts), "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:  # the child keeps its own copy of the file descriptor
        process = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().decode().strip() == "ok":
                    return AppServer(url, artifacts, process, log)
        except OSError:
            time.sleep(0.3)
    stop_app(process)
    raise RuntimeError(f"streamlit did not answer /_stcore/health within {timeout_s:g} s:\n{log.read_text()}")


def stop_app(process: subprocess.Popen) -> None:
    """End the server and everything it started (its process group): SIGTERM, then SIGKILL after 15 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)
