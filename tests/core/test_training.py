"""Training and fine-tuning: frozen base, measurable effect, forgetting, reproducibility, stop, divergence."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import types
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from core_helpers import file_bytes

from lora_core import train as train_module
from lora_core.data import MnistData, as_inputs
from lora_core.errors import ArtifactError, ConfigError, RunStopped, TrainingDiverged
from lora_core.evaluate import Evaluation, evaluate, predict
from lora_core.lab.study import finetune_and_save_adapter, load_base_for_lora, train_and_save_base
from lora_core.lora import LoraConfig, LoraModel
from lora_core.model import MAX_HIDDEN, MLP, count_parameters
from lora_core.params import parameter_table, weights_unchanged
from lora_core.precision import resolve_precision
from lora_core.store.artifacts import ArtifactStore
from lora_core.train import FinetuneConfig, Progress, RunResult, TrainConfig, finetune, resolve_device, train_base

FT = FinetuneConfig(rank=4, alpha=8, steps=60, batch_size=64, seed=0, device="cpu")
TINY_TRAIN = TrainConfig(epochs=1, batch_size=128, lr=2e-3, seed=3, device="cpu")


def clones(lora_model: LoraModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in lora_model.base_state_dict().items()}


def digit_accuracy(model, x, y, digit) -> float:
    mask = y == digit
    return (predict(model, x[mask]).argmax(1) == digit).float().mean().item()


# --- fine-tuning ----------------------------------------------------------------------------------
def test_finetune_keeps_base_bit_identical_and_improves_the_target_digit(small_base, small_mnist):
    lora_model = LoraModel(small_base)
    reference = clones(lora_model)
    base_logits = predict(lora_model, small_mnist.test_x)
    before = Evaluation.from_predictions(base_logits.argmax(1), small_mnist.test_y)
    digit = before.weakest_digit
    train_before = digit_accuracy(lora_model, small_mnist.train_x, small_mnist.train_y, digit)

    run = finetune(lora_model, "t", small_mnist, dataclasses.replace(FT, digits=(digit,)))

    assert len(run.losses) == FT.steps and all(torch.isfinite(torch.tensor(run.losses)))
    assert lora_model.active_adapter == "t"
    current = lora_model.base_state_dict()
    for key, value in reference.items():
        assert torch.equal(current[key], value), key
    assert all(check.identical and check.max_abs_diff == 0.0 for check in weights_unchanged(reference, current))
    with lora_model.adapters_disabled():
        assert torch.equal(predict(lora_model, small_mnist.test_x), base_logits)
    assert all(not p.requires_grad for p in lora_model.parameters())

    after = evaluate(lora_model, small_mnist.test_x, small_mnist.test_y)
    train_after = digit_accuracy(lora_model, small_mnist.train_x, small_mnist.train_y, digit)
    assert after.per_digit_accuracy[digit] >= before.per_digit_accuracy[digit] + 0.03, (before, after)
    assert train_after >= train_before + 0.03
    assert after.accuracy > before.accuracy - 0.02  # replay keeps the other digits


def test_zero_replay_causes_catastrophic_forgetting(small_base, small_mnist):
    lora_model = LoraModel(small_base)
    before = evaluate(lora_model, small_mnist.test_x, small_mnist.test_y)
    digit = before.weakest_digit
    config = FinetuneConfig(
        digits=(digit,),
        rank=1,
        alpha=2,
        steps=100,
        batch_size=10,
        lr=1e-3,
        lr_schedule="constant",
        replay=0.0,
        device="cpu",
    )
    finetune(lora_model, "forget", small_mnist, config)
    after = evaluate(lora_model, small_mnist.test_x, small_mnist.test_y)
    assert after.per_digit_accuracy[digit] >= before.per_digit_accuracy[digit]
    assert before.accuracy - after.accuracy > 0.10, (before.accuracy, after.accuracy)


@pytest.mark.parametrize(("replay", "n_target"), [(0.0, 64), (0.5, 32), (0.25, 48), (1.0, 0)])
def test_batches_mix_target_and_replay_digits(small_base, small_mnist, monkeypatch, replay, n_target):
    seen: list[torch.Tensor] = []

    def recording_cross_entropy(logits, labels, *args, **kwargs):
        seen.append(labels.clone())
        return F.cross_entropy(logits, labels, *args, **kwargs)

    monkeypatch.setattr(train_module, "F", types.SimpleNamespace(cross_entropy=recording_cross_entropy))
    config = dataclasses.replace(FT, steps=4, replay=replay, digits=(3, 5))
    finetune(LoraModel(small_base), "mix", small_mnist, config)
    assert len(seen) == 4
    for labels in seen:
        assert labels.numel() == 64
        is_target = (labels == 3) | (labels == 5)
        assert int(is_target.sum()) == n_target


def test_finetune_reproducible_with_same_seed(small_base_record, small_mnist):
    import copy

    runs = []
    for _ in range(2):
        lora_model = LoraModel(copy.deepcopy(small_base_record.model))
        run = finetune(lora_model, "r", small_mnist, dataclasses.replace(FT, steps=10, digits=(4,)))
        runs.append((run.losses, lora_model.adapter_state_dict("r")))
    assert runs[0][0] == runs[1][0]
    for key, value in runs[0][1].items():
        assert torch.equal(value, runs[1][1][key]), key


def test_trainable_parameter_count_matches_table(small_base, small_mnist, small_sizes):
    lora_model = LoraModel(small_base)
    config = dataclasses.replace(FT, steps=1, rank=2, targets=("linear2", "linear3"), digits=(1,))
    counted = []
    original = lora_model.mark_only_lora_trainable

    def spy(name):
        params = original(name)
        counted.append(sum(p.numel() for p in lora_model.parameters() if p.requires_grad))
        return params

    lora_model.mark_only_lora_trainable = spy
    finetune(lora_model, "c", small_mnist, config)
    h1, h2 = small_sizes.hidden
    assert counted == [parameter_table(lora_model, config.lora_config()).lora_params] == [2 * ((h1 + h2) + (h2 + 10))]


# --- reproducibility of base training ----------------------------------------------------------------
def test_same_seed_gives_identical_base_model_and_metrics(tiny_mnist):
    reports = []
    model1, run1 = train_base(tiny_mnist, TINY_TRAIN, progress=reports.append)
    model2, run2 = train_base(tiny_mnist, TINY_TRAIN)
    assert run1.losses == run2.losses
    for key, value in model1.state_dict().items():
        assert torch.equal(value, model2.state_dict()[key]), key
    ev1 = evaluate(model1, tiny_mnist.test_x[:3000], tiny_mnist.test_y[:3000])
    ev2 = evaluate(model2, tiny_mnist.test_x[:3000], tiny_mnist.test_y[:3000])
    assert ev1.accuracy == ev2.accuracy and ev1.per_digit_accuracy == ev2.per_digit_accuracy
    assert ev1.predictions == ev2.predictions
    assert ev1.accuracy > 0.7  # 2,000 images, one epoch: it learned something
    # progress reports: one per step, ending at the total
    assert [p.step for p in reports] == list(range(1, 17))
    assert all(p.total_steps == 16 and p.phase == "train" for p in reports)
    assert reports[-1].fraction == 1.0
    # a different seed really gives a different model (the check above can fail)
    model3, run3 = train_base(tiny_mnist, dataclasses.replace(TINY_TRAIN, seed=4))
    assert not torch.equal(model3.linear1.weight, model1.linear1.weight)
    assert run3.losses != run1.losses


# --- stopping ----------------------------------------------------------------------------------------
def test_stop_event_raises_run_stopped_and_saves_nothing(tiny_mnist, tmp_path):
    store = ArtifactStore(tmp_path / "art")
    stop = threading.Event()
    reports = []

    def progress(p):
        reports.append(p.step)
        if p.step == 3:
            stop.set()

    with pytest.raises(RunStopped, match="step 3"):
        train_and_save_base(store, tiny_mnist, dataclasses.replace(TINY_TRAIN, batch_size=64), progress, stop)
    assert reports == [1, 2, 3]
    assert not store.has_base()
    assert not (tmp_path / "art").exists() or list((tmp_path / "art").rglob("*")) == []


def test_stop_keeps_the_previous_base_and_adapters(artifacts_copy, tiny_mnist, small_mnist):
    before = file_bytes(artifacts_copy)
    store = ArtifactStore(artifacts_copy)
    stop = threading.Event()
    stop.set()  # already set: stops after the first step
    with pytest.raises(RunStopped):
        train_and_save_base(store, tiny_mnist, TINY_TRAIN, None, stop)
    assert file_bytes(artifacts_copy) == before

    base, lora_model = load_base_for_lora(store, "cpu")
    reference = clones(lora_model)
    with pytest.raises(RunStopped):
        finetune_and_save_adapter(
            store, base, lora_model, small_mnist, dataclasses.replace(FT, digits=(2,)), name="stopped", stop=stop
        )
    assert "stopped" not in lora_model.adapters  # the half-trained adapter is removed
    assert all("stopped" not in layer.lora_A for layer in lora_model.lora_layers().values())
    assert all(torch.equal(v, reference[k]) for k, v in lora_model.base_state_dict().items())
    assert store.adapter_names() == ["small"]
    assert file_bytes(artifacts_copy) == before


def test_a_disk_without_room_for_the_base_is_refused_before_training(artifacts_copy, tiny_mnist, monkeypatch):
    before = file_bytes(artifacts_copy)
    full = shutil.disk_usage(artifacts_copy)._replace(free=3 * 2**20)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: full)
    steps = []
    with pytest.raises(ArtifactError) as refused:
        train_and_save_base(ArtifactStore(artifacts_copy), tiny_mnist, TINY_TRAIN, progress=steps.append)
    needed = count_parameters(TINY_TRAIN.hidden) * 4 + 16 * 2**20
    assert str(refused.value) == (
        f"the base model needs about {needed / 2**20:.0f} MiB in {artifacts_copy}, and the disk has 3 MiB free; "
        "free some space or choose another folder with --artifacts"
    )
    assert steps == [] and file_bytes(artifacts_copy) == before  # not a step trained, nothing written


# --- divergence -------------------------------------------------------------------------------------
def test_nan_loss_raises_training_diverged_and_keeps_the_previous_base(artifacts_copy, tiny_mnist):
    before = file_bytes(artifacts_copy)
    poisoned = tiny_mnist.train_x.clone()
    poisoned[:, 400] = float("nan")
    data = dataclasses.replace(tiny_mnist, train_x=poisoned)
    store = ArtifactStore(artifacts_copy)
    with pytest.raises(TrainingDiverged, match="Nothing was saved"):
        train_and_save_base(store, data, TINY_TRAIN)
    assert file_bytes(artifacts_copy) == before
    store.load_base()  # still loads


def loss_becomes(value: float, at_step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The training loops' loss turns into loss * `value` (inf or nan) from step `at_step` on."""
    calls = []

    def exploding_cross_entropy(logits, labels, *args, **kwargs):
        calls.append(1)
        loss = F.cross_entropy(logits, labels, *args, **kwargs)
        return loss * value if len(calls) >= at_step else loss

    monkeypatch.setattr(train_module, "F", types.SimpleNamespace(cross_entropy=exploding_cross_entropy))


