"""Methods side by side on small settings: real training on a MNIST subset, a few steps."""

from __future__ import annotations

import copy
import dataclasses
import json
from datetime import datetime
from pathlib import Path

import pytest
import torch
from core_helpers import file_bytes, first_test_images
from safetensors.torch import load_file

from lora_core import train
from lora_core.data import _TrainImages
from lora_core.errors import AdapterExistsError, ArtifactError, ConfigError
from lora_core.evaluate import evaluate, predict
from lora_core.lab import run as lab_run
from lora_core.lab.experiment_settings import ExperimentSettings
from lora_core.lab.experiments import (
    ExperimentResult,
    MethodResult,
    list_experiments,
    load_experiment,
    run_experiment,
    run_method,
    train_parameters,
)
from lora_core.lab.study import train_and_save_base
from lora_core.lab.task_context import prepare_task
from lora_core.lab.tasks import parse_task
from lora_core.model import MLP
from lora_core.store import results
from lora_core.store.artifacts import ADAPTER_WEIGHTS, ArtifactStore
from lora_core.store.bases import base_store
from lora_core.store.results import save_result
from lora_core.train import TrainConfig

SETTINGS = ExperimentSettings(steps=4, batch_size=32, rank=2, seed=0, device="cpu")
SMALL_BASE = TrainConfig(epochs=1, batch_size=128, lr=2e-3, seed=0, device="cpu", hidden=(256, 256))
# rotate:45's methods run on a full-size base: the memory each method adds is then well above the resident
# set's noise (about 1 MB), and the counts are the lab's own (2,807,010 and 6,794 per unit of rank)
FULL_SIZE_BASE = TrainConfig(epochs=1, batch_size=128, lr=2e-3, seed=0, device="cpu")
LORA_PARAMS_PER_RANK = 6794  # (784 + 1000) + (1000 + 2000) + (2000 + 10) for A and B of every layer


@pytest.fixture(scope="module")
def tiny_mnist(tiny_mnist):
    """tests/core's tiny_mnist (2,000 training images) with the first 2,000 test images: every method
    is evaluated several times, and the machine runs other tests beside these."""
    return first_test_images(tiny_mnist)


@pytest.fixture(scope="module")
def rotate_recorded(tiny_mnist, tmp_path_factory):
    """rotate:45 with all three methods on a full-size base trained on tiny_mnist, and the batches each training
    loop drew: {phase: [one list of (inputs, labels) per loop run]}; LoRA's phase is "finetune"."""
    root = tmp_path_factory.mktemp("experiment") / "artifacts"
    store = ArtifactStore(root)
    train_and_save_base(store, tiny_mnist, FULL_SIZE_BASE)
    base_before = file_bytes(root / "base")
    drawn: dict[str, list[list[tuple[torch.Tensor, torch.Tensor]]]] = {}
    phases: list[str] = []
    real_optimise = train.optimise

    def recording_optimise(model, params, next_batch, optimizer, lr_schedule, steps, precision, phase, *rest):
        batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        drawn.setdefault(phase, []).append(batches)

        def next_recorded_batch():
            x, y = next_batch()
            batches.append((x.detach().clone(), y.detach().clone()))
            return x, y

        return real_optimise(model, params, next_recorded_batch, optimizer, lr_schedule, steps, precision, phase, *rest)

    # every method's loop (train_parameters) hands its sampler to train.optimise: the one place all batches pass
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "optimise", recording_optimise)
        result = run_experiment(
            store, tiny_mnist, parse_task("rotate:45"), SETTINGS, progress=lambda p: phases.append(p.phase)
        )
    return store, result, base_before, drawn, phases


@pytest.fixture(scope="module")
def rotate_run(rotate_recorded):
    return rotate_recorded[:3]


def test_progress_names_each_method_as_the_tables_do(rotate_recorded):
    phases = rotate_recorded[4]
    assert {"LoRA", "full fine-tuning", "last layer only"} <= set(phases), sorted(set(phases))
    assert "head" not in phases


