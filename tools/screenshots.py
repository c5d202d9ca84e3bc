"""Pictures of every dashboard page, from the real app, for docs/screenshots/.

    python -m tools.screenshots                          # train into a temporary folder, then photograph
    python -m tools.screenshots --artifacts artifacts    # photograph a copy of existing work instead

The work the pages show is made with the command line, as a user would: the study (a base model and an
adapter on its weakest digit, at its defaults), an experiment (rotate:45, LoRA against full fine-tuning
and the last layer) and the paper's analysis for the Insight page; those two train --steps steps (default
150 instead of their 600) so that the whole run takes minutes, not a quarter of an hour, on 2 busy cores.
The dashboard then runs under `streamlit run` on a free local port, and headless Chromium (Debian's, never
a downloaded one) opens each page, waits until the app has finished its run, and saves the window as
<page>.png. Run it from the repository root.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.server import CHROMIUM, CHROMIUM_FLAGS, ROOT, start_app, stop_app
from tests.browser.helpers import PAGES, assert_no_errors, open_page

OUT = ROOT / "docs" / "screenshots"
VIEWPORT = {"width": 1400, "height": 1000}  # a laptop window; the pictures show what a user sees first
STEPS = 150  # training steps of the experiment's methods and of the analysis adapters


def prepare(artifacts: Path, steps: int = STEPS) -> None:
    """The CLI runs that fill the pages: the study, one comparison on a domain task, the paper's analysis."""
    for args in (["study"], ["experiment", "rotate:45", "--steps", str(steps)], ["analyze", "--steps", str(steps)]):
        command = [sys.executable, "-m", "lora_core", *args, "--artifacts", str(artifacts)]
        print("$", " ".join(command[1:]), flush=True)
        t = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        print(f"  {time.perf_counter() - t:.1f} s", flush=True)


def photograph(artifacts: Path, out: Path, log: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        raise SystemExit(f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
    out.mkdir(parents=True, exist_ok=True)
    server = start_app(artifacts, log)
    saved = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport=VIEWPORT)
            for name in PAGES:
                open_page(page, server.url, name)
                assert_no_errors(page)
                page.wait_for_timeout(1500)  # charts and the drawing canvas draw after the script has finished
                path = out / f"{name}.png"
                page.screenshot(path=str(path))
                saved.append(path)
                print(f"  {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", flush=True)
            browser.close()
    finally:
        stop_app(server.process)
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.screenshots", description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, help="existing work to show (copied first; never changed)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"experiment and analysis steps (default {STEPS})")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where the PNGs go (default: {OUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lora-screenshots-") as tmp:
        artifacts = Path(tmp) / "artifacts"
        if args.artifacts is not None:
            shutil.copytree(args.artifacts, artifacts, ignore=shutil.ignore_patterns(".lock"))
        else:
            prepare(artifacts, args.steps)
        photograph(artifacts, args.out, Path(tmp) / "streamlit.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
