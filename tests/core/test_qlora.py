"""QLoRA (Dettmers et al., 2023): LoRA trained on a 4-bit NF4 copy of the frozen base (torchao's NF4 tensor, with
double-quantised block scales). The adapter runs on that copy, W stays bit-identical, the 4-bit codes and scales
stay bit-identical through training, and a saved adapter rebuilds the same NF4 base when loaded."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from core_helpers import random_mlp, randomize_b

from lora_core.errors import ArtifactError, ConfigError, StaleAdapterError
from lora_core.lab.proof import quantized_rows, quantized_sentence
from lora_core.lab.strength import strength_curve
from lora_core.lab.study import finetune_and_save_adapter
from lora_core.lab.truncation import _with_updates, adapter_updates
from lora_core.lora import LoraConfig, LoraLinear, LoraModel
from lora_core.lora.nf4 import (
    NF4_LEVELS,
    Nf4Config,
    Nf4Linear,
    block_normalised,
    check_base_precision,
    check_block_size,
    import_nf4,
    level_histogram,
    scaler_block_size,
)
from lora_core.store.artifacts import ADAPTER_CONFIG, ADAPTER_METRICS, ArtifactStore
from lora_core.train import FinetuneConfig

CONFIG = LoraConfig(r=4, alpha=8)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(16, 784, generator=torch.Generator().manual_seed(0))


def nf4_reference(mlp: torch.nn.Module, block_size: int) -> torch.nn.Module:
    """A plain copy of `mlp` whose quantisable weights hold torchao's own dequantised NF4 values."""
    copy = random_mlp(0)
    copy.load_state_dict(mlp.state_dict())
    to_nf4 = import_nf4().to_nf4
    with torch.no_grad():
        for layer in (copy.linear1, copy.linear2, copy.linear3):
            n = layer.weight.numel()
            if n % block_size == 0:
                layer.weight.copy_(
                    to_nf4(layer.weight, block_size, scaler_block_size(n // block_size)).get_original_weight()
                )
    return copy


def test_an_nf4_layer_is_torchao_s_nf4_weight_in_under_a_fifth_of_the_bytes(x):
    layer = random_mlp(0).linear1
    nf4 = Nf4Linear(layer, 64)
    reference = import_nf4().to_nf4(layer.weight.detach(), 64, 250).get_original_weight()
    with torch.no_grad():
        torch.testing.assert_close(nf4(x), F.linear(x, reference, layer.bias), atol=1e-6, rtol=0)
        error = (nf4.weight - layer.weight).abs().max()
    assert 0 < error < 0.2 * layer.weight.abs().max()  # at most half the widest gap between levels (0.72 to 1)
    assert nf4.scaler_block_size == 250  # 12,250 blocks: QLoRA's 256 does not divide them
    assert nf4.nbytes <= layer.weight.numel() * 4 / 5
    torch.testing.assert_close(nf4.parts()["nf4"], torch.tensor(NF4_LEVELS), atol=1e-4, rtol=0)  # QLoRA's levels
    assert nf4.bias is layer.bias  # shared, never copied


def test_block_normalised_values_lie_in_minus_one_to_one_with_each_block_touching_an_end():
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    values = block_normalised(w, 32).reshape(-1, 32)
    assert values.abs().max() == 1.0 and torch.all(values.abs().amax(dim=1) == 1.0)


def test_a_qlora_adapter_runs_on_the_nf4_base_and_off_gives_the_float32_base(x):
    base = random_mlp(0)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with torch.no_grad():
        fp32_logits = base(x)
        nf4_logits = nf4_reference(base, 64)(x)
    model = LoraModel(base)
    model.add_adapter("q", CONFIG, seed=0, quantization=Nf4Config())
    assert set(model.quantized_layers("q")) == {"linear1", "linear2"}  # linear3's 20,000 weights: not in 64s
    with torch.no_grad():
        torch.testing.assert_close(model(x), nf4_logits, atol=1e-5, rtol=0)  # B = 0: the NF4 base itself
        assert (model(x) - fp32_logits).abs().max() > 1e-4
        with model.adapters_disabled():
            assert torch.equal(model(x), fp32_logits)
    assert all(torch.equal(before[k], v) for k, v in model.base_state_dict().items())
    record = model.quantized_record("q")
    assert record is not None and record["fp32_layers"] == {
        "linear3": "its 20,000 weights do not divide into blocks of 64"
    }
    assert model.quantized_record("q")["codes_sha256"]["before"] == record["codes_sha256"]["after"]


def test_a_layer_the_adapter_does_not_adapt_still_runs_on_nf4(x):
    base = random_mlp(0)
    with torch.no_grad():
        nf4_logits = nf4_reference(base, 32)(x)  # block 32: every layer, linear3 too
    model = LoraModel(base)
    model.add_adapter("q", LoraConfig(r=4, alpha=8, target_modules=("linear3",)), quantization=Nf4Config(32))
    with torch.no_grad():
        torch.testing.assert_close(model(x), nf4_logits, atol=1e-5, rtol=0)


def test_merging_and_weight_zero_use_the_nf4_base_and_bases_do_not_mix(x):
    model = LoraModel(random_mlp(0))
    model.add_adapter("q", CONFIG, seed=0, quantization=Nf4Config())
    model.add_adapter("q2", CONFIG, seed=1, quantization=Nf4Config())
    randomize_b(model, "q")
    model.set_adapter("q")
    with torch.no_grad():
        unmerged = model(x)
        model.merge()
        torch.testing.assert_close(model(x), unmerged, atol=1e-4, rtol=0)
        model.unmerge()
        model.set_adapter(["q"], weights=[0.0])
        at_zero = model(x)
        model.set_adapter("q2")  # fresh (B = 0): the NF4 base
        torch.testing.assert_close(at_zero, model(x), atol=1e-6, rtol=0)
    model.add_adapter("f", CONFIG, seed=0)
    with pytest.raises(ConfigError, match="'q' runs on the NF4 base and 'f' on the float32 base"):
        model.set_adapter(["q", "f"])
    model.delete_adapter("q")
    model.delete_adapter("q2")
    assert all(not layer.quantized for layer in model.lora_layers().values())  # the NF4 copy goes with its adapters


def test_training_on_nf4_keeps_w_and_the_codes_and_a_saved_adapter_rebuilds_its_base(small_base, small_mnist, tmp_path):
    store = ArtifactStore(tmp_path)
    store.save_base(small_base, {})
    record = store.load_base("cpu")
    model = LoraModel(record.model)
    config = FinetuneConfig(digits=(3,), rank=4, alpha=8, steps=8, batch_size=32, device="cpu", base_precision="nf4")
    outcome = finetune_and_save_adapter(store, record, model, small_mnist, config, "q")
    metrics = outcome.metrics
    assert metrics["base_tensors"]["before"] == metrics["base_tensors"]["after"]  # W: untouched
    quantized = metrics["quantized_base"]
    codes = quantized["codes_sha256"]
    assert len(codes["before"]) == 15 and codes["before"] == codes["after"]  # 3 layers x 5 parts, all the same
    assert quantized["sha256"] == model.quantized_sha256("q") and f"sha256 {quantized['sha256'][:12]}" in (
        quantized_sentence(quantized)
    )
    assert all(layer["bytes"] <= layer["fp32_bytes"] / 5 for layer in quantized["layers"].values())
    assert metrics["finetune"]["base_precision"] == "nf4"
    assert "bit-identical after training" in quantized_sentence(quantized)
    assert {row["same"] for row in quantized_rows(quantized)} == {"yes"}
    assert json.loads((store.adapter_dir("q") / ADAPTER_CONFIG).read_text())["peft_type"] == "LORA"

    x = small_mnist.test_x[:300]
    model.set_adapter("q")
    with torch.no_grad():
        trained = model(x)
    fresh = LoraModel(store.load_base("cpu").model)
    store.load_adapter(fresh, "q", record.fingerprint)
    fresh.set_adapter("q")
    with torch.no_grad():
        assert torch.equal(fresh(x), trained)
    assert metrics["quantized_base"]["base_accuracy"]["accuracy"] != metrics["after"]["accuracy"]

    # a record whose codes differ from the rebuilt ones, or that names a block size no layer takes, is refused
    path = store.adapter_dir("q") / ADAPTER_METRICS
    saved = json.loads(path.read_text())
    saved["quantized_base"]["codes_sha256"]["after"]["linear1.weight.quantized_data"] = "0" * 64
    path.write_text(json.dumps(saved))
    with pytest.raises(StaleAdapterError, match="codes and scales differ"):
        store.load_adapter(LoraModel(store.load_base("cpu").model), "q", record.fingerprint)
    saved["quantized_base"]["block_size"] = 4094
    path.write_text(json.dumps(saved))
    with pytest.raises(ArtifactError, match="no layer's weight count divides into blocks of 4094"):
        store.load_adapter(LoraModel(store.load_base("cpu").model), "q", record.fingerprint)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"use_dora": True}, "not DoRA"),
        ({"use_vera": True}, "not VeRA"),
        ({"init": "pissa"}, "not PiSSA"),
        ({"nf4_block_size": 63}, "even whole number"),
        ({"nf4_block_size": 4096}, "no layer's weight count divides into blocks of 4096"),
        ({"base_precision": "int4"}, "fp32, nf4"),
    ],
)
def test_what_the_nf4_base_cannot_take_is_refused_by_name(fields, message):
    config = FinetuneConfig(digits=(1,), **{"base_precision": "nf4", **fields})
    with pytest.raises(ConfigError, match=message):
        config.validate(random_mlp(0))


