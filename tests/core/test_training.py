"""Training and fine-tuning: frozen base, measurable effect, forgetting, reproducibility, stop, divergence."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import types

import pytest
import torch
import torch.nn.functional as F
from core_helpers import file_bytes

from lora_core import train as train_module
from lora_core.errors import ArtifactError, ConfigError, RunStopped, TrainingDiverged
from lora_core.evaluate import Evaluation, evaluate, predict
from lora_core.lab.study import finetune_and_save_adapter, load_base_for_lora, train_and_save_base
from lora_core.lora import LoraModel
from lora_core.model import count_parameters
from lora_core.params import parameter_table, weights_unchanged
from lora_core.store.artifacts import ArtifactStore
from lora_core.train import FinetuneConfig, TrainConfig, finetune, resolve_device, train_base

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
    with pytest.raises(ConfigError, match="digit"):
        finetune(lora_model, "none", small_mnist, dataclasses.replace(FT, steps=2, digits=None))
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
