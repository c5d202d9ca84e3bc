"""The command line: refusals and the short runs in this process through lora_core.cli.main (a subprocess
would spend seconds importing torch for each), and one real `python -m lora_core` run per command in
subprocesses (several at once, to save time), so that the entry point, exit statuses and output streams are
proven end to end (analyze, experiment and mydigits: in their own test files)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from core_helpers import assert_one_line_error, file_bytes, run_cli_in_process, run_cli_jobs

REPO = Path(__file__).resolve().parents[2]
# the first test to use `cli_runs` pays for it: about 10 CLI runs (one a short real study), four at a time; on
# a busy 2-core machine such runs have taken minutes, near pytest-timeout's default of 300 s
pytestmark = pytest.mark.timeout(900)

# name: (arguments, which artifacts folder, words the one-line message must contain)
ERROR_CASES: dict[str, tuple[list[str], str, list[str]]] = {
    "rank-0": (["finetune", "--rank", "0"], "trained", ["rank"]),
    "rank-1e9": (["finetune", "--rank", "1000000000"], "trained", ["--rank:", "from 1 to 16,384", "1000000000"]),
    "rank-not-whole": (["finetune", "--rank", "2.5"], "trained", ["rank", "2.5"]),
    "lr-negative": (["finetune", "--lr", "-1"], "trained", ["lr"]),
    "lr-nan": (["finetune", "--lr", "nan"], "trained", ["lr", "nan"]),
    "digit-10": (["finetune", "--digit", "10"], "trained", ["digit", "10"]),
    "no-such-adapter": (["evaluate", "--adapter", "nosuch"], "trained", ["nosuch"]),
    "no-base-model": (["evaluate"], "empty", ["no base model"]),
    "name-dotdot": (["finetune", "--name", "../x"], "trained", ["name", "../x"]),
    "rank-not-a-number": (["finetune", "--rank", "abc"], "trained", ["rank", "abc"]),
    # the message names the option as the user typed it, for argparse's findings and lora_core's alike
    "train-batch-size-0": (["train", "--batch-size", "0"], "empty", ["--batch-size:", "0"]),
    "train-batch-size-text": (["train", "--batch-size", "x"], "empty", ["--batch-size:", "'x'"]),
    "finetune-ft-batch-size-0": (["finetune", "--ft-batch-size", "0"], "trained", ["--ft-batch-size:"]),
    "finetune-lr-spelled-ft": (["finetune", "--ft-lr", "7"], "trained", ["--ft-lr:", "7"]),
    "study-train-lr": (["study", "--train-lr", "7"], "trained", ["--train-lr:", "7"]),
    "digit-12": (["finetune", "--digit", "12"], "trained", ["--digit:", "12"]),
    "study-old-option": (["study", "--batch-size", "64"], "trained", ["--train-batch-size", "--ft-batch-size"]),
    "unknown-command": (["tran"], "empty", ["tran", "train"]),
    # one rule for an existing adapter name, and the refusal names the flags that get past it
    "finetune-existing-name": (["finetune", "--name", "small", "--steps", "1"], "trained", ["'small'", "--overwrite"]),
    "study-existing-name": (["study", "--name", "small", "--steps", "1"], "trained", ["'small'", "--overwrite"]),
    "predict-folder-without-pictures": (["predict", "{no_pictures}"], "trained", ["folder", "PNG"]),
    "predict-missing-file": (["predict", "{pictures}/nosuch.png"], "trained", ["nosuch.png", "no such file"]),
    "prove-steps-0": (["prove", "--steps", "0"], "trained", ["--steps:", "0"]),
    "sweep-unknown-kind": (["sweep", "alpha"], "trained", ["KIND:", "'alpha'", "rank"]),
    "finetune-alpha-1e300": (["finetune", "--alpha", "1e300"], "trained", ["--alpha:", "1.25e+299", "lower alpha"]),
    "finetune-alpha-1e30": (["finetune", "--alpha", "1e30"], "trained", ["--alpha:", "1.25e+29", "lower alpha"]),
    "loraplus-ratio-0": (["finetune", "--loraplus-ratio", "0"], "trained", ["--loraplus-ratio:", "above 0", "0"]),
    "nf4-block-fits-no-layer": (
        ["finetune", "--base-precision", "nf4", "--nf4-block-size", "4094"],
        "trained",
        ["--nf4-block-size:", "no layer's weight count divides into blocks of 4094", "such as 64"],
    ),
    "nf4-with-dora": (["finetune", "--base-precision", "nf4", "--dora"], "trained", ["--base-precision:", "not DoRA"]),
    "experiment-loraplus-ratio-0": (
        ["experiment", "rotate:45", "--methods", "lora,loraplus", "--loraplus-ratio", "0"],
        "trained",
        ["--loraplus-ratio:", "above 0"],
    ),
    "loraplus-ratio-1e4": (["finetune", "--loraplus-ratio", "1e4"], "trained", ["--loraplus-ratio:", "lower"]),
}
# Refusals also run as real processes, one per command that has no successful run below: exit status 2 and
# one line, without a traceback, from `python -m lora_core` itself.
END_TO_END_REFUSALS = ("train-batch-size-0", "rank-0", "prove-steps-0", "sweep-unknown-kind")


def _write_pictures(folder: Path, mnist) -> None:
    """Two MNIST test digits as a JPEG and a PNG (in name order: a 7, then a 2), and a file that is no picture."""
    from PIL import Image

    from lora_core.data import denormalize

    folder.mkdir()
    for index, name in ((0, "a-seven.jpg"), (1, "b-two.PNG")):
        pixels = (denormalize(mnist.test_x[index]).reshape(28, 28).numpy() * 255).round().astype("uint8")
        Image.fromarray(pixels).resize((112, 112)).save(folder / name)
    (folder / "readme.txt").write_text("not a picture")


@pytest.fixture(scope="module")
def places(tmp_path_factory, mnist) -> dict[str, str]:
    """A folder of pictures and one without any, for the arguments' {pictures} and {no_pictures}."""
    root = tmp_path_factory.mktemp("cli-pictures")
    pictures, no_pictures = root / "pictures", root / "no-pictures"
    _write_pictures(pictures, mnist)
    no_pictures.mkdir()
    (no_pictures / "notes.txt").write_text("not a picture")
    return {"pictures": str(pictures), "no_pictures": str(no_pictures)}


