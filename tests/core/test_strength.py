"""An adapter's strength (lora_core.lab.strength): 0 is the base exactly, 1 the adapter exactly, and in between
the update scales; the grid's figures are what the Evaluation page's control looks up."""

from __future__ import annotations

import pytest
import torch
from core_helpers import random_mlp, randomize_b

from lora_core.errors import ConfigError
from lora_core.evaluate import evaluate, predict
from lora_core.lab.strength import STRENGTHS, strength_curve
from lora_core.lora import LoraConfig, LoraModel


@pytest.fixture
def model_and_data() -> tuple[LoraModel, torch.Tensor, torch.Tensor]:
    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("a", LoraConfig(r=4, alpha=8), seed=0)
    lora_model.add_adapter("b", LoraConfig(r=2, alpha=2), seed=1)
    randomize_b(lora_model, "a", seed=3, std=0.5)
    randomize_b(lora_model, "b", seed=4, std=0.5)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(400, 784, generator=generator)
    y = torch.randint(0, 10, (400,), generator=generator)
    return lora_model, x, y


def test_the_grid_runs_from_0_to_2_and_holds_0_and_1() -> None:
    assert STRENGTHS[0] == 0.0 and STRENGTHS[-1] == 2.0 and 1.0 in STRENGTHS
    assert all(b > a for a, b in zip(STRENGTHS, STRENGTHS[1:]))


def test_strength_0_is_the_base_and_1_the_adapter_to_the_last_bit(model_and_data) -> None:
    lora_model, x, y = model_and_data
    curve = strength_curve(lora_model, "a", x, y)
    with lora_model.adapters_disabled():
        base = evaluate(lora_model, x, y)
    lora_model.set_adapter("a")
    adapted = evaluate(lora_model, x, y)
    assert curve.at(0.0) == base
    assert curve.at(1.0) == adapted
    assert curve.at(2.0).predictions != adapted.predictions  # the update does act, twice as strongly
    assert [e.accuracy for e in curve.evaluations] == curve.overall()


def test_a_strength_scales_the_update_itself(model_and_data) -> None:
    """Between 0 and 1 the logits are the base's plus s times the update (checked on the logits, layer 1 only)."""
    lora_model, x, _ = model_and_data
    lora_model.set_adapter(["a"], weights=[0.5])
    layer = lora_model.lora_layers()["linear1"]
    a, b = layer.lora_A["a"].weight, layer.lora_B["a"].weight
    expected = layer.base_layer(x) + 0.5 * (x @ a.T @ b.T) * layer.scaling["a"]
    torch.testing.assert_close(layer(x), expected)


def test_the_active_adapters_are_restored_whatever_they_were(model_and_data) -> None:
    lora_model, x, y = model_and_data
    lora_model.set_adapter("b")
    strength_curve(lora_model, "a", x, y, strengths=(0.0, 0.5))
    assert lora_model.active_adapter == "b"
    lora_model.set_adapter(["a", "b"], weights=[0.3, 0.7])
    before = predict(lora_model, x)
    strength_curve(lora_model, "a", x, y, strengths=(2.0,))
    assert lora_model.adapter_weights == {"a": 0.3, "b": 0.7}
    assert torch.equal(predict(lora_model, x), before)
    lora_model.set_adapter(None)
    strength_curve(lora_model, "a", x, y, strengths=(1.0,))
    assert lora_model.active_adapters == []


def test_accuracy_on_digits_counts_their_images_together(model_and_data) -> None:
    lora_model, x, y = model_and_data
    curve = strength_curve(lora_model, "a", x, y, strengths=(0.0, 1.0))
    for evaluation, value in zip(curve.evaluations, curve.accuracy_on([3, 5])):
        correct = evaluation.confusion[3][3] + evaluation.confusion[5][5]
        assert value == correct / (evaluation.support[3] + evaluation.support[5])


def test_off_the_grid_and_unknown_adapters_are_refused(model_and_data) -> None:
    lora_model, x, y = model_and_data
    curve = strength_curve(lora_model, "a", x, y, strengths=(0.0, 1.0))
    with pytest.raises(ConfigError, match="not on the curve's grid"):
        curve.at(0.3)
    with pytest.raises(ConfigError):
        strength_curve(lora_model, "nosuch", x, y)
    with pytest.raises(ConfigError, match="at least one"):
        strength_curve(lora_model, "a", x, y, strengths=())