def test_strength_and_truncation_of_a_qlora_adapter_run_on_its_nf4_base(x):
    model = LoraModel(random_mlp(0))
    model.add_adapter("q", CONFIG, seed=0, quantization=Nf4Config())
    randomize_b(model, "q", std=0.2)
    with torch.no_grad():
        model.set_adapter("q")
        adapted = model(x)
        with model.active_adapters_kept():
            model.set_adapter(["q"], weights=[0.0])
            nf4_base = model(x)
        every_direction = {name: u.truncated(u.rank) for name, u in adapter_updates(model, "q").items()}
        merged = _with_updates(model, "q", every_direction)(x)  # the adapter merged into the base it runs on
    torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=0)
    assert (merged - nf4_base).abs().max() > 1e-2
    y = adapted.argmax(dim=1)
    assert strength_curve(model, "q", x, y, strengths=(0.0,)).at(0.0).predictions == nf4_base.argmax(dim=1).tolist()


@pytest.mark.parametrize(
    ("value", "ok"),
    [(2, True), (4096, True), (64, True), (0, False), (63, False), (4098, False), (True, False), (64.0, False)],
)
def test_block_sizes_are_even_whole_numbers_from_2_to_4096(value, ok):
    if ok:
        check_block_size(value)
        return
    with pytest.raises(ConfigError, match="even whole number from 2 to 4096") as info:
        check_block_size(value)
    assert info.value.field == "nf4_block_size"