@pytest.fixture(scope="module")
def folders(trained_artifacts, tmp_path_factory) -> dict[str, Path]:
    """For the runs in this process: a copy of `trained_artifacts` and an empty folder."""
    root = tmp_path_factory.mktemp("cli-in-process")
    shutil.copytree(trained_artifacts, root / "trained")
    (root / "empty").mkdir()
    (root / "out").mkdir()
    return {"trained": root / "trained", "empty": root / "empty", "out": root / "out"}


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path, folders, trained_artifacts):
    """Run `python -m lora_core ARGS` in this process; afterwards check that it wrote nothing into the
    artifacts folders, nor into the default one."""
    unused = tmp_path / "default-artifacts-must-not-be-used"
    monkeypatch.setenv("LORA_ARTIFACTS_DIR", str(unused))
    yield lambda args: run_cli_in_process(capsys, args)
    assert file_bytes(folders["trained"]) == file_bytes(trained_artifacts)
    assert list(folders["empty"].iterdir()) == []
    assert not unused.exists()


@pytest.fixture
def cli_on_copy(capsys, monkeypatch, tmp_path, trained_artifacts):
    """Run the CLI in this process against a private copy of `trained_artifacts` (the copy is `.root`); the
    default artifacts folder must not be touched."""
    root = tmp_path / "artifacts"
    shutil.copytree(trained_artifacts, root)
    monkeypatch.setenv("LORA_ARTIFACTS_DIR", str(tmp_path / "unused"))

    def run(args: list[str]):
        return run_cli_in_process(capsys, [*args, "--artifacts", str(root)])

    run.root = root
    yield run
    assert not (tmp_path / "unused").exists()


