"""Item 8: the whole study started from the dashboard's page, in a real browser, against the same study
from the command line.

A user's laptop runs the Streamlit server, the browser showing the live progress and the training
worker on the same cores, so "as fast as the CLI" is only true when measured that way: a real
`streamlit run`, Debian's Chromium driven by Playwright with the Home page open the whole time, the
"Run the whole study" button clicked, and the clock stopped when the page shows the study's results
(its "Base accuracy" headline, after the "Finished in" line). The live loss curve is left as it is by
default (drawn when the run ends). Each
run gets a fresh artifacts folder (so both train a new base model) and the same MNIST folder. CLI and
page runs alternate, CLI first then page, round by round, and the ratio is the median of the rounds'.

Needs the test packages (Playwright) and Chromium at $CHROMIUM_PATH or /usr/bin/chromium, like the
browser tests.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from .context import Context
from .server import CHROMIUM, CHROMIUM_FLAGS, ROOT, start_app, stop_app


def _env(data_dir: Path, artifacts: Path) -> dict[str, str]:
    return {**os.environ, "LORA_DATA_DIR": str(data_dir), "LORA_ARTIFACTS_DIR": str(artifacts)}


def _cli_args(settings: dict[str, int]) -> list[str]:
    """The CLI flags that mean the same as the page's "Study settings" fields in `settings`."""
    args: list[str] = []
    if settings:
        args += ["--train-hidden", str(settings["Hidden size 1"]), str(settings["Hidden size 2"])]
        args += ["--steps", str(settings["Fine-tuning steps"])]
    return args


def cli_study(data_dir: Path, settings: dict[str, int], timeout: float) -> float:
    """Wall seconds of `python -m lora_core study` in a fresh artifacts folder."""
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as artifacts:
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "lora_core", "study", *_cli_args(settings)],
            cwd=ROOT,
            env=_env(data_dir, Path(artifacts)),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"`python -m lora_core study` failed: {done.stdout[-1000:]}{done.stderr[-1000:]}")
    return seconds


def _cpu_times(processes: list[psutil.Process]) -> dict[psutil.Process, float]:
    times = {}
    for p in processes:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        times[p] = t.user + t.system
    return times


def _cpu_used(before: dict[psutil.Process, float]) -> float:
    """CPU seconds the processes of `before` used since; a process that has ended since counts for nothing (its
    last times are gone), so the figure is a lower bound, never a difference with a process missing."""
    after = _cpu_times(list(before))
    return sum(after[p] - before[p] for p in after)


def _own_browser_processes() -> list[psutil.Process]:
    """Chromium's processes started by this process's Playwright (not another browser on the machine)."""
    own = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "chrom" in p.name():
                own.append(p)
        except psutil.Error:  # ended meanwhile
            continue
    return own


FINISHED = r"Finished in ([\d.]+) s"  # the run's outcome line, with the worker's run in seconds

# resolves with the page's text once it matches: checked at each change of the page (a MutationObserver), so the
# clock stops within a frame of the text arriving, at no cost while nothing changes (Playwright's own waits poll
# at up to 1 s intervals, and a check at every animation frame would take the CPU the run needs)
_APPEARS = """([pattern, timeoutMs]) => new Promise((resolve, reject) => {
  const re = new RegExp(pattern);
  const check = () => {
    const text = document.body.textContent;
    if (re.test(text)) { observer.disconnect(); clearTimeout(timer); resolve(text.match(re)[0]); }
  };
  const observer = new MutationObserver(check);
  const timer = setTimeout(() => { observer.disconnect(); reject(new Error('not shown: ' + pattern)); }, timeoutMs);
  observer.observe(document.body, {subtree: true, childList: true, characterData: true});
  check();
})"""


def _text_appears(page: Any, pattern: str, timeout_s: float) -> str:
    """Wait until the page's text matches `pattern` (a regular expression); return the match."""
    return str(page.evaluate(_APPEARS, [pattern, timeout_s * 1000]))


def page_study(browser: Any, data_dir: Path, settings: dict[str, int], timeout: float) -> dict[str, float]:
    """Wall seconds from the click on "Run the whole study" to its results on the page, with a fresh
    artifacts folder, and the CPU seconds the server (without its worker) and the browser used meanwhile."""
    from playwright.sync_api import expect

    folder = Path(tempfile.mkdtemp(prefix="bench-page-"))
    server, page = None, None
    try:
        # the file watcher stays on, as in a user's `streamlit run`
        data = {"LORA_DATA_DIR": str(data_dir)}
        server = start_app(folder / "artifacts", folder / "streamlit.log", env=data, watch_files=True, timeout_s=120)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(server.url)
        button = page.get_by_role("button", name="Run the whole study")
        expect(button).to_be_enabled(timeout=120_000)
        if settings:
            page.get_by_text("Study settings").click()
            for label, value in settings.items():
                field = page.get_by_label(label, exact=True)
                field.fill(str(value))
                field.press("Enter")
                page.wait_for_timeout(500)
            expect(button).to_be_enabled(timeout=60_000)
        server_cpu = _cpu_times([psutil.Process(server.process.pid)])
        browser_cpu = _cpu_times(_own_browser_processes())
        start = time.perf_counter()
        button.click()
        # the clock stops when the study's results are on the page, not at the outcome line before them
        outcome = _text_appears(page, FINISHED, timeout)
        _text_appears(page, "Base accuracy", 120)
        seconds = time.perf_counter() - start
        run = re.search(FINISHED, outcome)
        return {
            "seconds": seconds,
            "run_seconds": float(run.group(1)) if run else math.nan,  # the worker's run, as the page says
            "server_cpu_s": _cpu_used(server_cpu),
            "browser_cpu_s": _cpu_used(browser_cpu),
        }
    finally:
        if page is not None:
            page.close()
        if server is not None:
            stop_app(server.process)  # its process group: the study's worker too
        shutil.rmtree(folder, ignore_errors=True)


def measure_page_vs_cli(ctx: Context) -> dict[str, Any]:
    """Alternate CLI and page studies for ctx.sizes.page_rounds rounds."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        raise RuntimeError(f"item 8 needs Chromium at {CHROMIUM} (apt-get install chromium)")
    settings = dict(ctx.sizes.page_study_settings)
    timeout = ctx.sizes.study_timeout_s
    rounds: list[dict[str, float]] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            for i in range(ctx.sizes.page_rounds):
                ctx.log(f"round {i + 1}: `python -m lora_core study`")
                cli = cli_study(ctx.data_dir, settings, timeout)
                ctx.log(f"round {i + 1}: the Home page's “Run the whole study” in Chromium")
                page = page_study(browser, ctx.data_dir, settings, timeout)
                rounds.append({"cli_s": cli, **{f"page_{k}": v for k, v in page.items()}})
        finally:
            browser.close()
    return {
        "rounds": rounds,
        "settings": settings,
        "ratio": statistics.median(r["cli_s"] / r["page_seconds"] for r in rounds),
        "cli_s": statistics.median(r["cli_s"] for r in rounds),
        "page_s": statistics.median(r["page_seconds"] for r in rounds),
    }
