"""`python -m lora_core analyze`: the refusals and one part in this process through lora_core.cli.main, the whole
analysis once as a real `python -m lora_core` process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from core_helpers import assert_refused_writing_nothing, file_bytes, run_cli_in_process

from lora_core.lab import readings

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
    "intruder-task": (["analyze", "intruders", "--tasks", "rotate:400"], "trained", ["--tasks:", "400"]),
    "intruder-rank-0": (["analyze", "intruders", "--ranks", "0"], "trained", ["--ranks:", "0"]),
}
SMALL = ["--small-rank", "4", "--large-rank", "8", "--steps", "40", "--batch-size", "64", "--memory-steps", "2"]


@pytest.fixture(scope="module")
def cli_runs(trained_artifacts, tmp_path_factory):
    """The whole analysis as a real process."""
    root = tmp_path_factory.mktemp("cli-analyze")
    folders = {"all": root / "all"}
    shutil.copytree(trained_artifacts, folders["all"])
    out = root / "out"
    out.mkdir()
    env = {**os.environ, "LORA_ARTIFACTS_DIR": str(root / "default-artifacts-must-not-be-used")}
    args = ["analyze", *SMALL, "--memory-ranks", "2", "8", "--artifacts", str(folders["all"])]
    result = subprocess.run(
        [sys.executable, "-m", "lora_core", *args, "--json", str(out / "all.json")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return {"results": {"all": result}, "folders": folders, "out": out, "root": root}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_exits_2_with_one_line(capsys, monkeypatch, tmp_path, trained_artifacts, case):
    args, which, words = ERROR_CASES[case]
    folder = trained_artifacts if which == "trained" else None
    assert_refused_writing_nothing(capsys, monkeypatch, tmp_path, folder, args, words)


def test_all_prints_every_table_and_saves_the_json(cli_runs, trained_artifacts, small_sizes):
    result = cli_runs["results"]["all"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (cli_runs["root"] / "default-artifacts-must-not-be-used").exists()
    out = result.stdout
    for words in (
        "r4-seed0 vs r8-seed0 (ranks compared), directions of A",
        "r4-seed0 vs r4-seed1 (seeds compared), input directions of the update",
        "r4-seed0: saved adapter 'small'",  # the saved adapter trained with exactly these settings is reused
        "φ(1,1)",
        "φ(4,all)",
        "φ(1,all) at init",
        "||UᵀWVᵀ||_F",
        "its directions are ones W",
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
    assert data["memory"]["rows"][1]["gradient_bytes"] == 2 * small_sizes.lora_per_rank * 4
    folder = cli_runs["folders"]["all"]
    saved = {p.name for p in (folder / "analysis").iterdir()}
    assert saved == {"adapters.json", "memory.json"}
    assert json.loads((folder / "analysis" / "memory.json").read_text())["rows"] == data["memory"]["rows"]
    # the saved adapter was read, not changed; nothing else was added to the adapters
    assert file_bytes(folder / "adapters") == file_bytes(trained_artifacts / "adapters")


def test_one_part_runs_only_its_group(capsys, artifacts_copy):
    args = ["analyze", "memory", *SMALL, "--memory-ranks", "1", "--artifacts", str(artifacts_copy)]
    result = run_cli_in_process(capsys, args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Memory of training" in result.stdout and "Subspace similarity" not in result.stdout
    assert {p.name for p in (artifacts_copy / "analysis").iterdir()} == {"memory.json"}


def test_intruders_print_every_table_and_save_the_json(capsys, artifacts_copy):
    args = ["analyze", "intruders", "--ranks", "1", "4", "--tasks", "weakest", "--steps", "3", "--batch-size", "32"]
    result = run_cli_in_process(capsys, [*args, "--artifacts", str(artifacts_copy)])
    assert result.returncode == 0, result.stderr[-3000:]
    for k in (10, 20, 50):
        assert f"Intruders among the top {k} of every layer" in result.stdout
    assert result.stdout.count("LoRA r=4") >= 3 and "full fine-tuning" in result.stdout  # a row in each table
    saved = json.loads((artifacts_copy / "analysis" / "intruders.json").read_text())
    assert readings.read_intruders(saved) in result.stdout
    assert {p.name for p in (artifacts_copy / "analysis").iterdir()} == {"intruders.json"}


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