def test_methods_report_their_parameters_and_bytes(rotate_run):
    _, result, _ = rotate_run
    lora, full, head = (result.method(m) for m in ("lora", "full", "head"))
    assert lora.trainable_params == 2 * LORA_PARAMS_PER_RANK
    assert full.trainable_params == 2_807_010
    assert head.trainable_params == 20_010
    # what must be stored per task: float32 tensors plus a small safetensors header
    assert 4 * 2_807_010 < full.stored_bytes < 4 * 2_807_010 + 4096
    assert 4 * 20_010 < head.stored_bytes < 4 * 20_010 + 4096
    assert 4 * lora.trainable_params < lora.stored_bytes < 4 * lora.trainable_params + 8192
    assert lora.train_state_bytes == 16 * lora.trainable_params
    for m in (lora, full, head):
        assert m.seconds > 0 and m.wall_seconds >= m.seconds and m.final_loss is not None
        assert 0.0 <= m.task_accuracy <= 1.0 and 0.0 <= m.plain_accuracy <= 1.0
        assert m.memory_measure


def resident_peak(method: MethodResult) -> int:
    """The method's measured peak, as resident memory: the only measure these checks can read on the CPU (the
    getrusage fallback stays 0 under the process's earlier peak). Skipped, visibly, where the system cannot
    reset its resident high-water mark."""
    if not lab_run._reset_high_water_mark():
        pytest.skip("no resettable resident high-water mark (/proc/self/clear_refs) on this system")
    assert method.memory_measure.startswith("peak resident"), method.memory_measure
    return method.peak_memory_bytes


def test_full_fine_tuning_peak_memory_holds_its_optimizer(rotate_run):
    # gradients and Adam's moments of every weight are new memory
    assert resident_peak(rotate_run[1].method("full")) > 2 * 4 * 2_807_010


def test_last_layer_peak_memory_holds_no_copy_of_the_frozen_layers(rotate_run):
    # the frozen layers are not new memory for "head"
    assert 0 < resident_peak(rotate_run[1].method("head")) < 4 * 2_807_010


def test_lora_adapter_off_is_the_base_exactly(rotate_run, tiny_mnist):
    store, result, base_before = rotate_run
    lora = result.method("lora")
    assert lora.adapter_off_equals_base is True
    assert lora.adapter_off_plain == result.base["plain"]
    assert file_bytes(store.root / "base") == base_before  # the main base model untouched


def test_the_base_figures_are_the_base_on_the_rotated_test_set(rotate_run, tiny_mnist):
    store, result, _ = rotate_run
    base = store.load_base("cpu").model
    rotated = parse_task("rotate:45").apply(tiny_mnist)
    assert result.base["task"]["accuracy"] == evaluate(base, rotated.test_x, rotated.test_y).accuracy
    assert result.base["plain"]["accuracy"] == evaluate(base, tiny_mnist.test_x, tiny_mnist.test_y).accuracy
    assert result.base["task_accuracy"] < result.base["plain_accuracy"] - 0.2  # rotation hurts the base
    assert result.method("full").task_accuracy > result.base["task_accuracy"]  # and training helps


def test_the_adapter_is_a_normal_adapter_and_the_result_is_saved(rotate_run):
    store, result, _ = rotate_run
    lora = result.method("lora")
    assert lora.adapter == "rotate-45"
    record = store.read_adapter("rotate-45")
    assert record.metrics["task"]["spec"] == "rotate:45"
    assert record.base_sha256 == result.base["sha256"]
    assert record.config.r == 2
    assert [p.name for p in list_experiments(store)] == [result.path.rsplit("/", 1)[-1]]
    saved = json.loads(Path(result.path).read_text())
    assert saved["format"] == "lora_core.experiment.v1" and saved["task"]["spec"] == "rotate:45"
    assert saved["settings"]["replay_used"] is None  # a domain task trains on every digit: nothing is replayed
    assert [m["method"] for m in saved["methods"]] == ["lora", "full", "head"]
    assert load_experiment(result.path).to_dict() == saved == result.to_dict()


