"""`python -m lora_core analyze`, run in subprocesses (several at once, to save time)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from core_helpers import file_bytes

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(900)

# name: (arguments, which artifacts folder, words the one-line message must contain)
ERROR_CASES: dict[str, tuple[list[str], str, list[str]]] = {
    "unknown-part": (["analyze", "simlarity"], "trained", ["PART:", "'simlarity'", "similarity"]),
    "steps-0": (["analyze", "--steps", "0"], "trained", ["--steps:", "0"]),
    "large-rank-not-larger": (["analyze", "--large-rank", "8"], "trained", ["--large-rank:", "larger", "8"]),
    "same-seeds": (["analyze", "--other-seed", "0"], "trained", ["--other-seed:", "differ"]),
    "memory-rank-0": (["analyze", "memory", "--memory-ranks", "4", "0"], "trained", ["--memory-ranks:", "0"]),
    "rank-not-a-number": (["analyze", "--small-rank", "x"], "trained", ["--small-rank:", "'x'"]),
    "no-base-model": (["analyze", "memory"], "empty", ["no base model", "train"]),
}
SMALL = ["--small-rank", "4", "--large-rank", "8", "--steps", "40", "--batch-size", "64", "--memory-steps", "2"]


@pytest.fixture(scope="module")
def cli_runs(trained_artifacts, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-analyze")
    folders = {name: root / name for name in ("trained", "empty", "all", "memory")}
    for name in ("trained", "all", "memory"):
        shutil.copytree(trained_artifacts, folders[name])
    folders["empty"].mkdir()
    out = root / "out"
    out.mkdir()
    env = {**os.environ, "LORA_ARTIFACTS_DIR": str(root / "default-artifacts-must-not-be-used")}
    jobs = {name: [*args, "--artifacts", str(folders[which])] for name, (args, which, _) in ERROR_CASES.items()}
    jobs["all"] = ["analyze", *SMALL, "--memory-ranks", "2", "8", "--artifacts", str(folders["all"])]
    jobs["all"] += ["--json", str(out / "all.json")]
    jobs["memory"] = ["analyze", "memory", *SMALL, "--memory-ranks", "1", "--artifacts", str(folders["memory"])]

    def run(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "lora_core", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(run, args) for name, args in jobs.items()}
        results = {name: f.result() for name, f in futures.items()}
    return {"results": results, "folders": folders, "out": out, "root": root}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_exits_2_with_one_line(cli_runs, case):
    result = cli_runs["results"][case]
    detail = f"stdout={result.stdout[-2000:]!r} stderr={result.stderr[-2000:]!r}"
    assert result.returncode == 2, detail
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, detail
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), detail
    for word in ERROR_CASES[case][2]:
        assert word in lines[0], detail


def test_refusals_wrote_nothing(cli_runs, trained_artifacts):
    assert file_bytes(cli_runs["folders"]["trained"]) == file_bytes(trained_artifacts)
    assert list(cli_runs["folders"]["empty"].iterdir()) == []
    assert not (cli_runs["root"] / "default-artifacts-must-not-be-used").exists()


def test_all_prints_every_table_and_saves_the_json(cli_runs, trained_artifacts):
    result = cli_runs["results"]["all"]
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for words in (
        "r4-seed0 vs r8-seed0 (ranks compared), directions of A",
        "r4-seed0 vs r4-seed1 (seeds compared), input directions of the update",
        "r4-seed0: saved adapter 'small'",  # the saved adapter trained with exactly these settings is reused
        "φ(1,1)",
        "φ(4,all)",
        "φ(1,all) at init",
        "||UᵀWVᵀ||_F",
        "amplifies directions W",
        "In short:",
        "share of ||ΔW||²_F",
        "measured peak",
        "Full fine-tuning / LoRA r=8:",
    ):
        assert words in out, words
    data = json.loads((cli_runs["out"] / "all.json").read_text())
    assert data["part"] == "all"
    layers = [e["layer"] for e in data["adapters"]["similarity"]["A"]["ranks"]]
    assert layers == ["linear1", "linear2", "linear3"]
    assert [r["label"] for r in data["memory"]["rows"]] == ["full fine-tuning", "LoRA r=2", "LoRA r=8"]
    assert data["memory"]["rows"][1]["gradient_bytes"] == 2 * 6794 * 4
    folder = cli_runs["folders"]["all"]
    saved = {p.name for p in (folder / "analysis").iterdir()}
    assert saved == {"adapters.json", "memory.json"}
    assert json.loads((folder / "analysis" / "memory.json").read_text())["rows"] == data["memory"]["rows"]
    # the saved adapter was read, not changed; nothing else was added to the adapters
    assert file_bytes(folder / "adapters") == file_bytes(trained_artifacts / "adapters")


def test_one_part_runs_only_its_group(cli_runs):
    result = cli_runs["results"]["memory"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Memory of training" in result.stdout and "Subspace similarity" not in result.stdout
    assert {p.name for p in (cli_runs["folders"]["memory"] / "analysis").iterdir()} == {"memory.json"}


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["analyze", "--help"], ["PART", "(default: all)"]),
        (["experiment", "--help"], ["--name", "if taken, rotate-45-2"]),
    ],
)
def test_help_states_what_happens_by_default(capsys, argv, words):
    from lora_core.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert exit_info.value.code == 0 and all(w in text for w in words), text
