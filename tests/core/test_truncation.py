"""Rank truncation (lora_core.lab.truncation): the top k directions of each layer's update, exactly; the last k is
the adapter merged into W; the model itself is never changed."""

from __future__ import annotations

import pytest
import torch
from core_helpers import random_mlp, randomize_b

from lora_core.errors import ConfigError
from lora_core.evaluate import accuracy_on, evaluate
from lora_core.lab.truncation import adapter_updates, layer_update, truncation_curve, truncation_ranks
from lora_core.lora import LoraConfig, LoraModel


@pytest.fixture
def model_and_data() -> tuple[LoraModel, torch.Tensor, torch.Tensor]:
    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("a", LoraConfig(r=6, alpha=12), seed=0)
    randomize_b(lora_model, "a", seed=3, std=0.5)
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(400, 784, generator=generator)
    y = torch.randint(0, 10, (400,), generator=generator)
    return lora_model, x, y


def test_the_grid_holds_every_small_k_then_about_root_2_apart_and_the_rank() -> None:
    assert truncation_ranks(1) == (1,)
    assert truncation_ranks(6) == (1, 2, 3, 4, 5, 6)
    assert truncation_ranks(64) == (1, 2, 3, 4, 5, 6, 7, 8, 11, 16, 23, 32, 45, 64)
    assert truncation_ranks(10) == (1, 2, 3, 4, 5, 6, 7, 8, 10)
    with pytest.raises(ConfigError, match="rank"):
        truncation_ranks(0)


def test_the_directions_rebuild_the_update_and_the_top_k_is_its_best_rank_k_approximation() -> None:
    generator = torch.Generator().manual_seed(0)
    b, a = torch.randn(50, 5, generator=generator), torch.randn(5, 30, generator=generator)
    update = layer_update(b, a, scale=0.5)
    delta = 0.5 * b @ a
    torch.testing.assert_close(update.delta, delta)
    assert torch.equal(update.truncated(5), update.delta) and torch.equal(update.truncated(9), update.delta)
    torch.testing.assert_close((update.u * update.s) @ update.v.T, delta, atol=1e-5, rtol=1e-5)
    # Eckart-Young: the SVD's own top-2 approximation of the full product, and the same error
    u, s, vh = torch.linalg.svd(delta.double())
    best = ((u[:, :2] * s[:2]) @ vh[:2]).float()
    torch.testing.assert_close(update.truncated(2), best, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(update.s, s[:5].float(), atol=1e-5, rtol=1e-5)
    assert update.energy(5) == pytest.approx(1.0)
    assert update.energy(2) == pytest.approx(float((s[:2] ** 2).sum() / (s**2).sum()))


def test_the_last_k_is_the_adapter_merged_and_a_smaller_k_changes_the_predictions(model_and_data) -> None:
    lora_model, x, y = model_and_data
    lora_model.set_adapter("a")
    adapted = evaluate(lora_model, x, y)
    curve = truncation_curve(lora_model, "a", x, y)
    assert curve.ranks == (1, 2, 3, 4, 5, 6) and curve.layer_ranks == {"linear1": 6, "linear2": 6, "linear3": 6}
    full = curve.at(6)
    agree = sum(p == q for p, q in zip(full.predictions, adapted.predictions)) / len(adapted.predictions)
    assert agree >= 0.995  # merged into W: the same predictions to float rounding
    assert curve.at(1).predictions != full.predictions
    assert curve.overall() == [e.accuracy for e in curve.evaluations]
    assert curve.accuracy_on([3]) == [accuracy_on(e, [3]) for e in curve.evaluations]
    for shares in curve.energy.values():
        assert all(b >= a for a, b in zip(shares, shares[1:])) and shares[-1] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="grid"):
        curve.at(7)


def test_a_layer_of_lower_rank_keeps_its_whole_update(model_and_data) -> None:
    lora_model, x, y = model_and_data
    lora_model.add_adapter("capped", LoraConfig(r=12, alpha=12, rank_pattern={"linear3": 2}), seed=1)
    randomize_b(lora_model, "capped", seed=5, std=0.5)
    updates = adapter_updates(lora_model, "capped")
    assert {n: u.rank for n, u in updates.items()} == {"linear1": 12, "linear2": 12, "linear3": 2}
    assert torch.equal(updates["linear3"].truncated(4), updates["linear3"].delta)
    curve = truncation_curve(lora_model, "capped", x, y, ranks=(1, 4))
    assert curve.ranks == (1, 4) and curve.energy["linear3"][1] == pytest.approx(1.0)


def test_the_model_is_not_changed_and_bad_requests_are_refused(model_and_data) -> None:
    lora_model, x, y = model_and_data
    before = {k: v.clone() for k, v in lora_model.state_dict().items()}
    lora_model.set_adapter("a")
    truncation_curve(lora_model, "a", x, y, ranks=(1, 3))
    assert all(torch.equal(before[k], v) for k, v in lora_model.state_dict().items())
    assert lora_model.active_adapter == "a"
    with pytest.raises(ConfigError, match="no adapter called 'missing'"):
        truncation_curve(lora_model, "missing", x, y)
    with pytest.raises(ConfigError, match="whole numbers"):
        truncation_curve(lora_model, "a", x, y, ranks=(0,))
