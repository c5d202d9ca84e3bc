"""Rank capping (PEFT's rank_pattern) and the rank and replay sweeps, on small settings with real training."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch
from core_helpers import (
    assert_refused_writing_nothing,
    file_bytes,
    first_test_images,
    random_mlp,
    randomize_b,
    run_cli_jobs,
)

from lora_core.cli.render import sweep_report
from lora_core.errors import ConfigError, RunStopped
from lora_core.lab import sweeps
from lora_core.lab.experiment_settings import ExperimentSettings
from lora_core.lab.experiments import list_experiments
from lora_core.lab.sweeps import (
    SweepResult,
    list_sweeps,
    load_sweep,
    smallest_within_best,
    sweep_rank,
    sweep_replay,
)
from lora_core.lab.tasks import parse_task
from lora_core.lora import LoraConfig, LoraModel
from lora_core.params import parameter_table
from lora_core.store.artifacts import ADAPTER_CONFIG, ArtifactStore

SETTINGS = ExperimentSettings(steps=3, batch_size=32, seed=0, device="cpu")
LORA_PARAMS_PER_RANK = 6794  # (784 + 1000) + (1000 + 2000) + (2000 + 10)


# --- capping ---------------------------------------------------------------------------------------------
def test_a_rank_above_a_layers_limit_is_capped_there_keeping_the_scale():
    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("a", LoraConfig(r=16, alpha=32), seed=0)
    config = lora_model.adapter_config("a")
    assert dict(config.rank_pattern) == {"linear3": 10} and dict(config.alpha_pattern) == {"linear3": 20.0}
    layers = lora_model.lora_layers()
    assert layers["linear1"].lora_A["a"].weight.shape == (16, 784)
    assert layers["linear3"].lora_A["a"].weight.shape == (10, 2000)
    assert layers["linear3"].lora_B["a"].weight.shape == (10, 10)
    assert {name: layer.scaling["a"] for name, layer in layers.items()} == {f"linear{i}": 2.0 for i in (1, 2, 3)}
    trainable = sum(p.numel() for p in lora_model.mark_only_lora_trainable("a"))
    assert trainable == 16 * (784 + 1000 + 1000 + 2000) + 10 * (2000 + 10) != 16 * LORA_PARAMS_PER_RANK
    assert parameter_table(lora_model, LoraConfig(r=16)).lora_params == trainable
    peft_json = config.to_peft()
    assert peft_json["r"] == 16 and peft_json["rank_pattern"] == {"linear3": 10}
    assert peft_json["alpha_pattern"] == {"linear3": 20.0}
    assert LoraConfig.from_peft(json.loads(json.dumps(peft_json))) == config
    # rsLoRA keeps alpha / sqrt(r) on the capped layer
    lora_model.add_adapter("rs", LoraConfig(r=40, alpha=8, use_rslora=True, target_modules=("linear3",)))
    assert layers["linear3"].scaling["rs"] == pytest.approx(8 / 40**0.5)


def test_an_adapter_that_needs_no_cap_is_written_as_before():
    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("a", LoraConfig(r=10), seed=0)
    config = lora_model.adapter_config("a")
    assert config == LoraConfig(r=10) and config.rank_pattern == () and config.alpha_pattern == ()
    assert "rank_pattern" not in config.to_peft() and "alpha_pattern" not in config.to_peft()
    assert "rank_pattern" not in config.to_dict()
    assert LoraConfig(r=10).capped_for(lora_model.model) == LoraConfig(r=10)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "8", True])
def test_ranks_below_one_or_not_whole_are_still_refused(bad):
    with pytest.raises(ConfigError) as info:
        LoraModel(random_mlp()).add_adapter("a", LoraConfig(r=bad))
    assert info.value.field == "rank"


@pytest.mark.parametrize(
    "config",
    [LoraConfig(r=16, alpha=32), LoraConfig(r=64, alpha=5, target_modules=("linear2", "linear3"), init="gaussian")],
    ids=["r16-all", "r64-gaussian"],
)
def test_peft_loads_a_capped_adapter_with_the_same_logits(peft, tmp_path, config):
    store = ArtifactStore(tmp_path)
    meta = store.save_base(random_mlp(1), {})
    ours = LoraModel(store.load_base().model)
    ours.add_adapter("x", config, seed=0)
    randomize_b(ours, "x", std=0.2)
    folder = store.save_adapter(ours, "x", {}, meta["sha256"])
    saved = json.loads((folder / ADAPTER_CONFIG).read_text())
    assert saved["rank_pattern"] == {"linear3": 10}
    x = torch.randn(16, 784, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(x)
    peft_model = peft.PeftModel.from_pretrained(store.load_base().model, str(folder))
    with torch.no_grad():
        torch.testing.assert_close(peft_model(x), expected, atol=1e-5, rtol=0)
    layer = peft_model.base_model.model.linear3
    assert layer.lora_A["default"].weight.shape == (10, 2000)
    assert layer.scaling["default"] == pytest.approx(config.scale)
    # and our own loader reads it back to the same logits
    again = LoraModel(store.load_base().model)
    store.load_adapter(again, "x", meta["sha256"])
    again.set_adapter("x")
    with torch.no_grad():
        assert torch.equal(again(x), expected)


# --- reading the points ----------------------------------------------------------------------------------
def test_smallest_within_half_a_point_of_the_best():
    ranks = [1, 2, 4, 8, 16]
    assert smallest_within_best(ranks, [0.90, 0.95, 0.972, 0.976, 0.977]) == 4  # 0.5 points below 97.7
    assert smallest_within_best(ranks, [0.90, 0.95, 0.971, 0.976, 0.977]) == 8  # 0.6 points below
    assert smallest_within_best(ranks, [0.99, 0.95, 0.97, 0.97, 0.98]) == 1  # the best itself is the smallest
    assert smallest_within_best([3], [0.5]) == 3
    with pytest.raises(ValueError):
        smallest_within_best([], [])


def assert_reads_rank_points(reading: str, points: list, marked: float) -> None:
    """The rank sweep's sentence states the best accuracy and its rank, and the marked rank with its figures."""
    best = max(points, key=lambda p: p.task_accuracy)
    chosen = next(p for p in points if p.value == marked)
    assert reading.startswith(f"The best task accuracy is {100 * best.task_accuracy:.2f}% at rank {best.value:g}")
    if chosen is best:
        expected = f"rank {best.value:g} ({best.trainable_params:,} trainable parameters); "
    else:
        expected = (
            f"; rank {marked:g} is the smallest within 0.5 points of it ({100 * chosen.task_accuracy:.2f}% with "
            f"{chosen.trainable_params:,} trainable parameters, {chosen.trainable_params / best.trainable_params:.0%}"
        )
    assert expected in reading, (expected, reading)


