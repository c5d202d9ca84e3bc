"""Item 9: the whole study from the dashboard's page, in a real browser, against the CLI. What it measures
is in benchmarks/page.py (measure_page_vs_cli); here, the figures become table rows."""

from __future__ import annotations

import statistics

from ..context import Context
from ..report import Row, judged, times
from .common import Raw


def rows_9(ctx: Context, raw: Raw) -> list[Row]:
    """Item 9: the Home page's "Run the whole study" in Chromium against `python -m lora_core study`."""
    settings = ", ".join(f"{k} {v}" for k, v in raw["settings"].items()) or "the default settings"
    rounds = raw["rounds"]
    page_s = raw["page_s"]
    server_cpu = statistics.median(r["page_server_cpu_s"] for r in rounds)
    browser_cpu = statistics.median(r["page_browser_cpu_s"] for r in rounds)
    return [
        judged(
            9,
            f"whole study ({settings}), fresh artifacts: the Home page's button in Chromium with the page open "
            f"showing live progress (click to the results on the page) vs `python -m lora_core study` (start to exit); "
            f"ratio = CLI wall / page wall, median of {len(rounds)} alternating rounds",
            f"{page_s:.1f} s",
            f"{raw['cli_s']:.1f} s",
            times(raw["ratio"]),
            "study from the page vs from the CLI (speed)",
            raw["ratio"],
        ),
        Row(
            9,
            "CPU the page's run cost besides training: the Streamlit server (without its worker) and the browser, "
            "in cores on average over the run",
            f"server {server_cpu / page_s:.3f}, browser {browser_cpu / page_s:.3f}",
            "-",
            "-",
            "report",
        ),
        Row(
            9,
            "the page's wall, of which the worker's run (as the page reports it); the rest is the click's rerun, "
            "the last progress poll and the page reloading the study's results",
            f"{page_s:.1f} s",
            f"{statistics.median(r['page_run_seconds'] for r in rounds):.1f} s",
            "-",
            "report",
        ),
    ]