def test_loss_blowing_up_mid_run_raises_training_diverged(tiny_mnist, tmp_path, monkeypatch):
    loss_becomes(float("inf"), 5, monkeypatch)
    store = ArtifactStore(tmp_path / "art")
    with pytest.raises(TrainingDiverged, match="step 5"):
        train_and_save_base(store, tiny_mnist, TINY_TRAIN)
    assert not store.has_base()
    assert not (tmp_path / "art").exists() or list((tmp_path / "art").rglob("*")) == []


def test_finetune_divergence_removes_the_adapter_and_saves_nothing(artifacts_copy, small_mnist, monkeypatch):
    before = file_bytes(artifacts_copy)
    store = ArtifactStore(artifacts_copy)
    base, lora_model = load_base_for_lora(store, "cpu")
    reference = clones(lora_model)
    loss_becomes(float("nan"), 3, monkeypatch)
    with pytest.raises(TrainingDiverged, match=r"step 3 .* lower the learning rate\. .*alpha/r = [0-9.]+: a smaller"):
        finetune_and_save_adapter(store, base, lora_model, small_mnist, dataclasses.replace(FT, digits=(7,)), name="d")
    assert "d" not in lora_model.adapters
    assert all("d" not in layer.lora_A for layer in lora_model.lora_layers().values())
    assert all(torch.equal(v, reference[k]) for k, v in lora_model.base_state_dict().items())
    assert file_bytes(artifacts_copy) == before


