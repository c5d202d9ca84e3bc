"""The command line, run as `python -m lora_core` in subprocesses (several at once, to save time)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from core_helpers import file_bytes

REPO = Path(__file__).resolve().parents[2]

# name: (arguments, which artifacts folder, words the one-line message must contain)
ERROR_CASES: dict[str, tuple[list[str], str, list[str]]] = {
    "rank-0": (["finetune", "--rank", "0"], "trained", ["rank"]),
    "rank-11-linear3": (
        ["finetune", "--rank", "11", "--targets", "linear1", "linear3"],
        "trained",
        ["rank", "linear3"],
    ),
    "lr-negative": (["finetune", "--lr", "-1"], "trained", ["lr"]),
    "lr-nan": (["finetune", "--lr", "nan"], "trained", ["lr", "nan"]),
    "digit-10": (["finetune", "--digit", "10"], "trained", ["digit", "10"]),
    "no-such-adapter": (["evaluate", "--adapter", "nosuch"], "trained", ["nosuch"]),
    "no-base-model": (["evaluate"], "empty", ["no base model"]),
    "name-dotdot": (["finetune", "--name", "../x"], "trained", ["name", "../x"]),
    "rank-not-a-number": (["finetune", "--rank", "abc"], "trained", ["rank", "abc"]),
}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def cli_runs(trained_artifacts, tmp_path_factory):
    """Run every CLI case once, four at a time, against a copy of `trained_artifacts` or an empty folder."""
    root = tmp_path_factory.mktemp("cli")
    folders = {"trained": root / "artifacts", "empty": root / "empty"}
    shutil.copytree(trained_artifacts, folders["trained"])
    folders["empty"].mkdir()
    out = root / "out"
    out.mkdir()
    env = {**os.environ, "LORA_ARTIFACTS_DIR": str(root / "default-artifacts-must-not-be-used")}
    jobs = {name: [*args, "--artifacts", str(folders[which])] for name, (args, which, _) in ERROR_CASES.items()}
    for command in ("evaluate", "inspect"):
        jobs[command] = [command, "--adapter", "small", "--artifacts", str(folders["trained"])]
        jobs[command] += ["--json", str(out / f"{command}.json")]

    def run(args: list[str]) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "lora_core", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run, args) for name, args in jobs.items()}
        results = {name: f.result() for name, f in futures.items()}
    return {"results": results, "folders": folders, "out": out, "root": root}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_exits_2_with_one_line(cli_runs, case):
    result = cli_runs["results"][case]
    detail = f"stdout={result.stdout!r} stderr={result.stderr!r}"
    assert result.returncode == 2, detail
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, detail
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, detail
    for word in ERROR_CASES[case][2]:
        assert word in lines[0], detail


def test_evaluate_with_adapter_writes_json(cli_runs, trained_artifacts):
    result = cli_runs["results"]["evaluate"]
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    data = json.loads((cli_runs["out"] / "evaluate.json").read_text())
    assert data["adapter"] == "small"
    base_acc, adapted_acc = data["base"]["accuracy"], data["adapted"]["accuracy"]
    assert 0.5 < base_acc <= 1 and 0.5 < adapted_acc <= 1
    assert len(data["base"]["per_digit_accuracy"]) == 10 and len(data["adapted"]["wrong_counts"]) == 10
    assert data["difference"]["accuracy_delta"] == pytest.approx(adapted_acc - base_acc)
    # the same numbers as recorded when the base model and the adapter were saved
    base_meta = json.loads((trained_artifacts / "base" / "model.json").read_text())
    metrics = json.loads((trained_artifacts / "adapters" / "small" / "metrics.json").read_text())
    assert base_acc == pytest.approx(base_meta["metrics"]["accuracy"], abs=1e-4)
    assert adapted_acc == pytest.approx(metrics["after"]["accuracy"], abs=1e-4)
    assert f"{100 * adapted_acc:.2f}%" in result.stdout


def test_inspect_prints_the_unchanged_weights_proof(cli_runs):
    result = cli_runs["results"]["inspect"]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "bit-identical" in out
    proof_lines = [line for line in out.splitlines() if line.strip().startswith(("linear1.", "linear2.", "linear3."))]
    assert len(proof_lines) == 6, out
    assert all(line.rstrip().endswith("yes") for line in proof_lines), out
    assert " NO" not in out
    assert "2,807,010" in out
    data = json.loads((cli_runs["out"] / "inspect.json").read_text())
    assert data["base_weights_unchanged"] is True
    assert len(data["weights_proof"]) == 6
    assert all(p["identical"] and p["max_abs_diff"] == 0 for p in data["weights_proof"])
    assert data["parameters"]["base_params"] == 2_807_010
    assert data["parameters"]["lora_params"] == 4 * 6794
    assert data["adapter_config"]["r"] == 4
    assert set(data["updates"]) == {"linear1", "linear2", "linear3"}
    assert all(1 <= u["rank"] <= 4 and u["frobenius_norm"] > 0 for u in data["updates"].values())


def test_cli_runs_wrote_nothing_into_the_artifacts(cli_runs, trained_artifacts):
    assert file_bytes(cli_runs["folders"]["trained"]) == file_bytes(trained_artifacts)
    assert list(cli_runs["folders"]["empty"].iterdir()) == []
    assert not (cli_runs["root"] / "default-artifacts-must-not-be-used").exists()
