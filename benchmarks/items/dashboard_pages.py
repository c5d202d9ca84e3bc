"""Item 10: the dashboard in a real browser, with a trained base model and two digit adapters on disk (a warm server):
each page's load in a fresh tab (and in a new browser profile, nothing cached), each switch between pages by the
sidebar's links, and the time from a control moving to the figure that follows it (the adapter's strength, the
directions kept, a click on the weight map).

A page counts as loaded when it is complete: the script has finished, no skeleton is left, and the page's text
has stopped changing (the same for 300 ms). A control's time stops when the page shows the figure for the new
value (waited for inside the browser, at each animation frame). The server is a real `streamlit run`, Chromium
is driven by Playwright, as in the browser tests.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..context import Context
from ..report import Row, judged
from ..server import CHROMIUM, CHROMIUM_FLAGS, ROOT, start_app, stop_app
from ..timing import percentile
from .common import Raw

PAGES = {
    "Home": "",
    "Training": "training",
    "Evaluation": "evaluation",
    "Parameters": "parameters",
    "Fine-tuning": "finetune",
    "Draw": "draw",
    "Experiments": "experiments",
    "Insight": "insight",
    "My digits": "mydigits",
}
LOAD_KINDS = ("tab", "profile")  # a fresh tab of a browser that has shown the app before; a new browser profile
STABLE_MS = 300  # the page's text unchanged this long: it has stopped changing
# runs in the page: resolves once the app is idle, skeleton-free, and its text the same for STABLE_MS
_COMPLETE = """async (stable) => {
  let last = null, since = performance.now();
  for (;;) {
    const app = document.querySelector('[data-testid="stApp"]');
    const busy = !app || app.getAttribute('data-test-script-state') === 'running'
      || document.querySelector('[data-testid="stSkeleton"], [data-testid="stAppSkeleton"]');
    const text = document.body.innerText;
    if (busy || text !== last) { last = text; since = performance.now(); }
    else if (performance.now() - since >= stable) return since;
    await new Promise(r => requestAnimationFrame(r));
  }
}"""


def _lab_folder(ctx: Context, root: Path) -> Path:
    """The study's base model and digit adapter, and a second adapter on digits 0 and 1 (so that two can be
    combined), trained by the CLI at ctx's sizes."""
    artifacts = root / "artifacts"
    where = ["--artifacts", str(artifacts), "--data", str(ctx.data_dir)]
    second = ["finetune", "--digit", "0", "1", "--steps", str(ctx.sizes.page_lab_steps), "--name", "digits-0-1"]
    for args in (["study", *ctx.sizes.study_args], second):
        ctx.log("dashboard pages: python -m lora_core " + " ".join(args))
        done = subprocess.run(
            [sys.executable, "-m", "lora_core", *args, *where],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=ctx.sizes.study_timeout_s,
        )
        if done.returncode != 0:
            raise RuntimeError(f"`python -m lora_core {args[0]}` failed: {done.stdout[-800:]}{done.stderr[-800:]}")
    return artifacts


def _complete(page: Any, start: float) -> float:
    """Seconds from `start` (perf_counter) to the moment the page became complete."""
    page.wait_for_function(_COMPLETE, arg=STABLE_MS, timeout=120_000, polling="raf")
    # the promise resolves STABLE_MS after the last change: that change is when the page was complete
    return time.perf_counter() - start - STABLE_MS / 1000


