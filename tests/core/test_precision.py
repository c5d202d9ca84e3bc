"""Training precision: fp32 and bf16 autocast on any CPU, auto following the probe, float32 files, PEFT."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_core import precision as precision_module
from lora_core.cli import main
from lora_core.data import MnistData
from lora_core.errors import ConfigError
from lora_core.evaluate import evaluate
from lora_core.lab.study import finetune_and_save_adapter, load_base_for_lora, train_and_save_base
from lora_core.lora import LoraModel
from lora_core.precision import MatmulProbe, probe_bf16, resolve_precision
from lora_core.store.artifacts import ADAPTER_METRICS, ADAPTER_WEIGHTS, ArtifactStore
from lora_core.train import FinetuneConfig, TrainConfig, finetune, train_base

CPU = torch.device("cpu")
# a narrower network: what is checked here is how a precision is chosen, recorded and reproduced, not the MLP
TINY_TRAIN = TrainConfig(hidden=(256, 256), epochs=1, batch_size=128, lr=2e-3, seed=0, device="cpu")
TINY_FINETUNE = FinetuneConfig(digits=(3,), rank=4, alpha=8, steps=12, batch_size=64, seed=0, device="cpu")


def fake_probe(speedup: float) -> MatmulProbe:
    return MatmulProbe(fp32_s=1.0, bf16_s=1.0 / speedup, wall_s=0.01)


@pytest.fixture(scope="module")
def tiny_bases(tmp_path_factory: pytest.TempPathFactory, tiny_mnist: MnistData) -> dict[str, dict]:
    """Base models trained and saved per forced precision, each twice with the same seed."""
    out: dict[str, dict] = {}
    for precision in ("fp32", "bf16"):
        metas = []
        for run in range(2):
            store = ArtifactStore(tmp_path_factory.mktemp(f"{precision}-{run}"))
            metas.append(train_and_save_base(store, tiny_mnist, dataclasses.replace(TINY_TRAIN, precision=precision)))
        out[precision] = {"store": store, "metas": metas}
    return out


# --- forced precisions run on any CPU, are recorded, and reproduce ----------------------------------
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_forced_precision_trains_records_and_reproduces(tiny_bases, precision, tiny_mnist):
    first, second = tiny_bases[precision]["metas"]
    training = first["training"]
    assert training["precision"] == precision
    assert training["precision_used"] == precision
    assert training["precision_reason"] == f"{precision}: as requested"
    # same seed, same precision, same machine: the same checkpoint, bit for bit
    assert first["sha256"] == second["sha256"]
    # a bf16-trained checkpoint is float32 on disk and loads and evaluates like any other
    store = tiny_bases[precision]["store"]
    tensors = load_file(store.base_dir / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    record = store.load_base("cpu")
    assert all(p.dtype == torch.float32 for p in record.model.parameters())
    evaluation = evaluate(record.model, tiny_mnist.test_x, tiny_mnist.test_y)
    assert evaluation.accuracy == pytest.approx(first["metrics"]["accuracy"])
    assert evaluation.accuracy > 0.75  # it learned: 81% after these 16 steps on 2,000 images, in either precision


def test_bf16_and_fp32_differ_but_agree_on_accuracy(tiny_bases):
    fp32, bf16 = tiny_bases["fp32"]["metas"][0], tiny_bases["bf16"]["metas"][0]
    assert fp32["sha256"] != bf16["sha256"]  # bf16 really ran: its rounding moves the weights
    assert abs(fp32["metrics"]["accuracy"] - bf16["metrics"]["accuracy"]) < 0.02


# --- auto follows the probe -------------------------------------------------------------------------
@pytest.mark.parametrize(("speedup", "used"), [(2.5, "bf16"), (1.05, "fp32"), (0.6, "fp32")])
def test_auto_follows_the_probe(monkeypatch, speedup, used):
    monkeypatch.setattr(precision_module, "probe_bf16", lambda device: fake_probe(speedup))
    choice = resolve_precision("auto", CPU)
    assert (choice.requested, choice.used) == ("auto", used)
    assert choice.reason.startswith(used + ":")
    assert f"{speedup:.1f}x" in choice.reason or f"{speedup:.2f}x" in choice.reason
    # a forced choice never asks the probe
    monkeypatch.setattr(precision_module, "probe_bf16", lambda device: pytest.fail("probe called"))
    assert resolve_precision("fp32", CPU).used == "fp32"
    assert resolve_precision("bf16", CPU).used == "bf16"


@pytest.mark.parametrize("speedup", [2.5, 0.6])
def test_auto_trains_in_the_precision_the_probe_chose(monkeypatch, tiny_bases, tiny_mnist, speedup):
    monkeypatch.setattr(precision_module, "probe_bf16", lambda device: fake_probe(speedup))
    model, run = train_base(tiny_mnist, dataclasses.replace(TINY_TRAIN, precision="auto"))
    assert run.precision is not None
    used = run.precision.used
    assert used == ("bf16" if speedup > 1 else "fp32")
    # the very checkpoint of the forced precision: auto's choice is what actually ran
    store = ArtifactStore(tiny_bases[used]["store"].root)
    expected = store.load_base("cpu").model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize(("speedup", "used"), [(2.5, "bf16"), (0.6, "fp32")])
def test_default_precision_is_auto_and_model_json_records_its_choice(monkeypatch, tmp_path, tiny_mnist, speedup, used):
    """The README's default: `auto`, for training and fine-tuning; a default run says what it chose and why."""
    assert TrainConfig().precision == FinetuneConfig().precision == "auto"
    monkeypatch.setattr(precision_module, "probe_bf16", lambda device: fake_probe(speedup))
    meta = train_and_save_base(ArtifactStore(tmp_path), tiny_mnist, TrainConfig(device="cpu"))
    training = json.loads((tmp_path / "base" / "model.json").read_text())["training"]
    assert training == meta["training"]
    assert (training["precision"], training["precision_used"]) == ("auto", used)
    assert training["precision_reason"] == resolve_precision("auto", CPU).reason
    assert training["precision_reason"].startswith(f"{used}: ") and f"{speedup:.1f}" in training["precision_reason"]