def test_a_block_size_no_layer_takes_names_every_layer_s_size_and_an_unknown_precision_is_refused():
    layers = {"linear1": random_mlp(0).linear1, "linear3": random_mlp(0).linear3}
    with pytest.raises(ConfigError, match=r"\(linear1 784,000, linear3 20,000\); choose") as info:
        Nf4Config(4094).validate(layers)
    assert info.value.field == "nf4_block_size"
    Nf4Config(64).validate(layers)  # linear1 divides into 64s: enough
    with pytest.raises(ConfigError, match="must be one of fp32, nf4, got 'int4'") as info:
        check_base_precision("int4")
    assert info.value.field == "base_precision"


def test_scaler_groups_take_256_blocks_where_256_divides_them_else_the_largest_divisor_below():
    assert [scaler_block_size(n) for n in (1024, 12250, 31250, 10, 257)] == [256, 250, 250, 10, 1]


def test_an_nf4_record_names_its_config_and_a_foreign_one_is_refused():
    assert Nf4Config.from_record({"format": "nf4", "block_size": 32}) == Nf4Config(32)
    with pytest.raises(ConfigError, match="format must be 'nf4', got 'int8'") as info:
        Nf4Config.from_record({"format": "int8", "block_size": 32})
    assert info.value.field == "quantized_base"
    with pytest.raises(ConfigError, match="even whole number"):
        Nf4Config.from_record({"format": "nf4", "block_size": "64"})