def test_huge_learning_rate_is_allowed_but_above_one_rejected(tiny_mnist):
    with pytest.raises(ConfigError, match="lr"):
        train_base(tiny_mnist, dataclasses.replace(TINY_TRAIN, lr=1.5))
    TrainConfig(lr=1.0).validate()


# --- the study's fine-tune workflow ---------------------------------------------------------------
def test_finetune_and_save_defaults_to_weakest_digit_and_refuses_to_overwrite(artifacts_copy, small_mnist, small_sizes):
    store = ArtifactStore(artifacts_copy)
    base, lora_model = load_base_for_lora(store, "cpu")
    config = dataclasses.replace(FT, steps=5)
    base_eval = evaluate(base.model, small_mnist.test_x, small_mnist.test_y)
    outcome = finetune_and_save_adapter(store, base, lora_model, small_mnist, config, base_eval=base_eval)
    weakest = outcome.before.weakest_digit
    assert outcome.digits == (weakest,)
    assert outcome.name == f"digit-{weakest}"
    assert outcome.trainable_params == 4 * small_sizes.lora_per_rank
    assert sorted(store.adapter_names()) == sorted(["small", f"digit-{weakest}"])
    record = store.read_adapter(outcome.name)
    assert record.metrics["target_digits"] == [weakest]
    assert record.metrics["base_sha256"] == base.fingerprint
    assert record.metrics["after"]["accuracy"] == outcome.after.accuracy
    assert record.metrics["before"]["accuracy"] == outcome.before.accuracy
    assert record.metrics["trainable_params"] == 4 * small_sizes.lora_per_rank
    saved = file_bytes(store.adapter_dir(outcome.name))
    with pytest.raises(ConfigError, match="already exists"):
        finetune_and_save_adapter(store, base, lora_model, small_mnist, config, base_eval=base_eval)
    assert file_bytes(store.adapter_dir(outcome.name)) == saved
    config2 = dataclasses.replace(config, rank=2)
    outcome2 = finetune_and_save_adapter(
        store, base, lora_model, small_mnist, config2, overwrite=True, base_eval=base_eval
    )
    assert outcome2.name == outcome.name
    assert store.read_adapter(outcome.name).config.r == 2


# --- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change",
    [
        {"epochs": 0},
        {"batch_size": 0},
        {"lr": 0.0},
        {"lr": -1.0},
        {"lr": float("nan")},
        {"lr": float("inf")},
        {"lr_schedule": "cosine"},
        {"seed": -1},
        {"device": "tpu"},
        {"hidden": (10,)},
        {"hidden": (0, 10)},
        {"epochs": 1.5},
    ],
)
def test_bad_train_configs_are_rejected(change):
    with pytest.raises(ConfigError):
        dataclasses.replace(TINY_TRAIN, **change).validate()


