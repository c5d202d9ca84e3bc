"""The benchmark runs end to end and reports every item: `python -m pytest tests/bench`.

It runs `python -m benchmarks --quick` (tiny sizes) in a subprocess. Nothing here checks speed:
that is what the full benchmark is for (`python -m benchmarks`, see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.report import TARGETS

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ("item", "measurement", "ours", "reference", "ratio", "target", "met")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    json_path, md_path = out / "bench.json", out / "bench.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(json_path), "--markdown", str(md_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,  # under the per-test limit; --quick took 66-80 s on a loaded 2-core machine
    )
    assert proc.returncode == 0, f"benchmark failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc, json.loads(json_path.read_text(encoding="utf-8")), md_path


def table_rows(text: str) -> list[list[str]]:
    """Data rows of the Markdown table in `text`, split into cells."""
    rows = []
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| #"):
            rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return rows


def test_every_item_is_printed(quick_run: tuple[subprocess.CompletedProcess[str], dict, Path]) -> None:
    proc, _, _ = quick_run
    rows = table_rows(proc.stdout)
    assert {int(r[0]) for r in rows} == set(range(1, 8))
    assert all(len(r) == len(COLUMNS) for r in rows)
    assert not any("FAILED" in r[1] for r in rows)
    assert "Machine:" in proc.stdout and "torch" in proc.stdout
    assert "ratios" in proc.stdout  # the warning that absolute times vary


def test_json_holds_every_row_and_the_machine(quick_run: tuple[subprocess.CompletedProcess[str], dict, Path]) -> None:
    proc, result, _ = quick_run
    assert result["quick"] is True
    assert result["failed"] == []
    assert {row["item"] for row in result["rows"]} == set(range(1, 8))
    assert all(set(COLUMNS) <= set(row) for row in result["rows"])
    # every judged row is judged against the one table of targets, and every target there is used
    judged = [row for row in result["rows"] if row["met"] is not None]
    assert {row["target"] for row in judged} == {target.text for target in TARGETS.values()}
    assert len(result["rows"]) == len(table_rows(proc.stdout))
    machine = result["machine"]
    for key in ("cpu_model", "torch_threads", "torch", "usable_cpus"):
        assert machine[key]
    raw = result["raw"]
    assert set(raw) == {"1-2", "3", "4", "5", "6", "7"}
    assert raw["1-2"]["ours"]["samples_per_s"] > 0 and raw["1-2"]["baseline"]["samples_per_s"] > 0
    assert raw["1-2"]["peak_gflops"] > 0
    assert raw["6"]["peak_rss_bytes"] > raw["6"]["import_only_peak_rss_bytes"] > 0
    assert [int(r) for r in raw["7"]["rank_sweep"]["extra_s"]] == [1, 4, 16, 64]


def test_markdown_file_has_the_command_and_table(
    quick_run: tuple[subprocess.CompletedProcess[str], dict, Path],
) -> None:
    _, _, md_path = quick_run
    text = md_path.read_text(encoding="utf-8")
    assert "python -m benchmarks --quick" in text
    assert {int(r[0]) for r in table_rows(text)} == set(range(1, 8))