def test_the_defaults_table_names_the_defaults():
    """docs/defaults.md's table says what was chosen; the dataclasses must agree with it."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "defaults.md").read_text()
    section = page.split("# Choosing the defaults", 1)[1].split("\n## ", 1)[0]
    chosen = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("setting", "---"):
            chosen[cells[0].split(" (")[0]] = re.match(r"[\w.+-]*", cells[2].strip("`")).group()  # "`auto`: ..."
    train, ft = TrainConfig(), FinetuneConfig()
    assert chosen["training precision"] == train.precision == ft.precision
    assert int(chosen["base batch size"]) == int(chosen["base batch size in bf16"]) == train.batch_size
    assert float(chosen["base learning rate"]) == train.lr and train.lr_schedule == "linear"
    assert float(chosen["fine-tuning replay"]) == ft.replay
    assert float(chosen["fine-tuning learning rate"]) == ft.lr and ft.lr_schedule == "linear"
    assert ft.rank == 8 and ft.steps == 600 and ft.batch_size == 128  # the fine-tuning rows' setting


def test_probe_measures_both_precisions_once_per_process():
    probe = probe_bf16(CPU)
    assert probe.fp32_s > 0 and probe.bf16_s > 0 and probe.speedup > 0
    assert probe.wall_s >= probe.fp32_s + probe.bf16_s  # the whole probe, both timings included
    assert probe_bf16(CPU) is probe  # cached
    assert torch.get_num_threads() >= 1


def test_bf16_where_unsupported_is_refused_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(precision_module, "bf16_unsupported_reason", lambda device: "no bfloat16 here")
    with pytest.raises(ConfigError) as info:
        resolve_precision("bf16", CPU)
    assert info.value.field == "precision"
    choice = resolve_precision("auto", CPU)
    assert choice.used == "fp32" and "no bfloat16 here" in choice.reason


# --- fine-tuning in bf16: float32 adapter files that PEFT reads ----------------------------------------
def test_bf16_finetuned_adapter_is_float32_and_peft_reads_it(peft, artifacts_copy, small_mnist):
    store = ArtifactStore(artifacts_copy)
    base, lora_model = load_base_for_lora(store, "cpu")
    config = dataclasses.replace(TINY_FINETUNE, precision="bf16")
    outcome = finetune_and_save_adapter(store, base, lora_model, small_mnist, config, name="bf16")
    folder = Path(outcome.path)
    metrics = json.loads((folder / ADAPTER_METRICS).read_text())
    assert metrics["finetune"]["precision"] == "bf16"
    assert metrics["finetune"]["precision_used"] == "bf16"
    assert metrics["finetune"]["precision_reason"] == "bf16: as requested"
    tensors = load_file(folder / ADAPTER_WEIGHTS)
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    assert all(p.dtype == torch.float32 for p in lora_model.parameters())

    ours = load_base_for_lora(store, "cpu")[1]
    store.load_adapter(ours, "bf16", base.fingerprint)
    ours.set_adapter("bf16")
    x = small_mnist.test_x[:500]
    peft_model = peft.PeftModel.from_pretrained(store.load_base("cpu").model, str(folder))
    peft_model.eval()
    with torch.no_grad():
        expected, got = ours(x), peft_model(x)
        base_logits = store.load_base("cpu").model(x)
    assert (expected - base_logits).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # evaluation runs in float32 whatever the training precision
    assert expected.dtype == torch.float32


def test_bf16_finetune_is_reproducible(small_base_record, small_mnist):
    config = dataclasses.replace(TINY_FINETUNE, precision="bf16")
    states = []
    for _ in range(2):
        lora_model = LoraModel(copy.deepcopy(small_base_record.model))
        run = finetune(lora_model, "r", small_mnist, config)
        assert run.precision is not None and run.precision.used == "bf16"
        states.append({k: v.clone() for k, v in lora_model.adapter_state_dict("r").items()})
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


# --- bad values ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["fp16", "", "BF16", None, 16])
def test_bad_precision_is_a_config_error_naming_precision(bad):
    for config in (TrainConfig(precision=bad), FinetuneConfig(precision=bad)):
        with pytest.raises(ConfigError) as info:
            config.validate()
        assert info.value.field == "precision"


def test_cli_refuses_a_bad_precision(capsys, tmp_path):
    for command in ("train", "finetune", "study"):
        code = main([command, "--precision", "fp16", "--artifacts", str(tmp_path)])
        err = capsys.readouterr().err
        assert code == 2
        assert err.startswith("error: --precision: ") and "fp16" in err and len(err.strip().splitlines()) == 1


def test_cli_finetune_says_and_records_the_precision(capsys, artifacts_copy, tmp_path):
    code = main(
        [
            *("finetune", "--digit", "3", "--steps", "3", "--ft-batch-size", "16", "--rank", "2"),
            *("--precision", "bf16", "--name", "cli-bf16", "--device", "cpu"),
            *("--artifacts", str(artifacts_copy), "--json", str(tmp_path / "out.json")),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "Precision: bf16: as requested (--precision bf16)" in out
    metrics = json.loads((artifacts_copy / "adapters" / "cli-bf16" / ADAPTER_METRICS).read_text())
    assert metrics["finetune"]["precision_used"] == "bf16"
    shutil.rmtree(artifacts_copy / "adapters" / "cli-bf16")


def test_lora_update_is_not_rounded_away_under_bf16_autocast():
    """A small adapter update survives bfloat16 autocast: the side path and the sum run in float32
    (in bfloat16, an update of 1e-4 on logits of size ~1 would round to nothing)."""
    from core_helpers import random_mlp, randomize_b

    from lora_core.lora import LoraConfig

    x = torch.randn(64, 784, generator=torch.Generator().manual_seed(0))
    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("a", LoraConfig(r=4, alpha=8.0, target_modules=("linear3",)), seed=0)
    randomize_b(lora_model, "a", std=1e-5)
    params = lora_model.mark_only_lora_trainable("a")
    lora_model.train()

    def effect(bf16: bool) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            adapted = lora_model(x)
            with lora_model.adapters_disabled():
                plain = lora_model(x)
        assert adapted.dtype == torch.float32
        return (adapted - plain.float()).detach()

    in_fp32, in_bf16 = effect(False), effect(True)
    assert in_fp32.abs().max() > 0
    torch.testing.assert_close(in_bf16, in_fp32, rtol=0.05, atol=in_fp32.abs().max().item() * 0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(lora_model(x), torch.arange(64) % 10)
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)