def _loads(browser: Any, url: str, pages: dict[str, str], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Per page, `rounds` loads of its address in a fresh tab of a browser that has shown the app before (its
    cache holds the app's scripts, as a returning user's does), and as many in a new browser profile (nothing
    cached: a first visit), side by side."""
    viewport = {"width": 1400, "height": 1100}
    out: dict[str, dict[str, list[float]]] = {kind: {name: [] for name in pages} for kind in LOAD_KINDS}
    returning = browser.new_context(viewport=viewport)
    primer = returning.new_page()
    primer.goto(url)
    _complete(primer, time.perf_counter())
    primer.close()
    for _ in range(rounds):
        for name, path in pages.items():
            for kind in LOAD_KINDS:
                context = returning if kind == "tab" else browser.new_context(viewport=viewport)
                page = context.new_page()
                start = time.perf_counter()
                page.goto(f"{url}/{path}")
                out[kind][name].append(_complete(page, start))
                page.close()
                if context is not returning:
                    context.close()
    returning.close()
    return out


def _switches(browser: Any, url: str, pages: dict[str, str], rounds: int) -> dict[str, list[float]]:
    """Per page, `rounds` switches to it from the page before it in `pages`' order, by its link."""
    out: dict[str, list[float]] = {name: [] for name in pages}
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(url)
    _complete(page, time.perf_counter())
    names = list(pages)
    for _ in range(rounds):
        for name in names[1:] + names[:1]:
            link = page.locator(f'[data-testid="stSidebarNav"] a[href="{url}/{pages[name]}"]').first
            start = time.perf_counter()
            link.click()
            out[name].append(_complete(page, start))
    page.close()
    return out


def _until_text(page: Any, text: str) -> None:
    page.wait_for_function("(t) => document.body.innerText.includes(t)", arg=text, timeout=60_000, polling="raf")


def _slider_input(page: Any, label: str) -> Any:
    """The range input inside Streamlit's slider `label` (its thumb: it takes the arrow keys)."""
    return page.locator(f'[role="group"][aria-label="{label}"] input[type="range"]').first


_SHOWN = "(el) => el.getAttribute('aria-valuetext') || el.value"


def _slider_steps(page: Any, url: str, path: str, label: str, shown: Any, moves: int) -> list[float]:
    """Seconds from an arrow key on the slider `label` to the page showing the figure for the new value
    (`shown(value text)` gives the text that appears with it)."""
    page.goto(f"{url}/{path}")
    thumb = _slider_input(page, label)
    thumb.wait_for(state="attached", timeout=120_000)  # the curve behind it is computed in the background first
    _complete(page, time.perf_counter())
    times = []
    for i in range(moves):
        before = thumb.evaluate(_SHOWN)
        thumb.focus()
        start = time.perf_counter()
        page.keyboard.press("ArrowLeft" if i % 2 == 0 else "ArrowRight")
        handle = thumb.element_handle()
        page.wait_for_function(
            f"([el, before]) => ({_SHOWN})(el) !== before", arg=[handle, before], timeout=10_000, polling="raf"
        )
        _until_text(page, shown(thumb.evaluate(_SHOWN)))
        times.append(time.perf_counter() - start)
        _complete(page, time.perf_counter())
    return times


def _map_clicks(page: Any, url: str, clicks: int) -> list[float]:
    """Seconds from a click on a square of the weight map (the first map: plain MNIST) to every map ringing the pair
    it picked and both weight sliders showing it (each square and ring is named by its aria-label)."""
    page.goto(f"{url}/evaluation")
    _complete(page, time.perf_counter())
    page.get_by_test_id("stCheckbox").filter(has_text="Combine two adapters").first.click()
    squares = page.locator('[class*="st-key-eval_combine_map"] g.mark-rect path[aria-label]')
    squares.first.wait_for(timeout=120_000)  # the map is computed in the background first
    _complete(page, time.perf_counter())
    times = []
    for i in range(clicks):
        row, column = (5, 2) if i % 2 == 0 else (3, 6)  # the 7 x 7 grid's (w2, w1) = (1.25, 0.5), (0.75, 1.5)
        w1, w2 = column * 0.25, row * 0.25
        start = time.perf_counter()
        squares.nth(row * 7 + column).click(force=True)
        page.wait_for_function(
            """([w1, w2]) => {
              const rings = [...document.querySelectorAll('[class*="st-key-eval_combine_map"] g.mark-symbol path')];
              const sliders = [...document.querySelectorAll('[role="group"][aria-label^="Weight of"] input')];
              const pair = (label) => (label || '').split('; ').map((part) => Number(part.split(': ').pop()));
              return rings.length > 0 && rings.every((ring) => {
                  const [x, y] = pair(ring.getAttribute('aria-label'));
                  return x === w1 && y === w2;
                }) && sliders.length === 2 && Number(sliders[0].value) === w1 && Number(sliders[1].value) === w2;
            }""",
            arg=[w1, w2],
            timeout=60_000,
            polling="raf",
        )
        times.append(time.perf_counter() - start)
        _complete(page, time.perf_counter())
    return times


def measure_dashboard_pages(ctx: Context) -> Raw:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        raise RuntimeError(f"item 10 needs Chromium at {CHROMIUM} (apt-get install chromium)")
    rounds, moves = ctx.sizes.page_load_rounds, ctx.sizes.control_moves
    pages = {name: PAGES[name] for name in ctx.sizes.page_names or PAGES}
    with tempfile.TemporaryDirectory(prefix="bench-pages-") as tmp:
        root = Path(tmp)
        artifacts = _lab_folder(ctx, root)
        server = start_app(artifacts, root / "streamlit.log", env={"LORA_DATA_DIR": str(ctx.data_dir)}, timeout_s=120)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
                try:
                    warm = browser.new_page()
                    for path in pages.values():  # warm: every page's caches filled, as on a server in use
                        warm.goto(f"{server.url}/{path}")
                        _complete(warm, time.perf_counter())
                    warm.close()
                    ctx.log("dashboard pages: loads in fresh tabs")
                    loads = _loads(browser, server.url, pages, rounds)
                    ctx.log("dashboard pages: switches by the sidebar")
                    switches = _switches(browser, server.url, pages, rounds)
                    ctx.log("dashboard pages: controls")
                    page = browser.new_page(viewport={"width": 1400, "height": 1100})
                    strength = _slider_steps(
                        page, server.url, "evaluation", "Adapter strength", lambda v: f"at strength {v}", moves
                    )
                    kept = _slider_steps(
                        page, server.url, "parameters", "Directions kept per layer (k)", lambda v: f"at k = {v}", moves
                    )
                    clicks = _map_clicks(page, server.url, moves)
                    page.close()
                finally:
                    browser.close()
        finally:
            stop_app(server.process)
    return {
        "rounds": rounds,
        "load_s": loads["tab"],
        "load_new_profile_s": loads["profile"],
        "switch_s": switches,
        "controls_s": {"strength": strength, "k": kept, "weight map": clicks},
    }


def _p(values: list[float], q: float) -> float:
    return percentile(values, q) if len(values) > 1 else values[0]


def rows_10(ctx: Context, raw: Raw) -> list[Row]:
    """Item 10: page loads, page switches and control-to-figure times in Chromium."""
    rows: list[Row] = []
    first = raw["load_s"]["Home"]
    rows.append(
        judged(
            10,
            f"first page (Home) complete in a fresh tab, warm server: p50 (p95) of {len(first)} loads",
            f"{statistics.median(first):.2f} s ({_p(first, 95):.2f} s)",
            "-",
            "-",
            "first page complete in a fresh tab (s)",
            statistics.median(first),
        )
    )
    for name, values in raw["load_s"].items():
        if name != "Home":
            rows.append(
                Row(
                    10,
                    f"{name} complete in a fresh tab: p50 (p95) of {len(values)}",
                    f"{statistics.median(values):.2f} s ({_p(values, 95):.2f} s)",
                    "-",
                    "-",
                    "report",
                )
            )
    for name, values in raw.get("load_new_profile_s", {}).items():
        rows.append(
            Row(
                10,
                f"{name} complete in a new browser profile (a first visit, nothing cached): p50 (p95) of {len(values)}",
                f"{statistics.median(values):.2f} s ({_p(values, 95):.2f} s)",
                "-",
                "-",
                "report",
            )
        )
    worst = max(raw["switch_s"], key=lambda n: statistics.median(raw["switch_s"][n]))
    for name, values in raw["switch_s"].items():
        measurement = f"switch to {name} by the sidebar's link: p50 (p95) of {len(values)}"
        shown = f"{statistics.median(values):.2f} s ({_p(values, 95):.2f} s)"
        if name == worst:
            rows.append(
                judged(
                    10,
                    measurement + " (the slowest page)",
                    shown,
                    "-",
                    "-",
                    "page switch, slowest page (s)",
                    statistics.median(values),
                )
            )
        else:
            rows.append(Row(10, measurement, shown, "-", "-", "report"))
    for control, values in raw["controls_s"].items():
        rows.append(
            judged(
                10,
                f"{control}: control moved to its figure on the page, p50 (p95) of {len(values)}",
                f"{1000 * statistics.median(values):.0f} ms ({1000 * _p(values, 95):.0f} ms)",
                "-",
                "-",
                "control to figure (s)",
                statistics.median(values),
            )
        )
    return rows
