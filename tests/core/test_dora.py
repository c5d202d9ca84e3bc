"""DoRA (Liu et al., 2024; PEFT's use_dora): W' = m (W + s B A) / |W + s B A| per output row, m trainable and
starting at |W|. What it computes, what it trains, what it refuses, and that W itself never moves."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from core_helpers import random_mlp, randomize_b

from lora_core.errors import ConfigError
from lora_core.lab.truncation import truncation_curve
from lora_core.lora import LoraConfig, LoraModel
from lora_core.model import MLP
from lora_core.params import parameter_table
from lora_core.train import FinetuneConfig, finetune

DORA = LoraConfig(r=3, alpha=6, use_dora=True)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(32, 784, generator=torch.Generator().manual_seed(0))


def dora_model(seed: int = 1) -> LoraModel:
    """A DoRA adapter 'd' with non-zero B and magnitudes away from |W|."""
    model = LoraModel(random_mlp(0))
    model.add_adapter("d", DORA, seed=0)
    randomize_b(model, "d", seed=seed, std=0.2)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.lora_layers().values():
            m = layer.lora_magnitude_vector["d"].weight
            m.mul_(torch.rand(m.shape, generator=gen) + 0.5)
    return model


def by_hand(model: LoraModel, x: torch.Tensor) -> torch.Tensor:
    """The DoRA formula written out layer by layer, with W taken from the frozen base."""
    h = x
    for i, layer in enumerate(model.lora_layers().values()):
        w, bias = layer.base_layer.weight, layer.base_layer.bias
        update = layer.scaling["d"] * layer.lora_B["d"].weight @ layer.lora_A["d"].weight
        merged = layer.lora_magnitude_vector["d"].weight[:, None] * (w + update) / (w + update).norm(dim=1)[:, None]
        h = h @ merged.T + bias
        if i < 2:
            h = torch.relu(h)
    return h


def test_a_new_dora_adapter_starts_as_the_base_model(x):
    model = LoraModel(random_mlp(0))
    with torch.no_grad():
        base = model(x)
        model.add_adapter("d", DORA, seed=0)
        torch.testing.assert_close(model(x), base, atol=1e-5, rtol=0)
    for layer in model.lora_layers().values():
        assert torch.equal(layer.lora_magnitude_vector["d"].weight, layer.base_layer.weight.norm(dim=1))


def test_dora_computes_the_magnitude_times_the_normalised_direction(x):
    model = dora_model()
    with torch.no_grad():
        ours, expected = model(x), by_hand(model, x)
        torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-5)
        for layer in model.lora_layers().values():
            layer.merge()
        torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=1e-5)  # merged: the same model
        for layer in model.lora_layers().values():
            layer.unmerge()
        plain = MLP()
        plain.load_state_dict(model.base_state_dict())
        with model.adapters_disabled():
            assert torch.equal(model(x), plain(x))  # switched off: the base model exactly


def test_dora_trains_a_b_and_the_magnitude_and_never_w(small_base, small_mnist):
    before = {k: v.clone() for k, v in LoraModel(small_base).base_state_dict().items()}
    model = LoraModel(small_base)
    config = FinetuneConfig(digits=(9,), rank=2, alpha=4, steps=5, batch_size=32, device="cpu", use_dora=True)
    finetune(model, "d", small_mnist, config)
    for name, layer in model.lora_layers().items():
        assert not torch.equal(layer.lora_magnitude_vector["d"].weight, layer.base_layer.weight.norm(dim=1)), name
    after = model.base_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the frozen base, bit for bit
    table = parameter_table(model, config.lora_config())
    assert table.lora_params == sum(t.numel() for t in model.adapter_state_dict("d").values())
    assert "m params" in table.columns() and "use_dora" in config.lora_config().to_peft()
    assert "use_dora" not in dataclasses.replace(config, use_dora=False).lora_config().to_peft()


def test_dora_is_refused_where_it_has_no_meaning(x):
    model = dora_model()
    model.add_adapter("plain", LoraConfig(r=2), seed=0)
    model.set_adapter("d")
    for names, weights in ((["d"], [0.5]), (["d", "plain"], [1.0, 1.0])):
        with pytest.raises(ConfigError, match="DoRA adapter 'd' cannot be weighted"):
            model.set_adapter(names, weights)
    assert model.active_adapter == "d"  # refused before any layer changed
    with pytest.raises(ConfigError, match="DoRA adapter: its change to W rescales every row"):
        truncation_curve(model, "d", x, torch.zeros(len(x), dtype=torch.long))


def test_dora_tensors_round_trip_under_peft_keys(x):
    model = dora_model()
    tensors = model.adapter_state_dict("d")
    assert model.expected_adapter_shapes(DORA) == {k: tuple(v.shape) for k, v in tensors.items()}
    assert tensors["base_model.model.linear2.lora_magnitude_vector"].shape == (2000,)
    again = LoraModel(MLP())
    again.model.load_state_dict(model.base_state_dict())
    again.load_adapter_tensors("d", DORA, tensors)
    again.set_adapter("d")
    model.set_adapter("d")
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