@pytest.mark.parametrize(
    "change",
    [
        {"digits": (10,)},
        {"digits": (-1,)},
        {"digits": ()},
        {"digits": (True,)},
        {"rank": 0},
        {"rank": 2.5},  # a rank above a layer's limit is capped there (tests/core/test_sweeps.py), not refused
        {"steps": 0},
        {"batch_size": 0},
        {"lr": -1.0},
        {"lr": float("nan")},
        {"replay": 1.5},
        {"replay": float("nan")},
        {"alpha": 0.0},
        {"dropout": 1.0},
        {"init": "zero"},
        {"targets": ("linear9",)},
        {"targets": ()},
        {"loraplus_lr_ratio": 0.0},
        {"loraplus_lr_ratio": -16.0},
        {"loraplus_lr_ratio": float("nan")},
        {"loraplus_lr_ratio": 2000.0},  # B at lr 3e-3 x 2000 = 6 per step
    ],
)
def test_bad_finetune_configs_are_rejected(change, small_base):
    config = dataclasses.replace(FT, **change)
    with pytest.raises(ConfigError):
        config.validate(small_base)
    lora_model = LoraModel(small_base)
    with pytest.raises(ConfigError):
        finetune(lora_model, "bad", None, config)  # rejected before touching any data
    assert lora_model.adapters == {}


@pytest.mark.parametrize("ratio", [None, 16.0])
def test_loraplus_moves_b_at_ratio_times_the_rate_a_learns_at(small_base, small_mnist, ratio):
    """Adam's first step moves each entry with a gradient by exactly its group's lr (m/sqrt(v) = ±1); B starts at
    zero, so that step gives A no gradient and B its lr: lr for plain LoRA, lr x ratio for LoRA+."""
    config = dataclasses.replace(FT, digits=(9,), steps=1, lr=1e-3, lr_schedule="constant", loraplus_lr_ratio=ratio)
    lora_model = LoraModel(small_base)
    finetune(lora_model, "plus", small_mnist, config)
    layer = lora_model.lora_layers()["linear2"]
    b, a = layer.lora_B["plus"].weight, layer.lora_A["plus"].weight
    moved = b[b != 0].abs()
    assert moved.numel() > b.numel() // 2  # rows of units no image of the batch lit stay at zero
    step = 1e-3 * (ratio or 1.0)  # Adam's eps shrinks the step only where the gradient is tiny
    assert moved.max().item() == pytest.approx(step, rel=1e-4) and moved.median().item() == pytest.approx(
        step, rel=1e-3
    )
    fresh = LoraModel(MLP(*small_base.hidden))
    fresh.add_adapter("plus", config.lora_config(), seed=config.seed)
    assert torch.equal(a, fresh.lora_layers()["linear2"].lora_A["plus"].weight)  # A: no gradient yet
    assert ("loraplus_lr_ratio" in config.to_dict()) is (ratio is not None)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="cuda"):
            resolve_device("cuda")
        assert resolve_device("auto").type in ("cpu", "mps")


# --- the target digits have one source: config.digits --------------------------------------------
@pytest.mark.parametrize(("digits", "words"), [((12,), ["digit", "12"]), ((3, -1), ["digit", "-1"]), ((), ["digit"])])
def test_finetune_refuses_bad_digits_with_a_config_error(small_base, small_mnist, digits, words):
    lora_model = LoraModel(small_base)
    with pytest.raises(ConfigError) as info:
        finetune(lora_model, "bad", small_mnist, dataclasses.replace(FT, steps=2, digits=digits))
    assert info.value.field == "digit"
    assert all(word in str(info.value) for word in words), str(info.value)
    assert lora_model.adapters == {}


def test_finetune_needs_target_digits(small_base, small_mnist):
    lora_model = LoraModel(small_base)
    with pytest.raises(ConfigError) as info:
        finetune(lora_model, "none", small_mnist, dataclasses.replace(FT, steps=2, digits=None))
    assert info.value.field == "digit"
    assert str(info.value) == "digit: choose the target digit(s) to fine-tune on (config.digits)"
    assert lora_model.adapters == {}


def test_finetune_trains_on_config_digits_only(small_base, small_mnist, monkeypatch):
    seen: list[torch.Tensor] = []

    def recording_cross_entropy(logits, labels, *args, **kwargs):
        seen.append(labels.clone())
        return F.cross_entropy(logits, labels, *args, **kwargs)

    monkeypatch.setattr(train_module, "F", types.SimpleNamespace(cross_entropy=recording_cross_entropy))
    finetune(LoraModel(small_base), "seven", small_mnist, dataclasses.replace(FT, steps=3, replay=0.0, digits=(7,)))
    assert len(seen) == 3 and all(bool((labels == 7).all()) for labels in seen)


def test_old_call_with_digits_beside_the_config_fails_loudly(small_base, small_mnist):
    with pytest.raises(TypeError):
        finetune(LoraModel(small_base), "old", small_mnist, (7,), dataclasses.replace(FT, digits=(7,)))  # type: ignore[misc]


# --- run_study follows the same rule as finetune: an existing name is replaced only with overwrite -------
def test_run_study_refuses_an_existing_adapter_before_training(artifacts_copy, small_mnist):
    from lora_core.errors import AdapterExistsError
    from lora_core.lab.study import run_study

    store = ArtifactStore(artifacts_copy)
    saved = file_bytes(artifacts_copy)
    base_files = file_bytes(artifacts_copy / "base")
    reports = []
    with pytest.raises(AdapterExistsError) as info:
        run_study(store, small_mnist, TINY_TRAIN, dataclasses.replace(FT, steps=3), "small", progress=reports.append)
    assert info.value.name == "small" and info.value.field == "name"
    assert reports == []  # refused before any training step
    assert file_bytes(artifacts_copy) == saved

    result = run_study(
        store, small_mnist, TINY_TRAIN, dataclasses.replace(FT, steps=3, rank=2), "small", overwrite=True
    )
    assert result["adapter"]["name"] == "small" and result["base_weights_unchanged"] is True
    assert store.read_adapter("small").config.r == 2
    assert file_bytes(artifacts_copy / "base") == base_files  # the saved base was reused, not retrained