# --- the sweeps on small settings ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tiny_mnist):
    return first_test_images(tiny_mnist)


@pytest.fixture(scope="module")
def rank_sweep(trained_artifacts, tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep") / "artifacts"
    shutil.copytree(trained_artifacts, root)
    store = ArtifactStore(root)
    reports = []
    result = sweep_rank(store, tiny, parse_task("rotate:30"), (16, 1, 2), SETTINGS, progress=reports.append)
    return store, result, reports


def test_rank_sweep_points(rank_sweep, small_sizes):
    store, result, reports = rank_sweep
    assert result.kind == "rank" and result.values == [1, 2, 16]
    one, two, sixteen = result.points
    per_rank = small_sizes.lora_per_rank
    assert one.trainable_params == per_rank and two.trainable_params == 2 * per_rank
    assert sixteen.layer_ranks == {"linear1": 16, "linear2": 16, "linear3": 10}
    assert result.settings["replay_used"] is None  # rotate:30 trains on every digit: nothing is replayed
    h1, h2 = small_sizes.hidden
    assert sixteen.trainable_params == 16 * (784 + h1 + h1 + h2) + 10 * (h2 + 10)
    assert one.stored_bytes < two.stored_bytes < sixteen.stored_bytes
    assert 4 * sixteen.trainable_params < sixteen.stored_bytes < 4 * sixteen.trainable_params + 8192
    for p in result.points:
        assert 0 <= p.task_accuracy <= 1 and p.seconds > 0 and p.adapter_off_equals_base is True
        assert p.task_gain == pytest.approx(p.task_accuracy - result.base["task_accuracy"])
    assert result.marked == smallest_within_best(result.values, [p.task_accuracy for p in result.points])
    assert_reads_rank_points(result.reading, result.points, result.marked)
    # the same points with other accuracies read otherwise: the best at rank 16 and marked there, or marked below it
    task = parse_task("rotate:30")
    readings = [result.reading]
    for accuracies, marked in (((0.5, 0.6, 0.9), 16), ((0.899, 0.6, 0.9), 1)):
        others = [dataclasses.replace(p, task_accuracy=a) for p, a in zip(result.points, accuracies, strict=True)]
        got_marked, reading = sweeps._mark("rank", others, SETTINGS, task)
        assert got_marked == marked
        assert_reads_rank_points(reading, others, marked)
        readings.append(reading)
    assert len(set(readings)) == 3, readings
    assert {r.phase for r in reports} >= {"rank 1 (1/3)", "rank 2 (2/3)", "rank 16 (3/3)"}
    # progress counts the whole sweep: 3 points of 3 steps are steps 1..9 of 9, the ETA covers the points to come
    swept = [r for r in reports if r.phase.startswith("rank ")]
    assert {r.total_steps for r in swept} == {9}
    assert [r.step for r in swept] == list(range(1, 10))
    first = swept[0]
    assert first.eta_s >= 2 * first.elapsed_s  # two more points to come, at least as long as this one so far
    assert store.adapter_names() == ["small"]  # the points' adapters were dropped, not saved


def test_rank_sweep_is_saved_and_read_back(rank_sweep):
    store, result, _ = rank_sweep
    assert list_sweeps(store) == [Path(result.path)] == list_sweeps(store, "rank")
    assert list_sweeps(store, "replay") == [] and list_experiments(store) == []  # experiments skip sweeps
    saved = json.loads(Path(result.path).read_text())
    assert saved["kind"] == "sweep-rank" and saved["format"] == "lora_core.sweep.v1"
    assert Path(result.path).parent == store.root / "experiments"
    assert load_sweep(result.path).to_dict() == saved == result.to_dict()
    assert isinstance(load_sweep(result.path), SweepResult)


def test_replay_sweep_sets_gain_against_forgetting(artifacts_copy, tiny):
    store = ArtifactStore(artifacts_copy)
    result = sweep_replay(store, tiny, parse_task("digits:3"), (0.0, 0.5), dataclasses.replace(SETTINGS, rank=2))
    assert result.values == [0.0, 0.5] and result.marked == 0.5 == result.settings["default_replay"]
    for p in result.points:
        assert p.kept_change == pytest.approx(p.kept_accuracy - result.base["kept_accuracy"])
        assert p.task_accuracy == p.plain_per_digit[3]
    assert "replay 0" in result.reading and "default 0.5" in result.reading
    balanced = max(result.points, key=lambda p: p.task_gain + p.kept_change)
    assert f"largest gain plus change is at replay {balanced.value:g}" in result.reading
    assert load_sweep(result.path).to_dict() == result.to_dict()


def test_a_stopped_sweep_saves_nothing(artifacts_copy, tiny):
    store = ArtifactStore(artifacts_copy)
    before = file_bytes(artifacts_copy)
    stop = threading.Event()

    def stop_in_second_point(p):
        if p.phase.startswith("rank 2"):
            stop.set()

    with pytest.raises(RunStopped):
        sweep_rank(store, tiny, parse_task("weakest"), (1, 2, 4), SETTINGS, progress=stop_in_second_point, stop=stop)
    assert file_bytes(artifacts_copy) == before and list_sweeps(store) == []


def test_bad_sweeps_are_refused_before_any_work(artifacts_copy, tiny):
    store = ArtifactStore(artifacts_copy)
    cases = [((), "at least one"), ((0, 2), "whole numbers"), ((2, 2), "twice"), ((1.5,), "whole")]
    cases += [(tuple(range(1, 22)), "21 values is more than the 20 a sweep runs")]
    for values, words in cases:
        with pytest.raises(ConfigError, match=words) as info:
            sweep_rank(store, tiny, parse_task("weakest"), values, SETTINGS)
        assert info.value.field == "values"
    with pytest.raises(ConfigError, match="0 to below 1"):
        sweep_replay(store, tiny, parse_task("weakest"), (0.5, 1.0), SETTINGS)
    with pytest.raises(ConfigError, match="digit tasks") as info:
        sweep_replay(store, tiny, parse_task("invert"), (0.5,), SETTINGS)
    assert info.value.field == "task"
    assert list_sweeps(store) == []


# --- the command -----------------------------------------------------------------------------------------
CLI_ERRORS = {
    "rank-0": (["sweep", "rank", "--values", "0,2"], ["--values:", "whole numbers"]),
    "1000-ranks": (["sweep", "rank", "--values", ",".join(map(str, range(1, 1001)))], ["--values:", "1000 values"]),
    "not-a-number": (["sweep", "rank", "--values", "1", "x"], ["--values:", "'x'"]),
    "replay-1": (["sweep", "replay", "--values", "0,1"], ["--values:", "below 1"]),
    "replay-domain": (["sweep", "replay", "--task", "invert"], ["--task:", "digit tasks"]),
    "rank-replay-domain": (["sweep", "rank", "--task", "thick", "--replay", "0.3"], ["--replay:", "digit tasks"]),
    "bad-task": (["sweep", "rank", "--task", "rot:4"], ["--task:", "unknown task"]),
    "bad-kind": (["sweep", "alpha"], ["KIND", "'alpha'"]),
    "steps-0": (["sweep", "rank", "--steps", "0"], ["--steps:", "0"]),
}


@pytest.fixture(scope="module")
def cli_run(trained_artifacts, tmp_path_factory):
    """One real `python -m lora_core sweep rank` process on a copy of `trained_artifacts`."""
    root = tmp_path_factory.mktemp("cli-sweep")
    folder = root / "artifacts"
    shutil.copytree(trained_artifacts, folder)
    env = {**os.environ, "LORA_ARTIFACTS_DIR": str(root / "default-artifacts-must-not-be-used")}
    run_args = ["sweep", "rank", "--values", "1", "16", "--steps", "2", "--batch-size", "16", "--device", "cpu"]
    jobs = {"run": [*run_args, "--artifacts", str(folder), "--json", str(root / "out.json")]}
    return {"result": run_cli_jobs(jobs, env, workers=1, timeout=600)["run"], "root": root, "folder": folder}


@pytest.mark.parametrize("case", list(CLI_ERRORS))
def test_sweep_command_bad_input_exits_2_with_one_line(case, trained_artifacts, tmp_path, capsys, monkeypatch):
    args, words = CLI_ERRORS[case]
    assert_refused_writing_nothing(capsys, monkeypatch, tmp_path, trained_artifacts, args, words)


@pytest.mark.timeout(900)
def test_sweep_command_prints_a_table_and_saves_json(cli_run):
    result = cli_run["result"]
    print(result.stdout)  # the table, for whoever reads the log
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "Rank sweep on weakest" in out and "capped: linear3 10" in out and "smallest within 0.5 pt" in out
    data = json.loads((cli_run["root"] / "out.json").read_text())
    assert data["kind"] == "sweep-rank" and [p["value"] for p in data["points"]] == [1, 16]
    saved = list_sweeps(ArtifactStore(cli_run["folder"]))
    assert len(saved) == 1 and json.loads(saved[0].read_text()) == data
    assert not (cli_run["root"] / "default-artifacts-must-not-be-used").exists()


def test_a_rank_sweep_of_several_methods_measures_each_at_every_rank(artifacts_copy, tiny, capsys):
    """LoRA, DoRA and VeRA at ranks 1 and 4: VeRA's rank is its shared pair's (its trained count grows by one value
    per layer per unit of rank), each method is read in its own sentence, and the file reads back; the reference
    methods, which train no adapter, are refused."""
    store = ArtifactStore(artifacts_copy)
    settings = dataclasses.replace(SETTINGS, methods=("lora", "dora", "vera"))
    result = sweep_rank(store, tiny, parse_task("weakest"), (1, 4), settings)
    assert [(p.method, p.value) for p in result.points] == [(m, v) for v in (1, 4) for m in ("lora", "dora", "vera")]
    assert result.methods == ["lora", "dora", "vera"]
    vera = result.points_of("vera")
    assert vera[1].trainable_params - vera[0].trainable_params == 3 * 3  # d grows by one per layer per rank
    assert vera[0].layer_ranks == {"linear1": 1, "linear2": 1, "linear3": 1}
    dora, lora = result.point(4, "dora"), result.point(4, "lora")
    assert dora.trainable_params == lora.trainable_params + 256 + 256 + 10  # a magnitude per output row
    assert all(f"{name}: " in result.reading for name in ("LoRA", "DoRA", "VeRA"))
    assert load_sweep(result.path).to_dict() == result.to_dict()
    sweep_report(load_sweep(result.path))
    table = capsys.readouterr().out
    print(table)
    assert "method" in table.splitlines()[3] and table.count("VeRA") >= 2
    references = sweep_rank(store, tiny, parse_task("weakest"), (1,), dataclasses.replace(SETTINGS, methods=("full",)))
    assert references.methods == ["lora"]  # full fine-tuning trains no adapter: a sweep of it is LoRA's