def test_results_saved_in_one_second_are_all_kept_and_broken_files_are_named(rotate_run, tmp_path, monkeypatch):
    """save_result and load_result, shared by experiments and sweeps."""
    _, result, _ = rotate_run

    class OneSecond(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 2, 3, 4, 5, tzinfo=tz)

    monkeypatch.setattr(results, "datetime", OneSecond)
    store = ArtifactStore(tmp_path / "artifacts")
    copies = [ExperimentResult.from_dict(result.to_dict()) for _ in range(3)]
    paths = [save_result(store, "rotate-45", c) for c in copies]
    assert [p.name for p in paths] == [f"rotate-45-20260102T030405Z{n}.json" for n in ("", "-2", "-3")]
    assert [Path(c.path) for c in copies] == paths
    assert set(list_experiments(store)) == set(paths)
    assert all(load_experiment(p).to_dict() == c.to_dict() for p, c in zip(paths, copies, strict=True))
    bad = {
        "not-json.json": "{",
        "a-list.json": "[]",
        "incomplete.json": '{"format": "lora_core.experiment.v1"}',
        "a-sweep.json": '{"format": "lora_core.sweep.v1"}',
    }
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ArtifactError, match="not-json.json is not valid JSON"):
        load_experiment(tmp_path / "not-json.json")
    with pytest.raises(ArtifactError, match="a-list.json should hold a JSON object"):
        load_experiment(tmp_path / "a-list.json")
    with pytest.raises(ArtifactError, match="incomplete.json is not a readable experiment result: created missing"):
        load_experiment(tmp_path / "incomplete.json")
    wrong_format = "a-sweep.json is not a saved experiment result of format .lora_core.experiment.v1. .found"
    with pytest.raises(ArtifactError, match=wrong_format):
        load_experiment(tmp_path / "a-sweep.json")


def test_every_method_sees_the_same_batches(rotate_recorded):
    """LoRA, full fine-tuning and the last layer train on the same batches, in the same order, drawn from the
    task's (rotated) training images: what each method's own loop drew during the experiment."""
    _, _, _, drawn, _ = rotate_recorded
    # the last run of each phase is the method's measured one (the warm-up's LoRA run comes first)
    lora, full, head = (drawn[phase][-1] for phase in ("finetune", "full", "head"))
    assert len(lora) == SETTINGS.steps
    for step, ((lx, ly), (fx, fy), (hx, hy)) in enumerate(zip(lora, full, head, strict=True), 1):
        assert torch.equal(lx, fx) and torch.equal(ly, fy), f"full fine-tuning drew another batch at step {step}"
        assert torch.equal(lx, hx) and torch.equal(ly, hy), f"the last layer drew another batch at step {step}"
    assert not torch.equal(lora[0][0], lora[1][0])  # a new batch every step