# --- train.py's parts on a few images and tiny models (seconds; `make mutate` runs these) --------------------
def refusal(check: Callable[..., object], *args: object, **kwargs: object) -> tuple[str, str]:
    """The field and the message of the ConfigError `check(*args, **kwargs)` raises."""
    with pytest.raises(ConfigError) as info:
        check(*args, **kwargs)
    return info.value.field, str(info.value)


def first_images(data: MnistData, n: int) -> MnistData:
    return dataclasses.replace(data, train_x=data.train_images[:n], train_y=data.train_y[:n])


def tiny_mlp(seed: int = 0) -> MLP:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLP(8, 8)


FP32 = resolve_precision("fp32", torch.device("cpu"))


def test_number_checks_accept_their_bounds_and_name_the_field_and_range_when_they_refuse() -> None:
    for value in (1, 3):
        train_module.check_int("steps", value, 1, 3)
    assert refusal(train_module.check_int, "steps", 0, 1, 3) == (
        "steps",
        "steps: must be a whole number from 1 to 3, got 0",
    )
    for bad in (4, True, 2.0, "2"):
        assert (
            refusal(train_module.check_int, "steps", bad, 0, 3)[1]
            == f"steps: must be a whole number from 0 to 3, got {bad!r}"
        )
    for lr in (1.0, 1, 1e-12):
        train_module.check_lr(lr)
    for lr in (0, 0.0, -0.5, 1.0000001, 1.5, 2.0, float("nan"), float("inf"), "0.1", None):
        message = f"lr: learning rate must be a number above 0 and at most 1, got {lr!r}"
        assert refusal(train_module.check_lr, lr) == ("lr", message)
    for schedule in ("linear", "constant"):
        train_module._check_schedule(schedule)
    assert refusal(train_module._check_schedule, "cosine") == (
        "lr_schedule",
        "lr_schedule: must be one of linear, constant, got 'cosine'",
    )
    for device in ("auto", "cpu", "cuda", "mps"):
        train_module._check_device(device)
    assert refusal(train_module._check_device, "tpu") == (
        "device",
        "device: must be one of auto, cpu, cuda, mps, got 'tpu'",
    )


def test_train_config_accepts_each_bound_and_refuses_one_past_it_naming_the_field() -> None:
    config = TrainConfig(device="cpu", precision="fp32")
    for name, low, high in [("epochs", 1, 1000), ("batch_size", 1, 60_000), ("seed", 0, 2**63 - 1)]:
        for ok in (low, high):
            dataclasses.replace(config, **{name: ok}).validate()
        for bad in (low - 1, high + 1):
            message = f"{name}: must be a whole number from {low} to {high}, got {bad}"
            assert refusal(dataclasses.replace(config, **{name: bad}).validate) == (name, message)
    for hidden in ((1, 1), (MAX_HIDDEN, MAX_HIDDEN)):
        dataclasses.replace(config, hidden=hidden).validate()
    for hidden, bad in (((0, 5), 0), ((5, MAX_HIDDEN + 1), MAX_HIDDEN + 1)):
        message = f"hidden: must be a whole number from 1 to {MAX_HIDDEN}, got {bad}"
        assert refusal(dataclasses.replace(config, hidden=hidden).validate) == ("hidden", message)
    for hidden in ((5,), (5, 5, 5)):
        message = f"hidden: give two hidden sizes, got {hidden!r}"
        assert refusal(dataclasses.replace(config, hidden=hidden).validate) == ("hidden", message)
    for field, value in [("lr", 1.5), ("lr_schedule", "cosine"), ("device", "tpu"), ("precision", "fp8")]:
        assert refusal(dataclasses.replace(config, **{field: value}).validate)[0] == field
    for schedule, device, precision in [
        ("constant", "auto", "auto"),
        ("linear", "cuda", "bf16"),
        ("linear", "mps", "fp32"),
    ]:
        dataclasses.replace(config, lr_schedule=schedule, device=device, precision=precision).validate()


def test_finetune_config_accepts_each_bound_and_refuses_one_past_it_naming_the_field() -> None:
    config = FinetuneConfig(digits=(0, 9), device="cpu", precision="fp32")
    model = tiny_mlp()
    config.validate(model)
    dataclasses.replace(config, digits=None).validate(model)  # the weakest digit, chosen later
    for name, low, high in [("steps", 1, 1_000_000), ("batch_size", 1, 60_000), ("seed", 0, 2**63 - 1)]:
        for ok in (low, high):
            dataclasses.replace(config, **{name: ok}).validate(model)
        for bad in (low - 1, high + 1):
            message = f"{name}: must be a whole number from {low} to {high}, got {bad}"
            assert refusal(dataclasses.replace(config, **{name: bad}).validate, model) == (name, message)
    for replay in (0.0, 1.0, 0, 1):
        dataclasses.replace(config, replay=replay).validate(model)
    for replay in (-0.01, 1.01, 2.0, float("nan"), "0.5"):
        message = f"replay: must be a fraction from 0 to 1, got {replay!r}"
        assert refusal(dataclasses.replace(config, replay=replay).validate, model) == ("replay", message)
    assert refusal(dataclasses.replace(config, digits=()).validate, model) == (
        "digit",
        "digit: choose at least one target digit",
    )
    for digit in (10, -1, True, 1.0):
        message = f"digit: must be a digit from 0 to 9, got {digit!r}"
        assert refusal(dataclasses.replace(config, digits=(3, digit)).validate, model) == ("digit", message)
    changes = [("lr", 1.5), ("lr_schedule", "cosine"), ("device", "tpu"), ("precision", "fp8"), ("rank", 0)]
    for field, value in changes:
        assert refusal(dataclasses.replace(config, **{field: value}).validate, model)[0] == field
    for schedule, device, precision in [
        ("constant", "auto", "auto"),
        ("linear", "cuda", "bf16"),
        ("linear", "mps", "fp32"),
    ]:
        dataclasses.replace(config, lr_schedule=schedule, device=device, precision=precision).validate(model)
    assert refusal(dataclasses.replace(config, targets=("linear9",)).validate, model)[0] == "targets"  # the model's


