"""`python -m lora_core experiment`: the refusals and one method alone in this process through lora_core.cli.main,
three methods once as a real `python -m lora_core` process."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from core_helpers import (
    assert_refused_writing_nothing,
    file_bytes,
    run_cli_in_process,
    run_cli_jobs,
)

pytestmark = pytest.mark.timeout(900)  # two short real comparisons on full MNIST, beside other sessions' work

# name: (arguments, which artifacts folder, words the one-line message must contain)
ERROR_CASES: dict[str, tuple[list[str], str, list[str]]] = {
    "unknown-task": (["experiment", "rot:45"], "trained", ["TASK:", "unknown task", "'rot:45'", "rotate:DEG"]),
    "angle-not-a-number": (["experiment", "rotate:abc"], "trained", ["TASK:", "angle", "'abc'"]),
    "digit-12": (["experiment", "digits:1,12"], "trained", ["TASK:", "'12' is not a digit"]),
    "no-task": (["experiment"], "trained", ["TASK"]),
    "unknown-method": (["experiment", "invert", "--methods", "lora,fool"], "trained", ["--methods:", "'fool'"]),
    "full-lr-0": (["experiment", "invert", "--full-lr", "0"], "trained", ["--full-lr:", "0"]),
    "steps-0": (["experiment", "invert", "--steps", "0"], "trained", ["--steps:", "0"]),
    "rank-0": (["experiment", "invert", "--rank", "0"], "trained", ["--rank:", "0"]),
    "existing-name": (["experiment", "invert", "--name", "small"], "trained", ["'small'", "--overwrite"]),
    "no-base-model": (["experiment", "invert"], "empty", ["no base model"]),
    # a domain task trains on every digit: --replay would be ignored without a word
    "replay-domain": (["experiment", "invert", "--replay", "0.5"], "trained", ["--replay:", "digit tasks", "invert"]),
}
RUN = ["--steps", "3", "--batch-size", "16", "--rank", "2"]


@pytest.fixture(scope="module")
def cli_runs(trained_artifacts, tmp_path_factory):
    """Three methods side by side as a real process."""
    root = tmp_path_factory.mktemp("cli-experiment")
    folders = {"three": root / "three"}
    shutil.copytree(trained_artifacts, folders["three"])
    out = root / "out"
    out.mkdir()
    env = {**os.environ, "LORA_ARTIFACTS_DIR": str(root / "default-artifacts-must-not-be-used")}
    args = ["experiment", "shift:2", *RUN, "--artifacts", str(folders["three"]), "--json", str(out / "3.json")]
    results = run_cli_jobs({"three": args}, env, workers=1, timeout=600)
    return {"results": results, "folders": folders, "out": out, "root": root}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_exits_2_with_one_line(capsys, monkeypatch, tmp_path, trained_artifacts, case):
    args, which, words = ERROR_CASES[case]
    folder = trained_artifacts if which == "trained" else None
    assert_refused_writing_nothing(capsys, monkeypatch, tmp_path, folder, args, words)


def test_three_methods_print_a_table_and_save_everything(cli_runs, trained_artifacts, small_sizes):
    result = cli_runs["results"]["three"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (cli_runs["root"] / "default-artifacts-must-not-be-used").exists()
    assert "Traceback" not in result.stderr
    out = result.stdout
    assert "Task shift:2: digits moved 2 px right" in out
    rows = {
        line.split()[0]: line
        for line in out.splitlines()
        if line.strip().split()[:1] in (["lora"], ["full"], ["head"], ["base"])
    }
    assert f"{2 * small_sizes.lora_per_rank:,}" in rows["lora"]
    assert f"{small_sizes.base_params:,}" in rows["full"] and f"{small_sizes.head_params:,}" in rows["head"]
    stored = {m["method"]: m["stored_bytes"] for m in json.loads((cli_runs["out"] / "3.json").read_text())["methods"]}
    assert f"{stored['full'] / 1e6:.1f} MB" in rows["full"]
    assert f"{stored['head'] / 1e3:.1f} KB" in rows["head"]
    assert "the base model's logits exactly: yes" in out
    assert "Per digit, plain MNIST" in out
    for name in ("LoRA", "full fine-tuning", "last layer only"):  # the progress bars go to stderr, named as shown
        assert f"{name}: 100%" in result.stderr, result.stderr
    data = json.loads((cli_runs["out"] / "3.json").read_text())
    assert data["task"]["spec"] == "shift:2" and [m["method"] for m in data["methods"]] == ["lora", "full", "head"]
    assert data["settings"]["steps"] == 3 and data["settings"]["rank"] == 2
    folder = cli_runs["folders"]["three"]
    saved = list((folder / "experiments").glob("shift-2-*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text()) == data
    assert (folder / "adapters" / "shift-2" / "adapter_model.safetensors").is_file()
    assert file_bytes(folder / "base") == file_bytes(trained_artifacts / "base")


def test_one_method_alone(capsys, artifacts_copy):
    args = ["experiment", "digits:3", "--methods", "head", *RUN, "--artifacts", str(artifacts_copy)]
    result = run_cli_in_process(capsys, args)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert any(line.strip().startswith("head ") for line in lines)
    assert not any(line.strip().startswith(("lora ", "full ")) for line in lines)
    assert "digit 3" in result.stdout and "other digits" in result.stdout
    folder = artifacts_copy
    assert sorted(p.name for p in (folder / "adapters").iterdir()) == ["small"]  # no adapter for head alone
    assert len(list((folder / "experiments").glob("digits-3-*.json"))) == 1