@pytest.fixture(scope="module")
def cli_runs(trained_artifacts, tmp_path_factory, places):
    """The real processes, four at a time, against a copy of `trained_artifacts` or an empty folder."""
    root = tmp_path_factory.mktemp("cli")
    folders = {"trained": root / "artifacts", "empty": root / "empty", "writable": root / "writable"}
    for which in ("trained", "writable"):
        shutil.copytree(trained_artifacts, folders[which])
    folders["empty"].mkdir()
    out = root / "out"
    out.mkdir()
    env = {**os.environ, "LORA_ARTIFACTS_DIR": str(root / "default-artifacts-must-not-be-used")}
    jobs = {
        name: [*(a.format(**places) for a in ERROR_CASES[name][0]), "--artifacts", str(folders[ERROR_CASES[name][1]])]
        for name in END_TO_END_REFUSALS
    }
    for command in ("evaluate", "inspect"):
        jobs[command] = [command, "--adapter", "small", "--artifacts", str(folders["trained"])]
        jobs[command] += ["--json", str(out / f"{command}.json")]
    trained = ["--artifacts", str(folders["trained"])]
    jobs["predict-folder"] = ["predict", places["pictures"], *trained, "--json", str(out / "predict-folder.json")]
    jobs["study-overwrite"] = [
        "study",
        *("--name", "small", "--overwrite", "--steps", "3", "--ft-batch-size", "16", "--rank", "2"),
        *("--artifacts", str(folders["writable"]), "--json", str(out / "study-overwrite.json")),
    ]
    results = run_cli_jobs(jobs, env, workers=4, timeout=300)
    return {"results": results, "folders": folders, "out": out, "root": root}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_exits_2_with_one_line(cli, folders, places, case):
    args, which, words = ERROR_CASES[case]
    result = cli([*(a.format(**places) for a in args), "--artifacts", str(folders[which])])
    line = assert_one_line_error(result, words)
    assert ": error:" not in line and "_size" not in line, line  # argparse's prefix, a field's name


@pytest.mark.parametrize("case", END_TO_END_REFUSALS)
def test_a_real_process_refuses_with_one_line(cli_runs, case):
    line = assert_one_line_error(cli_runs["results"][case], ERROR_CASES[case][2])
    assert ": error:" not in line and "_size" not in line, line


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


def test_inspect_prints_the_recorded_base_tensor_hashes(cli_runs, small_sizes):
    result = cli_runs["results"]["inspect"]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "recorded by the fine-tune run on" in out and "Base weights: UNCHANGED" in out
    hash_lines = [line for line in out.splitlines() if line.strip().startswith(("linear1.", "linear2.", "linear3."))]
    assert len(hash_lines) == 6, out
    assert all(re.search(r" unchanged +yes$", line.rstrip()) for line in hash_lines), out
    assert " CHANGED" not in out and " NO" not in out
    assert f"{small_sizes.base_params:,} parameters" in out
    data = json.loads((cli_runs["out"] / "inspect.json").read_text())
    check = data["recorded_check"]
    assert check["status"] == "unchanged" and check["passed"] is True and len(check["tensors"]) == 6
    assert all(t["before"] == t["after"] == t["loaded"] and len(t["before"]) == 64 for t in check["tensors"])
    assert data["parameters"]["base_params"] == small_sizes.base_params
    assert data["parameters"]["lora_params"] == 4 * small_sizes.lora_per_rank
    assert data["adapter_config"]["r"] == 4
    assert set(data["updates"]) == {"linear1", "linear2", "linear3"}
    for update in data["updates"].values():
        assert 1 <= update["rank"] <= 4 and update["frobenius_norm"] > 0
        assert len(update["singular_values"]) == 4 and update["singular_values"][0] > 0