def test_configs_turn_into_plain_dicts_and_a_finetune_config_into_its_lora_config() -> None:
    assert TrainConfig(hidden=(32, 16)).to_dict() == {
        "epochs": 1,
        "batch_size": 256,
        "lr": 2e-3,
        "lr_schedule": "linear",
        "seed": 0,
        "device": "auto",
        "hidden": [32, 16],
        "precision": "auto",
    }
    config = FinetuneConfig(digits=[3, 5], targets=["linear2"])  # lists are kept as tuples
    assert config.digits == (3, 5) and config.targets == ("linear2",)
    assert config.to_dict() == {
        "digits": [3, 5],
        "rank": 8,
        "alpha": 16.0,
        "targets": ["linear2"],
        "steps": 600,
        "batch_size": 128,
        "lr": 3e-3,
        "lr_schedule": "linear",
        "replay": 0.5,
        "dropout": 0.0,
        "use_rslora": False,
        "init": "kaiming",
        "seed": 0,
        "device": "auto",
        "precision": "auto",
    }
    default = FinetuneConfig()
    assert default.digits is None and default.to_dict()["digits"] is None
    assert default.to_dict()["targets"] == ["linear1", "linear2", "linear3"]
    shaped = FinetuneConfig(rank=3, alpha=5.0, dropout=0.25, targets=("linear2",), use_rslora=True, init="gaussian")
    assert shaped.lora_config() == LoraConfig(
        r=3, alpha=5.0, dropout=0.25, target_modules=("linear2",), use_rslora=True, init="gaussian"
    )


def test_resolve_device_picks_the_cpu_here_and_refuses_an_accelerator_this_machine_lacks() -> None:
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has an accelerator")
    assert resolve_device() == resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    for name in ("cuda", "mps"):
        message = f"device: {name} is not available on this machine; use cpu or auto"
        assert refusal(resolve_device, name) == ("device", message)
    assert refusal(resolve_device, "tpu")[0] == "device"


def test_resolve_device_prefers_cuda_then_mps_wherever_they_are_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device() == resolve_device("mps") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device() == resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("mps") == torch.device("mps") and resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(("device", "fused"), [("cpu", True), ("cuda", True), ("mps", False)])
def test_adam_is_fused_on_cpu_and_cuda_only(device: str, fused: bool) -> None:
    optimizer = train_module.adam([torch.nn.Parameter(torch.zeros(3))], 0.25, torch.device(device))
    assert optimizer.defaults["fused"] is fused and optimizer.param_groups[0]["lr"] == 0.25


@pytest.mark.parametrize(("schedule", "factors"), [("linear", [1.0, 0.75, 0.5, 0.25, 0.0]), ("constant", [1.0] * 5)])
def test_the_linear_schedule_reaches_zero_after_the_last_step_and_constant_keeps_the_rate(
    schedule: str, factors: list[float]
) -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.4)
    scheduler = train_module._scheduler(optimizer, schedule, 4)
    rates = [optimizer.param_groups[0]["lr"]]
    for _ in range(4):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([0.4 * f for f in factors])


def test_the_reporter_turns_steps_into_progress_with_rate_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([10.0, 10.5, 12.0, 14.0])  # the start, two steps, the result
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    reports: list[Progress] = []
    reporter = train_module._Reporter("phase-x", 4, reports.append, threading.Event())
    reporter.step(1, torch.tensor(0.5), 32)
    reporter.step(2, torch.tensor(0.25), 32, epoch=2)
    assert reports == [
        Progress("phase-x", 1, 4, 0.5, 64.0, 0.5, 1.5, 1),  # 32 samples in 0.5 s; 3 steps to go at 0.5 s each
        Progress("phase-x", 2, 4, 0.25, 32.0, 2.0, 2.0, 2),
    ]
    assert reporter.result() == RunResult(4.0, 16.0, [0.5, 0.25])
    with pytest.raises(TrainingDiverged) as diverged:
        reporter.step(3, torch.tensor(float("nan")), 32)
    assert (
        str(diverged.value)
        == "phase-x: the loss became nan at step 3 of 4; lower the learning rate. Nothing was saved."
    )
    assert reporter.losses == [0.5, 0.25] and len(reports) == 2