@pytest.mark.parametrize("method", ["full", "head"])
def test_copies_train_on_uint8_pixels_bit_identically_to_normalised_floats(
    trained_artifacts, tiny_mnist, monkeypatch, method
):
    """The full and head copies train on the uint8 pixels normalised batch by batch (no 188 MB float copy
    of the training set): the same losses and weights, to the bit, as the same batches of pre-normalised floats
    (what the loop read before it shared lora_core.train's)."""
    base = ArtifactStore(trained_artifacts).load_base("cpu").model
    config = SETTINGS.finetune_config((3, 5), method)
    floats = dataclasses.replace(tiny_mnist, train_x=tiny_mnist.train_x)
    assert tiny_mnist.train_images.dtype == torch.uint8 and floats.train_images.dtype == torch.float32
    runs = []
    for data in (floats, tiny_mnist):
        if data is tiny_mnist:  # reading train_x would build the whole float copy
            monkeypatch.setattr(_TrainImages, "__get__", lambda *_: pytest.fail("train_x was read"))
        model = copy.deepcopy(base)
        for name, p in model.named_parameters():
            p.requires_grad_(method == "full" or name.startswith("linear3."))
        params = [p for p in model.parameters() if p.requires_grad]
        runs.append((train_parameters(model, params, data, config, phase=method).losses, model.state_dict()))
    (float_losses, float_weights), (pixel_losses, pixel_weights) = runs
    assert pixel_losses == float_losses and len(pixel_losses) == SETTINGS.steps
    assert all(torch.equal(pixel_weights[k], float_weights[k]) for k in float_weights)
    assert not torch.equal(pixel_weights["linear3.weight"], base.linear3.weight)


