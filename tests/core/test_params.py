"""Parameter accounting: the MLP's size and what an adapter of rank r adds, layer by layer."""

from __future__ import annotations

import pytest
import torch
from core_helpers import random_mlp

from lora_core.lora import LoraConfig, LoraModel
from lora_core.model import MLP, count_parameters
from lora_core.params import ParameterTable, adapter_update_statistics, parameter_table

BASE_PARAMS = 2_807_010
# r * (in + out) per layer, summed: 784 + 1000, 1000 + 2000, 2000 + 10
LORA_PER_RANK = (784 + 1000) + (1000 + 2000) + (2000 + 10)
LAYER_SIZES = {"linear1": (784, 1000), "linear2": (1000, 2000), "linear3": (2000, 10)}


def test_mlp_has_exactly_2807010_parameters():
    model = MLP()
    assert sum(p.numel() for p in model.parameters()) == BASE_PARAMS
    assert parameter_table(model).base_params == BASE_PARAMS
    assert count_parameters() == BASE_PARAMS
    assert count_parameters((1000, 2000)) == BASE_PARAMS
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {
        "linear1.weight": (1000, 784),
        "linear1.bias": (1000,),
        "linear2.weight": (2000, 1000),
        "linear2.bias": (2000,),
        "linear3.weight": (10, 2000),
        "linear3.bias": (10,),
    }


@pytest.mark.parametrize("hidden", [(1, 1), (3, 5), (64, 32)])
def test_count_parameters_matches_other_hidden_sizes(hidden):
    model = MLP(*hidden)
    expected = 784 * hidden[0] + hidden[0] + hidden[0] * hidden[1] + hidden[1] + hidden[1] * 10 + 10
    assert count_parameters(hidden) == expected
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("hidden", [(0, 5), (5, 0), (-1, 3)])
def test_mlp_rejects_non_positive_hidden_sizes(hidden):
    with pytest.raises(ValueError):
        MLP(*hidden)


def test_rank_1_adds_6794_parameters_0_242_percent():
    table = parameter_table(MLP(), LoraConfig(r=1))
    assert table.base_params == BASE_PARAMS
    assert table.lora_params == 6794 == LORA_PER_RANK
    assert round(table.lora_percent, 3) == 0.242
    d = table.to_dict()
    assert d["total_params"] == BASE_PARAMS + 6794
    assert d["lora_params"] == 6794


@pytest.mark.parametrize("r", [1, 2, 4, 8, 10])
def test_rank_r_on_all_layers_adds_r_times_6794_with_right_shapes(r):
    table = parameter_table(MLP(), LoraConfig(r=r))
    assert table.lora_params == r * 6794
    assert table.base_params == BASE_PARAMS
    assert [row.layer for row in table.layers] == ["linear1", "linear2", "linear3"]
    for row in table.layers:
        n_in, n_out = LAYER_SIZES[row.layer]
        assert row.weight_shape == (n_out, n_in)
        assert row.bias_shape == (n_out,)
        assert row.a_shape == (r, n_in)
        assert row.b_shape == (n_out, r)
        assert row.lora_count == r * (n_in + n_out)
        assert row.to_dict()["A_shape"] == [r, n_in]
        assert row.to_dict()["B_shape"] == [n_out, r]


@pytest.mark.parametrize(
    "targets",
    [("linear1",), ("linear2",), ("linear3",), ("linear1", "linear3"), ("linear2", "linear3")],
)
def test_subset_of_targets_counts_only_those_layers(targets):
    r = 4
    table = parameter_table(MLP(), LoraConfig(r=r, target_modules=targets))
    assert table.lora_params == sum(r * sum(LAYER_SIZES[t]) for t in targets)
    for row in table.layers:
        if row.layer in targets:
            assert row.a_shape is not None and row.lora_count > 0
        else:
            assert row.a_shape is None and row.b_shape is None and row.lora_count == 0


def test_table_without_config_has_no_lora_and_works_on_a_lora_model():
    assert parameter_table(MLP()).lora_params == 0
    lora_model = LoraModel(random_mlp())
    config = LoraConfig(r=3, target_modules=("linear2",))
    lora_model.add_adapter("a", config)
    table = parameter_table(lora_model, config)
    assert table.base_params == BASE_PARAMS
    assert table.lora_params == 3 * 3000
    # the table agrees with the tensors the adapter really has
    added = sum(p.numel() for n, p in lora_model.named_parameters() if ".lora_" in n)
    assert added == table.lora_params


def test_table_rows_end_with_totals_and_survive_json():
    config = LoraConfig(r=2, target_modules=("linear1", "linear3"))
    table = parameter_table(MLP(), config)
    rows = table.rows(times="x", none="-")
    assert [r["layer"] for r in rows] == ["linear1", "linear2", "linear3", "total"]
    assert rows[0]["W"] == "1000x784" and rows[0]["A"] == "2x784" and rows[1]["A"] == "-"
    total = rows[-1]
    assert total["W params"] + total["b params"] == total["base params"] == BASE_PARAMS
    assert total["A params"] + total["B params"] == table.lora_params == 2 * ((784 + 1000) + (2000 + 10))
    assert ParameterTable.from_dict(table.to_dict()).rows() == rows


def test_update_statistics_of_a_known_rank_two_update():
    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("u", LoraConfig(r=2, alpha=2, target_modules=("linear3",)))
    layer = lora_model.lora_layers()["linear3"]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.lora_B["u"].weight.copy_(torch.randn(10, 2, generator=gen))
    stats = adapter_update_statistics(lora_model, "u")["linear3"]
    delta = layer.delta_weight("u").detach()
    assert stats.numerical_rank == 2 == int(torch.linalg.matrix_rank(delta))
    assert stats.frobenius_norm == pytest.approx(float(delta.norm()), rel=1e-5)
    assert stats.to_dict(top=2)["singular_values"] == pytest.approx(torch.linalg.svdvals(delta)[:2].tolist())
    with torch.no_grad():
        layer.lora_B["u"].weight.zero_()
    assert adapter_update_statistics(lora_model, "u")["linear3"].numerical_rank == 0