def test_the_reporter_reports_zero_rate_and_eta_without_elapsed_time_and_stops_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [5.0]
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    reports: list[Progress] = []
    reporter = train_module._Reporter("p", 3, reports.append, None)
    reporter.step(0, torch.tensor(1.0), 8)
    reporter.step(1, torch.tensor(1.0), 8)
    assert [(p.samples_per_s, p.elapsed_s, p.eta_s) for p in reports] == [(0.0, 0.0, 0.0), (0.0, 0.0, 0.0)]
    assert reporter.result() == RunResult(0.0, 0.0, [1.0, 1.0])
    now[0] = 5.25  # under a second: a rate all the same
    assert reporter.result() == RunResult(0.25, 64.0, [1.0, 1.0])
    stop = threading.Event()
    stopping = train_module._Reporter("q", 3, reports.append, stop)
    stopping.step(1, torch.tensor(1.0), 8)
    stop.set()
    with pytest.raises(RunStopped) as stopped:
        stopping.step(2, torch.tensor(1.0), 8)
    assert str(stopped.value) == "q stopped at step 2 of 3; nothing was saved."
    assert [p.step for p in reports if p.phase == "q"] == [1, 2]  # the step that stops is reported first


class RecordingMLP(MLP):
    """An MLP that records every batch it is given, with the learning rate of the optimizer at that point."""

    inputs: list[torch.Tensor]
    rates: list[float]
    optimizer: torch.optim.Optimizer | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        if self.optimizer is not None:
            self.rates.append(self.optimizer.param_groups[0]["lr"])
        return super().forward(x)


def record_batches(monkeypatch: pytest.MonkeyPatch) -> tuple[list[torch.Tensor], list[torch.Tensor], list[float]]:
    """Make train_base build RecordingMLPs and record the labels of every loss; returns inputs, labels, rates."""
    inputs: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    rates: list[float] = []
    adam = train_module.adam

    class Recording(RecordingMLP):
        def __init__(self, *hidden: int) -> None:
            super().__init__(*hidden)
            self.inputs, self.rates = inputs, rates

    def recording_adam(params: object, lr: float, device: torch.device) -> torch.optim.Adam:
        optimizer = adam(params, lr, device)
        Recording.optimizer = optimizer
        return optimizer

    def recording_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        labels.append(y.clone())
        return F.cross_entropy(logits, y)

    monkeypatch.setattr(train_module, "MLP", Recording)
    monkeypatch.setattr(train_module, "adam", recording_adam)
    monkeypatch.setattr(train_module, "F", types.SimpleNamespace(cross_entropy=recording_cross_entropy))
    return inputs, labels, rates