def test_head_trains_only_the_last_layer(trained_artifacts, tiny_mnist):
    base = ArtifactStore(trained_artifacts).load_base("cpu").model
    model = copy.deepcopy(base)
    params = list(model.linear3.parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    train_parameters(model, params, tiny_mnist, SETTINGS.finetune_config((3,), "head"), phase="head")
    for name in ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"):
        assert torch.equal(model.state_dict()[name], base.state_dict()[name])
    assert not torch.equal(model.linear3.weight, base.linear3.weight)


def test_unseen_base_never_sees_the_digits_and_sits_beside_the_main_one(artifacts_copy, tiny_mnist):
    store = ArtifactStore(artifacts_copy)
    main_before = file_bytes(artifacts_copy / "base")
    task = parse_task("unseen:8,9")
    # enough steps for a first 8 or 9 to be read: the base model's logits for them start far below the rest
    settings = ExperimentSettings(methods=("lora",), steps=40, batch_size=32, rank=2, lora_lr=1e-2, device="cpu")
    result = run_experiment(store, tiny_mnist, task, settings, base_config=SMALL_BASE)
    assert file_bytes(artifacts_copy / "base") == main_before  # never replaced
    sub = base_store(store, "unseen-8-9")
    assert sub.root == artifacts_copy / "bases" / "unseen-8-9"
    meta = sub.base_meta()
    assert meta["left_out_digits"] == [8, 9]
    assert meta["train_samples"] == int((tiny_mnist.train_y < 8).sum())  # its training set lacked them
    assert meta["metrics"]["per_digit_accuracy"][8] == 0.0 and meta["metrics"]["per_digit_accuracy"][9] == 0.0
    assert result.base["name"] == "unseen-8-9" and result.base["sha256"] == meta["sha256"]
    assert result.settings["replay_used"] == 0.75  # unseen's default replay
    assert result.base["task_accuracy"] == 0.0 and result.base["kept_accuracy"] > 0.3
    lora = result.method("lora")
    assert sub.adapter_names() == ["unseen-8-9"] and lora.adapter == "unseen-8-9"
    assert "unseen-8-9" not in store.adapter_names()  # it belongs to the other base
    assert lora.task_accuracy > 0.0 and lora.adapter_off_equals_base is True
    # a second run reuses that base rather than training it again
    sub_before = file_bytes(sub.root / "base")
    ctx = prepare_task(store, tiny_mnist, task, settings, base_config=SMALL_BASE)
    assert ctx.base.fingerprint == meta["sha256"] and file_bytes(sub.root / "base") == sub_before
    assert run_method(ctx, "head", settings).trainable_params == 256 * 10 + 10  # SMALL_BASE's last layer
    # a sweep's point: measured like the saved one, then dropped; its would-be files weigh what the saved ones do
    quick = ExperimentSettings(steps=2, batch_size=32, rank=2, device="cpu")
    unsaved = run_method(ctx, "lora", quick, save_adapter=False)
    assert unsaved.adapter is None and unsaved.adapter_path is None and unsaved.adapter_off_equals_base is True
    assert unsaved.stored_bytes == lora.stored_bytes and unsaved.trainable_params == lora.trainable_params
    assert sub.adapter_names() == ["unseen-8-9"] and list(ctx.lora_model.adapters) == []


def test_a_digit_task_judges_the_target_digits_and_the_others(artifacts_copy, tiny_mnist):
    store = ArtifactStore(artifacts_copy)
    settings = ExperimentSettings(methods=("lora",), steps=4, batch_size=32, rank=2, device="cpu")
    result = run_experiment(store, tiny_mnist, parse_task("weakest"), settings, save=False)
    weakest = result.task["target_digits"]
    assert weakest == [int(torch.tensor(result.base["plain"]["per_digit_accuracy"]).argmin())]
    lora = result.method("lora")
    assert lora.adapter == f"digit-{weakest[0]}"
    assert lora.task_accuracy == lora.plain["per_digit_accuracy"][weakest[0]]
    assert lora.task == lora.plain and result.path is None and list_experiments(store) == []


def test_settings_are_checked_before_any_work(artifacts_copy, tiny_mnist):
    store = ArtifactStore(artifacts_copy)
    with pytest.raises(ConfigError, match="methods"):
        ExperimentSettings(methods=("lora", "fool")).validate()
    with pytest.raises(ConfigError) as info:
        ExperimentSettings(full_lr=0.0).validate()
    assert info.value.field == "full_lr"
    with pytest.raises(ConfigError, match="rank"):
        run_experiment(store, tiny_mnist, parse_task("invert"), ExperimentSettings(rank=0, device="cpu"))
    with pytest.raises(AdapterExistsError):
        run_experiment(store, tiny_mnist, parse_task("invert"), SETTINGS, adapter_name="small")
    assert store.adapter_names() == ["small"] and list_experiments(store) == []


def test_adapter_switch_gives_base_logits(rotate_run, tiny_mnist):
    """With the saved adapter loaded and switched off, the model is the plain base, bit for bit."""
    from lora_core.lab.study import load_base_for_lora

    store, result, _ = rotate_run
    base, lora_model = load_base_for_lora(store, "cpu")
    store.load_adapter(lora_model, "rotate-45", base.fingerprint)
    plain = MLP(*lora_model.model.hidden)
    plain.load_state_dict(lora_model.base_state_dict())
    x = tiny_mnist.test_x[:500]
    with lora_model.adapters_disabled():
        assert torch.equal(predict(lora_model, x), predict(plain, x))
    lora_model.set_adapter("rotate-45")
    assert not torch.equal(predict(lora_model, x), predict(plain, x))


def test_replay_defaults_by_task():
    settings = ExperimentSettings()
    assert settings.replay_for("unseen") == 0.75 and settings.replay_for("digits") == 0.5
    assert ExperimentSettings(replay=0.2).replay_for("unseen") == 0.2
    assert settings.finetune_config((8, 9), "full", "unseen").replay == 0.75
    with pytest.raises(ConfigError, match="replay"):
        ExperimentSettings(replay=1.5).validate()


def test_loraplus_and_dora_save_their_own_adapters_beside_loras(artifacts_copy, tiny_mnist):
    """The same batches for all three. LoRA+'s adapter (NAME-loraplus) records its ratio, and its B moved further
    than LoRA's from the same start; DoRA's (NAME-dora) is a PEFT DoRA adapter with a magnitude per output row,
    and switched off gives the base's logits exactly, as LoRA's."""
    store = ArtifactStore(artifacts_copy)
    settings = ExperimentSettings(
        methods=("lora", "loraplus", "dora"),
        steps=4,
        batch_size=32,
        rank=2,
        device="cpu",
        lora_lr=1e-3,
        loraplus_lr=1e-3,
    )
    result = run_experiment(store, tiny_mnist, parse_task("weakest"), settings, save=False)
    lora, plus, dora = result.method("lora"), result.method("loraplus"), result.method("dora")
    assert plus.adapter == f"{lora.adapter}-loraplus" and plus.lr == 1e-3
    assert plus.trainable_params == lora.trainable_params and plus.stored_bytes == lora.stored_bytes
    records = {name: store.read_adapter(name) for name in (lora.adapter, plus.adapter)}
    assert records[plus.adapter].metrics["finetune"]["loraplus_lr_ratio"] == 16.0
    assert "loraplus_lr_ratio" not in records[lora.adapter].metrics["finetune"]
    b = {
        name: sum(t.abs().sum() for k, t in load_file(record.path / ADAPTER_WEIGHTS).items() if "lora_B" in k)
        for name, record in records.items()
    }
    assert b[plus.adapter] > 4 * b[lora.adapter]

    assert dora.adapter == f"{lora.adapter}-dora" and dora.lr == settings.dora_lr
    rows = sum(layer.out_features for layer in store.load_base().model.children() if hasattr(layer, "out_features"))
    assert dora.trainable_params == lora.trainable_params + rows  # one magnitude per output row of each layer
    assert dora.adapter_off_equals_base
    config = json.loads((store.adapter_dir(dora.adapter) / "adapter_config.json").read_text())
    assert config["use_dora"] is True and "use_dora" not in json.loads(
        (store.adapter_dir(lora.adapter) / "adapter_config.json").read_text()
    )

    with pytest.raises(ConfigError) as info:
        ExperimentSettings(loraplus_ratio=0.0).validate()
    assert info.value.field == "loraplus_lr_ratio"
    with pytest.raises(AdapterExistsError, match="-loraplus"):  # LoRA+'s adapter is checked too, before training
        only_plus = dataclasses.replace(settings, methods=("loraplus",))
        run_experiment(store, tiny_mnist, parse_task("invert"), only_plus, adapter_name=lora.adapter)


def test_training_curves_start_at_the_base_and_end_at_each_method_s_result(artifacts_copy, tiny_mnist):
    """Every N steps and after the last: step 0 is the base on the task's test set, the last point the method's own
    figure (PiSSA's curve follows the residual model it trains, within a test image of its converted adapter);
    the curve is saved and read back, and without curve_every nothing is recorded."""
    store = ArtifactStore(artifacts_copy)
    settings = ExperimentSettings(
        methods=("lora", "pissa", "vera", "head"),
        steps=5,
        batch_size=32,
        rank=2,
        vera_rank=16,
        curve_every=2,
        device="cpu",
    )
    result = run_experiment(store, tiny_mnist, parse_task("rotate:45"), settings)
    for m in result.methods:
        steps = [step for step, _ in m.curve]
        assert steps == [0, 2, 4, 5], m.method
        assert m.curve[0][1] == result.base["task_accuracy"]
        assert abs(m.curve[-1][1] - m.task_accuracy) <= (1 / 2000 if m.method == "pissa" else 0), m.method
        assert "with the training curve's evaluations" in m.memory_measure
        assert [step for step, _, _ in m.magnitude_direction] == steps and m.magnitude_direction[0] == [0, 0.0, 0.0]
    assert all(dm == 0 and dd < 1e-6 for _, dm, dd in result.method("head").magnitude_direction)  # linear2 stays
    assert all(dm > 0 and dd > 0 for _, dm, dd in result.method("lora").magnitude_direction[1:])
    assert result.method("vera").trainable_params == 3 * 16 + 256 + 256 + 10
    again = load_experiment(result.path)
    assert [m.curve for m in again.methods] == [m.curve for m in result.methods]
    plain = run_experiment(
        store,
        tiny_mnist,
        parse_task("invert"),
        dataclasses.replace(settings, curve_every=0, methods=("head",)),
        save=False,
    )
    assert plain.methods[0].curve is None