def test_cli_runs_wrote_nothing_into_the_artifacts(cli_runs, trained_artifacts):
    assert file_bytes(cli_runs["folders"]["trained"]) == file_bytes(trained_artifacts)
    assert list(cli_runs["folders"]["empty"].iterdir()) == []
    assert not (cli_runs["root"] / "default-artifacts-must-not-be-used").exists()


def test_evaluate_and_inspect_without_adapter_use_the_saved_one_and_say_so(cli, folders, small_sizes):
    outputs = {}
    for command in ("evaluate", "inspect"):
        out = folders["out"] / f"{command}-default.json"
        result = outputs[command] = cli([command, "--artifacts", str(folders["trained"]), "--json", str(out)])
        assert result.returncode == 0, result.stderr
        first = result.stdout.splitlines()[0]
        assert "'small'" in first and "the only saved adapter" in first, first
        assert "--adapter NAME" in first and "--base-only" in first, first
        data = json.loads(out.read_text())
        assert data["adapter"] == "small"
    assert "LoRA adds 0 " not in outputs["inspect"].stdout
    assert f"LoRA adds {4 * small_sizes.lora_per_rank:,}" in outputs["inspect"].stdout


def test_inspect_base_only(cli, folders):
    out = folders["out"] / "inspect-base-only.json"
    result = cli(["inspect", "--base-only", "--artifacts", str(folders["trained"]), "--json", str(out)])
    assert result.returncode == 0, result.stderr
    assert "--base-only" in result.stdout and "LoRA adds 0 " in result.stdout
    data = json.loads(out.read_text())
    assert "adapter" not in data and data["parameters"]["lora_params"] == 0


def test_predict_reads_every_picture_in_a_folder(cli_runs):
    result = cli_runs["results"]["predict-folder"]
    assert result.returncode == 0, result.stderr
    assert "2 pictures" in result.stdout
    data = json.loads((cli_runs["out"] / "predict-folder.json").read_text())
    predictions = data["predictions"]
    assert [Path(p["image"]).name for p in predictions] == ["a-seven.jpg", "b-two.PNG"]
    assert [p["base"]["prediction"] for p in predictions] == [7, 2]
    assert data["adapter"] == "small" and all("adapted" in p for p in predictions)


