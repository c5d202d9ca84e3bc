"""Interoperability with Hugging Face PEFT: our adapter folders load in PEFT, PEFT's save in our format."""

from __future__ import annotations

import json

import pytest
import torch
from core_helpers import random_mlp, randomize_b
from safetensors.torch import load_file

from lora_core.lora import LoraConfig, LoraModel
from lora_core.model import MLP
from lora_core.store.artifacts import ADAPTER_CONFIG, ADAPTER_WEIGHTS, ArtifactStore


def test_peft_loads_our_trained_adapter_with_the_same_logits(peft, trained_artifacts, small_mnist):
    store = ArtifactStore(trained_artifacts)
    record = store.load_base("cpu")
    ours = LoraModel(record.model)
    store.load_adapter(ours, "small", record.fingerprint)
    ours.set_adapter("small")
    x = small_mnist.test_x[:1000]
    with torch.no_grad():
        expected = ours(x)
        base_only = store.load_base("cpu").model(x)

    fresh = MLP(*record.model.hidden)  # a fresh MLP given our base weights
    fresh.load_state_dict(store.load_base("cpu").model.state_dict())
    peft_model = peft.PeftModel.from_pretrained(fresh, str(store.adapter_dir("small")))
    peft_model.eval()
    with torch.no_grad():
        got = peft_model(x)
    assert (expected - base_only).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # PEFT holds the very tensors we saved
    tensors = load_file(store.adapter_dir("small") / ADAPTER_WEIGHTS)
    for name in ("linear1", "linear2", "linear3"):
        layer = getattr(peft_model.base_model.model, name)
        assert torch.equal(layer.lora_A["default"].weight, tensors[f"base_model.model.{name}.lora_A.weight"])
        assert torch.equal(layer.lora_B["default"].weight, tensors[f"base_model.model.{name}.lora_B.weight"])
    # and the base weights inside PEFT are ours, untouched
    with peft_model.disable_adapter(), torch.no_grad():
        assert torch.equal(peft_model(x), base_only)


@pytest.mark.parametrize(
    "config",
    [
        LoraConfig(r=3, alpha=5, target_modules=("linear2",), use_rslora=True),
        LoraConfig(r=2, alpha=7, target_modules=("linear1", "linear3"), init="gaussian"),
    ],
    ids=["rslora-linear2", "gaussian-linear1-linear3"],
)
def test_peft_agrees_on_scale_and_subsets(peft, tmp_path, config):
    store = ArtifactStore(tmp_path)
    meta = store.save_base(random_mlp(1), {})
    ours = LoraModel(store.load_base().model)
    ours.add_adapter("x", config, seed=0)
    randomize_b(ours, "x", std=0.2)
    folder = store.save_adapter(ours, "x", {}, meta["sha256"])
    x = torch.randn(16, 784, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(x)
    peft_model = peft.PeftModel.from_pretrained(store.load_base().model, str(folder))
    with torch.no_grad():
        torch.testing.assert_close(peft_model(x), expected, atol=1e-5, rtol=0)
    for name in ("linear1", "linear2", "linear3"):
        layer = getattr(peft_model.base_model.model, name)
        assert hasattr(layer, "lora_A") == (name in config.target_modules)
        if name in config.target_modules:
            assert layer.scaling["default"] == pytest.approx(config.scale)


def test_peft_saved_adapter_matches_our_format(peft, tmp_path):
    base = random_mlp(2)
    peft_config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["linear1", "linear3"], lora_dropout=0.0)
    peft_model = peft.get_peft_model(base, peft_config)
    with torch.no_grad():
        for name in ("linear1", "linear3"):
            layer = getattr(peft_model.base_model.model, name)
            layer.lora_B["default"].weight.normal_(0, 0.1)
    peft_model.save_pretrained(str(tmp_path))
    data = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    config = LoraConfig.from_peft(data)
    assert config.r == 4 and config.alpha == 8
    assert sorted(config.target_modules) == ["linear1", "linear3"]
    tensors = load_file(tmp_path / ADAPTER_WEIGHTS)
    ours = LoraModel(random_mlp(2))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == ours.expected_adapter_shapes(config)
    # PEFT's tensors loaded into our model give PEFT's logits
    ours.load_adapter_tensors("p", config, tensors)
    ours.set_adapter("p")
    x = torch.randn(8, 784, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), peft_model(x), atol=1e-5, rtol=0)


def test_peft_loads_our_dora_adapter_and_we_load_peft_s_with_the_same_logits(peft, tmp_path):
    """DoRA both ways: our adapter folder (use_dora, lora_magnitude_vector) in PeftModel.from_pretrained, and
    an adapter PEFT trained and saved, in ours."""
    store = ArtifactStore(tmp_path / "ours")
    meta = store.save_base(random_mlp(1), {})
    ours = LoraModel(store.load_base().model)
    ours.add_adapter("d", LoraConfig(r=3, alpha=6, use_dora=True), seed=0)
    randomize_b(ours, "d", std=0.2)
    with torch.no_grad():
        for layer in ours.lora_layers().values():
            layer.lora_magnitude_vector["d"].weight.mul_(1.5)
    folder = store.save_adapter(ours, "d", {}, meta["sha256"])
    x = torch.randn(16, 784, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours(x)
        assert (expected - store.load_base().model(x)).abs().max() > 0.1  # the adapter does something
        peft_model = peft.PeftModel.from_pretrained(store.load_base().model, str(folder))
        torch.testing.assert_close(peft_model(x), expected, atol=1e-5, rtol=0)

    base = random_mlp(2)
    peft_config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["linear1", "linear2"], use_dora=True)
    trained = peft.get_peft_model(base, peft_config)
    with torch.no_grad():
        for name in ("linear1", "linear2"):
            layer = getattr(trained.base_model.model, name)
            layer.lora_B["default"].weight.normal_(0, 0.1)
            layer.lora_magnitude_vector["default"].weight.mul_(0.8)
    trained.save_pretrained(str(tmp_path / "theirs"))
    config = LoraConfig.from_peft(json.loads((tmp_path / "theirs" / ADAPTER_CONFIG).read_text()))
    tensors = load_file(tmp_path / "theirs" / ADAPTER_WEIGHTS)
    assert config.use_dora and {k: tuple(v.shape) for k, v in tensors.items()} == ours.expected_adapter_shapes(config)
    mine = LoraModel(random_mlp(2))
    mine.load_adapter_tensors("p", config, tensors)
    mine.set_adapter("p")
    with torch.no_grad():
        torch.testing.assert_close(mine(x), trained(x), atol=1e-5, rtol=0)
