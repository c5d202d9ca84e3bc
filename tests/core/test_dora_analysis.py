"""The DoRA paper's magnitude and direction changes (lora_core.lab.analysis.dora) on matrices whose answer is
known, the slope read from them, and the sentence that compares the signs with the paper's."""

from __future__ import annotations

import pytest
import torch

from lora_core.lab import readings
from lora_core.lab.analysis.dora import effective_weight, magnitude_direction, slope
from lora_core.lora import LoraConfig, LoraModel
from lora_core.model import MLP


def test_scaling_rows_changes_magnitude_only_and_turning_them_changes_direction_only():
    w0 = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    dm, dd = magnitude_direction(w0, 3 * w0)
    assert dm == pytest.approx(float(2 * w0.norm(dim=1).mean())) and dd == pytest.approx(0.0, abs=1e-6)
    turned = torch.cat([w0[:, 1:], w0[:, :1]], dim=1) * (w0.norm(dim=1) / w0.norm(dim=1)).view(-1, 1)
    dm, dd = magnitude_direction(w0, turned)  # the same entries in another order: same norms, other direction
    assert dm == pytest.approx(0.0, abs=1e-6) and dd > 0.1


def test_slope_leaves_the_start_out_and_needs_two_checkpoints():
    assert slope([[0, 0, 0], [10, 2.0, 1.0], [20, 0.5, 2.5]]) == pytest.approx(-1.0)
    assert slope([[0, 0, 0], [10, 1.0, 1.0]]) is None
    assert slope([[0, 0, 0], [10, 1.0, 1.0], [20, 2.0, 1.0]]) is None  # no spread in dD


def test_the_effective_weight_is_w_plus_the_active_update():
    torch.manual_seed(0)
    model = LoraModel(MLP(16, 16))
    w = model.model.linear2.weight.detach().clone()
    assert torch.equal(effective_weight(model), w)
    model.add_adapter("a", LoraConfig(r=2, alpha=4))
    with torch.no_grad():
        model.model.linear2.lora_B["a"].weight.fill_(0.5)
    layer = model.model.linear2
    torch.testing.assert_close(effective_weight(model), w + layer.delta_weight("a"))


def test_the_reading_compares_each_sign_with_the_paper_s():
    falling, rising = [[0, 0, 0], [1, 2.0, 1.0], [2, 1.0, 2.0]], [[0, 0, 0], [1, 1.0, 1.0], [2, 2.0, 2.0]]
    agree = readings.read_magnitude_direction({"full": falling, "lora": rising, "dora": falling}, "linear2")
    assert agree.endswith("here full fine-tuning, LoRA, DoRA agree.")
    mixed = readings.read_magnitude_direction({"lora": rising, "dora": rising}, "linear2")
    assert "LoRA +1; DoRA +1." in mixed and mixed.endswith("here LoRA agrees, DoRA not.")
    assert readings.read_magnitude_direction({"dora": rising}, "linear2").endswith("here DoRA does not.")
    assert readings.read_magnitude_direction({"pissa": rising}, "linear2").endswith("PiSSA +1.")