def test_predict_reports_a_picture_it_cannot_read_and_reads_the_others(cli, folders, places, tmp_path):
    folder = tmp_path / "pictures"
    shutil.copytree(places["pictures"], folder)
    (folder / "b-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    report = tmp_path / "predict.json"
    done = cli(["predict", str(folder), "--artifacts", str(folders["trained"]), "--json", str(report)])
    assert done.returncode == 0, done.stderr
    (warning,) = done.stderr.strip().splitlines()
    assert warning.startswith(f"warning: {folder / 'b-broken.png'}: not a readable image (") and "skipped" in warning
    predictions = json.loads(report.read_text())["predictions"]
    assert [Path(p["image"]).name for p in predictions] == ["a-seven.jpg", "b-broken.png", "b-two.PNG"]
    assert [p.get("base", {}).get("prediction") for p in predictions] == [7, None, 2]
    assert "not a readable image" in predictions[1]["error"]
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    (nothing / "x.png").write_bytes(b"no")
    (nothing / "y.jpg").write_bytes(b"no")
    done = cli(["predict", str(nothing), "--artifacts", str(folders["trained"])])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: none of the 2 pictures could be read; the first: ")


def test_study_warns_about_train_options_while_the_base_is_reused(cli, folders):
    # train options while the saved base is reused: a warning, then the refusal of the existing name
    args = ["study", "--train-batch-size", "64", "--train-seed", "3", "--name", "small"]
    result = cli([*args, "--artifacts", str(folders["trained"])])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("warning: --train-batch-size, --train-seed have no effect"), lines
    assert "--retrain" in lines[0]
    assert lines[-1].startswith("error: ") and "--overwrite" in lines[-1], lines


def test_study_overwrite_replaces_the_adapter(cli_runs, trained_artifacts):
    result = cli_runs["results"]["study-overwrite"]
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning" not in result.stderr
    data = json.loads((cli_runs["out"] / "study-overwrite.json").read_text())
    assert data["adapter"]["name"] == "small" and data["adapter"]["rank"] == 2
    assert data["base_weights_unchanged"] is True
    writable = cli_runs["folders"]["writable"]
    assert json.loads((writable / "adapters" / "small" / "adapter_config.json").read_text())["r"] == 2
    assert file_bytes(writable / "base") == file_bytes(trained_artifacts / "base")  # reused, not retrained


def test_output_closed_early_stops_quietly(trained_artifacts, tmp_path):
    """`python -m lora_core evaluate | head -1`: once the reader is gone, the command exits with status 1 and
    no BrokenPipeError traceback (the pipe's reading end is closed before it starts, so its first line fails)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "lora_core", "evaluate", "--base-only", "--artifacts", str(trained_artifacts)],
            cwd=REPO,
            env={**os.environ, "LORA_ARTIFACTS_DIR": str(tmp_path / "unused")},
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr


def test_precision_defaults_come_from_each_commands_settings():
    from lora_core.cli import build_parser
    from lora_core.lab.experiment_settings import ExperimentSettings
    from lora_core.train import FinetuneConfig, TrainConfig

    parser = build_parser()
    defaults = {
        "train": TrainConfig().precision,
        "finetune": FinetuneConfig().precision,
        "study": TrainConfig().precision,
        "experiment": ExperimentSettings().precision,
        "sweep": ExperimentSettings().precision,
    }
    required = {"experiment": ["invert"], "sweep": ["rank"]}
    for command, default in defaults.items():
        assert parser.parse_args([command, *required.get(command, [])]).precision == default, command
    assert FinetuneConfig().precision == TrainConfig().precision  # study's one --precision sets both


def test_damaged_adapter_weights_stop_every_command_that_reads_them(trained_artifacts, tmp_path, places, capsys):
    root = tmp_path / "art"
    shutil.copytree(trained_artifacts, root)
    weights = root / "adapters" / "small" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 32] = bytes(range(32))  # still parses, with other numbers
    weights.write_bytes(bytes(data))
    picture = str(sorted(Path(places["pictures"]).iterdir())[0])
    damaged = (
        f"{weights} does not match the sha256 recorded in metrics.json: the file was damaged or changed after it was "
        "saved; fine-tune the adapter again"
    )
    for command in (["evaluate"], ["inspect"], ["predict", picture]):
        named = run_cli_in_process(capsys, [*command, "--adapter", "small", "--artifacts", str(root)])
        assert (named.returncode, named.stderr.strip()) == (2, f"error: {damaged}"), command
        chosen = run_cli_in_process(capsys, [*command, "--artifacts", str(root)])  # the default: skipped, and why
        assert chosen.returncode == 0, command
        assert chosen.stdout.startswith(
            f"No saved adapter can be used with this base model (small: {damaged}); showing the base model alone.\n"
        ), (command, chosen.stdout)


def test_a_study_without_a_name_keeps_a_saved_adapter_and_says_the_new_name(cli_on_copy, tmp_path) -> None:
    """The CLI's study follows the dashboard's rule: the adapter of the weakest digit is saved under a fresh
    name when its usual one is taken, and the run says which; --overwrite replaces it instead."""
    root = cli_on_copy.root
    args = ["study", "--steps", "2", "--ft-batch-size", "16", "--rank", "2"]
    first = cli_on_copy([*args, "--json", str(tmp_path / "first.json")])
    assert first.returncode == 0, first.stderr
    usual = json.loads((tmp_path / "first.json").read_text())["adapter"]["name"]
    saved = (root / "adapters" / usual / "adapter_model.safetensors").read_bytes()
    second = cli_on_copy([*args, "--json", str(tmp_path / "second.json")])
    assert second.returncode == 0, second.stderr
    assert json.loads((tmp_path / "second.json").read_text())["adapter"]["name"] == f"{usual}-2"
    assert f"An adapter called '{usual}' is saved already: this one is saved as '{usual}-2'" in second.stdout
    assert (root / "adapters" / usual / "adapter_model.safetensors").read_bytes() == saved
    third = cli_on_copy([*args, "--overwrite", "--json", str(tmp_path / "third.json")])
    assert third.returncode == 0, third.stderr
    assert json.loads((tmp_path / "third.json").read_text())["adapter"]["name"] == usual
    assert not (root / "adapters" / f"{usual}-3").exists()


def test_finetune_with_loraplus_saves_a_plain_lora_adapter_that_records_the_ratio(cli_on_copy) -> None:
    root = cli_on_copy.root
    args = ["finetune", "--digit", "3", "--steps", "3", "--ft-batch-size", "16", "--rank", "2", "--name", "plus"]
    done = cli_on_copy([*args, "--loraplus-ratio", "16"])
    assert done.returncode == 0, done.stderr
    metrics = json.loads((root / "adapters" / "plus" / "metrics.json").read_text())
    assert metrics["finetune"]["loraplus_lr_ratio"] == 16.0
    peft = json.loads((root / "adapters" / "plus" / "adapter_config.json").read_text())
    assert peft["peft_type"] == "LORA" and "loraplus" not in json.dumps(peft)  # on disk, plain LoRA


def test_an_experiment_says_each_adapter_method_switched_off_and_where_each_adapter_went(cli_on_copy) -> None:
    root = cli_on_copy.root
    methods = "loraplus,dora,pissa,vera,qlora"
    args = ["experiment", "invert", "--methods", methods, "--steps", "2", "--batch-size", "16"]
    done = cli_on_copy([*args, "--rank", "2", "--json", str(cli_on_copy.root / "out.json")])
    assert done.returncode == 0, done.stderr
    for name in ("LoRA+", "DoRA", "PiSSA", "VeRA", "QLoRA"):
        assert re.search(
            rf"^{re.escape(name)} adapter switched off: .*the base model's logits exactly: yes$", done.stdout, re.M
        )
    for adapter in ("invert-loraplus", "invert-dora", "invert-pissa", "invert-vera", "invert-qlora"):
        assert f"Adapter '{adapter}' saved to {root / 'adapters' / adapter}" in done.stdout
    methods = {m["method"]: m for m in json.loads((root / "out.json").read_text())["methods"]}
    assert methods["pissa"]["trainable_params"] == methods["loraplus"]["trainable_params"]  # rank 2 trained
    assert methods["pissa"]["stored_bytes"] > methods["loraplus"]["stored_bytes"]  # saved at rank 4 on W
    assert methods["vera"]["trainable_params"] == 3 * 256 + 256 + 256 + 10  # d (rank 256) and b per layer
    assert not re.search(r"^LoRA adapter switched off", done.stdout, re.M)  # plain LoRA did not run
    nf4 = methods["qlora"]["quantized_base"]  # QLoRA's base alone: its own accuracy and its bytes, in a sentence
    assert nf4["block_size"] == 64 and nf4["bytes"] <= nf4["fp32_bytes"] / 5 and nf4["fp32_layers"] == {}
    assert (
        f"QLoRA's NF4 base alone (block 64, the adapter at weight 0): the task {nf4['task_accuracy']:.2%}"
        in done.stdout
    )
    saved = json.loads((root / "adapters" / "invert-qlora" / "metrics.json").read_text())
    assert saved["quantized_base"]["codes_sha256"]["before"] == saved["quantized_base"]["codes_sha256"]["after"]