def test_a_layer_that_does_not_divide_or_that_torchao_refuses_is_a_config_error(monkeypatch):
    mlp = random_mlp(0)
    with pytest.raises(ConfigError, match="this layer stays float32: its 20,000 weights do not divide") as info:
        Nf4Linear(mlp.linear3, 64)
    assert info.value.field == "nf4_block_size"
    layer = Nf4Linear(mlp.linear3, 32)
    assert (layer.block_size, layer.scaler_block_size) == (32, 125)  # 625 blocks
    assert logging.getLogger("torch.utils._pytree").level == logging.ERROR  # torchao's import warning, silenced

    def refuse(*args: object) -> None:
        raise NotImplementedError("no NF4 kernel")

    monkeypatch.setattr(import_nf4(), "to_nf4", refuse)
    with pytest.raises(ConfigError, match=r"cannot quantise to NF4 on cpu here \(no NF4 kernel\); use fp32") as info:
        Nf4Linear(mlp.linear1, 64)
    assert info.value.field == "base_precision"


def test_the_level_histogram_counts_every_weight_and_gives_each_level_its_share():
    levels = torch.tensor(NF4_LEVELS, dtype=torch.float64)
    weight = levels.repeat(8).reshape(2, 64) * 0.5  # blocks of 64 holding each level four times; absmax 0.5
    histogram = level_histogram(weight, 64, bins=20)
    assert block_normalised(weight, 64).dtype == torch.float32
    assert len(histogram.edges) == 21 and sum(histogram.counts) == histogram.weights == 128
    assert histogram.levels == list(NF4_LEVELS)
    assert histogram.level_shares == pytest.approx([1 / 16] * 16)  # each value sits on its own level
    grid = torch.linspace(-1, 1, 16, dtype=torch.float64)
    nearest = (levels.view(-1, 1) - grid.view(1, -1)).abs().argmin(dim=1)
    expected = torch.bincount(nearest, minlength=16).double() / 16
    assert histogram.uniform_shares == pytest.approx(expected.tolist())
    assert sum(histogram.uniform_shares) == pytest.approx(1.0)


def test_the_record_counts_each_nf4_layer_and_a_record_that_differs_is_refused_and_leaves_nothing_behind():
    model = LoraModel(random_mlp(0))
    model.add_adapter("q", CONFIG, quantization=Nf4Config())
    record = model.quantized_record("q")
    assert (record["format"], record["block_size"], record["sha256"]) == ("nf4", 64, model.quantized_sha256("q"))
    assert record["implementation"] == f"torchao {importlib.metadata.version('torchao')}"
    assert record["layers"]["linear1"] == {
        "weights": 784_000,
        "scaler_block_size": 250,
        "bytes": 392_000 + 12_250 + 49 * 4 + 4 + 16 * 4,  # codes, int8 scales, group factors, their mean, levels
        "fp32_bytes": 3_136_000,
    }
    tampered = json.loads(json.dumps(record))
    tampered["codes_sha256"]["after"]["linear2.weight.quantized_scalers"] = "0" * 64
    with pytest.raises(StaleAdapterError, match=r"codes and scales differ .*\(linear2.weight.quantized_scalers\)"):
        model.add_adapter("t", CONFIG, meta={"quantized_base": tampered})
    assert "t" not in model.adapters and all("t" not in layer.adapter_base for layer in model.lora_layers().values())
    model.add_adapter("same", CONFIG, meta={"quantized_base": record})  # the record as written: accepted
    assert model.quantized_layers("same").keys() == model.quantized_layers("q").keys()
    fp32 = LoraModel(random_mlp(0))
    fp32.add_adapter("f", CONFIG)
    assert fp32.quantized_record("f") is None and fp32.quantized_layers("f") == {}