def test_train_base_visits_every_image_once_an_epoch_in_the_seeded_order_at_a_falling_rate(
    tiny_mnist: MnistData, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = first_images(tiny_mnist, 102)  # batches of 4 normalised 16 at a time: two blocks an epoch, a short batch
    inputs, labels, rates = record_batches(monkeypatch)
    config = TrainConfig(epochs=2, batch_size=4, lr=0.01, seed=7, device="cpu", hidden=(8, 8), precision="fp32")
    reports: list[Progress] = []
    model, run = train_base(data, config, progress=reports.append)
    generator = torch.Generator().manual_seed(7)
    batches = [
        order[i : i + 4]
        for order in (torch.randperm(102, generator=generator) for _ in range(2))
        for i in range(0, 102, 4)
    ]
    assert len(batches) == 52 and len(inputs) == len(labels) == 52
    for x, y, idx in zip(inputs, labels, batches, strict=True):
        assert torch.equal(x, as_inputs(data.train_images[idx])) and torch.equal(y, data.train_y[idx])
    assert rates == pytest.approx([0.01 * (1 - step / 52) for step in range(52)])
    expected = [("train", step, 52, 1 if step <= 26 else 2) for step in range(1, 53)]
    assert [(p.phase, p.step, p.total_steps, p.epoch) for p in reports] == expected
    assert [p.loss for p in reports] == run.losses and run.precision == FP32
    assert model.hidden == (8, 8) and not model.training


def test_train_parameters_draws_target_then_replay_images_from_the_config_seed_and_trains_only_params(
    tiny_mnist: MnistData, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = first_images(tiny_mnist, 300)
    model = RecordingMLP(8, 8)
    model.inputs, model.rates = [], []
    labels: list[torch.Tensor] = []

    def recording_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        labels.append(y.clone())
        return F.cross_entropy(logits, y)

    adam = train_module.adam

    def recording_adam(params: object, lr: float, device: torch.device) -> torch.optim.Adam:
        model.optimizer = adam(params, lr, device)
        return model.optimizer

    monkeypatch.setattr(train_module, "F", types.SimpleNamespace(cross_entropy=recording_cross_entropy))
    monkeypatch.setattr(train_module, "adam", recording_adam)
    params = list(model.linear3.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = FinetuneConfig(
        digits=(3, 5), steps=3, batch_size=8, lr=0.01, replay=0.25, seed=11, device="cpu", precision="fp32"
    )
    reports: list[Progress] = []
    run = train_module.train_parameters(model, params, data, config, phase="only-the-head", progress=reports.append)
    # the same draws by hand: 6 target images, then 2 of the other digits, from a generator seeded with config.seed
    is_target = (data.train_y == 3) | (data.train_y == 5)
    target_idx, other_idx = is_target.nonzero().flatten(), (~is_target).nonzero().flatten()
    generator = torch.Generator().manual_seed(11)
    for x, y in zip(model.inputs, labels, strict=True):
        picks = target_idx[torch.randint(target_idx.numel(), (6,), generator=generator)]
        idx = torch.cat([picks, other_idx[torch.randint(other_idx.numel(), (2,), generator=generator)]])
        assert torch.equal(x, as_inputs(data.train_images[idx])) and torch.equal(y, data.train_y[idx])
    assert len(labels) == 3 and model.rates == pytest.approx([0.01, 0.01 * 2 / 3, 0.01 / 3])
    assert [(p.phase, p.step, p.total_steps) for p in reports] == [("only-the-head", s, 3) for s in (1, 2, 3)]
    assert [p.loss for p in reports] == run.losses and run.precision == FP32
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in ("linear1.weight", "linear1.bias", "linear2.weight"))
    assert not torch.equal(after["linear3.weight"], before["linear3.weight"])
    assert not model.training and not any(p.requires_grad for p in params)  # left frozen, in eval mode


def test_train_parameters_batches_without_other_digits_one_image_or_none(tiny_mnist: MnistData) -> None:
    threes = tiny_mnist.train_y == 3
    only_threes = dataclasses.replace(
        tiny_mnist, train_x=tiny_mnist.train_images[threes][:20], train_y=tiny_mnist.train_y[threes][:20]
    )
    model = tiny_mlp()

    def trainable() -> list[torch.nn.Parameter]:  # each run leaves its params frozen
        return [p.requires_grad_(True) for p in model.parameters()]

    config = FinetuneConfig(digits=(3,), steps=2, batch_size=8, replay=0.5, device="cpu", precision="fp32")
    no_replay = train_module.train_parameters(model, trainable(), only_threes, config, phase="p")  # none to draw
    assert len(no_replay.losses) == 2
    one = dataclasses.replace(config, batch_size=1, replay=0.0)
    assert (
        len(train_module.train_parameters(model, trainable(), first_images(tiny_mnist, 50), one, phase="p").losses) == 2
    )
    empty = dataclasses.replace(config, batch_size=0)  # train_parameters takes configs validated or not
    message = "batch_size: the batch is empty"
    assert refusal(train_module.train_parameters, model, trainable(), only_threes, empty, phase="p") == (
        "batch_size",
        message,
    )
    no_digits = dataclasses.replace(config, digits=None)
    message = "digit: choose the target digit(s) to fine-tune on (config.digits)"
    assert refusal(train_module.train_parameters, model, trainable(), only_threes, no_digits, phase="p") == (
        "digit",
        message,
    )


def test_train_parameters_stops_when_asked_leaving_params_frozen_and_the_model_in_eval_mode(
    tiny_mnist: MnistData,
) -> None:
    model = tiny_mlp()
    params = list(model.parameters())
    stop = threading.Event()
    stop.set()
    config = FinetuneConfig(digits=(1,), steps=3, batch_size=4, device="cpu", precision="fp32")
    with pytest.raises(RunStopped, match="stop-test stopped at step 1 of 3"):
        train_module.train_parameters(model, params, first_images(tiny_mnist, 50), config, phase="stop-test", stop=stop)
    assert not model.training and not any(p.requires_grad for p in params)


def test_base_training_and_fine_tuning_run_under_bfloat16_autocast_when_asked(tiny_mnist: MnistData) -> None:
    data = first_images(tiny_mnist, 64)
    config = TrainConfig(batch_size=32, device="cpu", hidden=(8, 8), precision="bf16")
    model, run = train_base(data, config)
    assert run.precision is not None and run.precision.used == "bf16" and len(run.losses) == 2
    finetune_config = FinetuneConfig(digits=(1,), steps=2, batch_size=8, device="cpu", precision="bf16")
    run = train_module.train_parameters(model, list(model.parameters()), data, finetune_config, phase="p")
    assert run.precision is not None and run.precision.used == "bf16" and len(run.losses) == 2


def test_finetune_reports_as_finetune_and_starts_the_adapter_from_the_config_seed(tiny_mnist: MnistData) -> None:
    lora_model = LoraModel(tiny_mlp())
    fresh = LoraModel(tiny_mlp())
    config = FinetuneConfig(digits=(3,), rank=2, alpha=4, steps=1, batch_size=8, seed=4, device="cpu", precision="fp32")
    fresh.add_adapter("t", config.lora_config(), seed=4)
    reports: list[Progress] = []
    run = finetune(lora_model, "t", first_images(tiny_mnist, 100), config, progress=reports.append)
    assert [(p.phase, p.step, p.total_steps) for p in reports] == [("finetune", 1, 1)] and len(run.losses) == 1
    for name, layer in lora_model.lora_layers().items():  # B was 0 at the one step, so A had no gradient yet
        assert torch.equal(layer.lora_A["t"].weight, fresh.lora_layers()[name].lora_A["t"].weight)
        assert not torch.equal(layer.lora_B["t"].weight, fresh.lora_layers()[name].lora_B["t"].weight)
    stop = threading.Event()
    stop.set()
    with pytest.raises(RunStopped, match="finetune stopped at step 1"):
        finetune(lora_model, "s", first_images(tiny_mnist, 100), config, stop=stop)
    assert list(lora_model.adapters) == ["t"]
    # a config the model cannot take is refused before anything happens, the global generator's seeding included
    rng = torch.get_rng_state()
    unknown_layer = dataclasses.replace(config, targets=("linear9",))
    assert refusal(finetune, lora_model, "u", first_images(tiny_mnist, 100), unknown_layer)[0] == "targets"
    assert torch.equal(rng, torch.get_rng_state()) and list(lora_model.adapters) == ["t"]