def test_adapters_combined_into_one_on_nf4_stay_on_nf4(x):
    model = LoraModel(random_mlp(0))
    for name, seed in (("q", 1), ("q2", 2)):
        model.add_adapter(name, CONFIG, seed=0, quantization=Nf4Config())
        randomize_b(model, name, seed=seed)
    model.add_weighted_adapter(["q", "q2"], [1.0, 0.5], "sum")
    assert set(model.quantized_layers("sum")) == {"linear1", "linear2"}
    assert model.adapter_meta("sum")["quantized_base"]["block_size"] == 64
    with torch.no_grad():
        model.set_adapter(["q", "q2"], weights=[1.0, 0.5])
        combined = model(x)
        model.set_adapter("sum")
        torch.testing.assert_close(model(x), combined, atol=1e-5, rtol=0)


def test_a_lora_layer_on_its_own_refuses_to_combine_adapters_of_two_bases():
    layer = LoraLinear(random_mlp(0).linear2)
    layer.add_adapter("q", CONFIG, layer="linear2")
    layer.add_adapter("f", CONFIG, layer="linear2")
    assert layer.attach_quantized("q", Nf4Config()) is layer.quantized["nf4-64"]
    with pytest.raises(ConfigError, match=r"^adapters: adapters trained on different bases \(NF4 and float32\) cannot"):
        layer.set_combination([("q", 1.0), ("f", 1.0)])
    layer.set_adapter("q")
    assert layer.active_base() is layer.quantized["nf4-64"]
    layer.delete_adapter("q")
    assert layer.quantized == {} and layer.active_base() is layer.base_layer


def test_an_nf4_layer_without_bias_and_under_bfloat16_autocast(x):
    plain = torch.nn.Linear(784, 64, bias=False)
    nf4 = Nf4Linear(plain, 64)
    with torch.no_grad():
        torch.testing.assert_close(nf4(x), F.linear(x, nf4.weight), atol=1e-6, rtol=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert Nf4Linear(random_mlp(0).linear1, 64)(x).dtype == torch.bfloat16  # the bias joins in bf16


def test_without_torchao_nf4_is_a_config_error_that_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization.quantize_.workflows.nf4", None)
    with pytest.raises(ConfigError, match=r"NF4 needs torchao \(pip install torchao\)") as info:
        import_nf4()
    assert info.value.field == "base_precision"


def test_the_histogram_spans_minus_one_to_one_and_names_every_level_even_unused_ones():
    weight = -torch.randn(4, 64, generator=torch.Generator().manual_seed(0)).abs()  # no positive value at all
    histogram = level_histogram(weight, 64, bins=10)
    assert histogram.edges[0] == -1.0 and histogram.edges[-1] == 1.0 and len(histogram.counts) == 10
    expected, _ = np.histogram(block_normalised(weight, 64).numpy(), bins=10, range=(-1.0, 1.0))
    assert histogram.counts == expected.tolist()
    assert len(histogram.level_shares) == len(histogram.uniform_shares) == 16
    assert histogram.level_shares[8:] == [0.0] * 8  # the positive levels: none used, each still listed
