"""LoRA layers and the adapter wrapper: no-op init, gradients, forward maths, merging, several adapters."""

from __future__ import annotations

import math

import pytest
import torch
from core_helpers import adapter_deltas, manual_forward, random_mlp, randomize_b

from lora_core.errors import ConfigError
from lora_core.lora import LoraConfig, LoraLinear, LoraModel, validate_adapter_name
from lora_core.params import parameter_table


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(32, 784, generator=torch.Generator().manual_seed(42))


def base_clones(lora_model: LoraModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in lora_model.base_state_dict().items()}


# --- a new adapter changes nothing ------------------------------------------------------------------
@pytest.mark.parametrize("init", ["kaiming", "gaussian"])
def test_new_adapter_is_an_exact_no_op(init, x):
    lora_model = LoraModel(random_mlp())
    with torch.no_grad():
        before = lora_model(x)
        lora_model.add_adapter("a", LoraConfig(r=4, alpha=8, init=init), seed=0)
        after = lora_model(x)
    assert lora_model.active_adapter == "a"
    assert torch.equal(before, after)
    layers = lora_model.lora_layers()
    assert set(layers) == {"linear1", "linear2", "linear3"}
    for layer in layers.values():
        assert torch.count_nonzero(layer.lora_B["a"].weight) == 0
        a = layer.lora_A["a"].weight
        assert torch.count_nonzero(a) == a.numel()  # A is random, not zero
        if init == "kaiming":  # Kaiming-uniform with a = sqrt(5), as PEFT and nn.Linear: bound 1/sqrt(in)
            assert a.abs().max() <= 1 / math.sqrt(layer.in_features)
            assert a.abs().max() > 0.9 / math.sqrt(layer.in_features)


def test_gaussian_init_matches_peft_std_one_over_r():
    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("g", LoraConfig(r=4, init="gaussian"), seed=0)
    for layer in lora_model.lora_layers().values():
        assert layer.lora_A["g"].weight.std().item() == pytest.approx(1 / 4, rel=0.1)


@pytest.mark.parametrize("init", ["kaiming", "gaussian"])
def test_adapter_init_is_seeded(init):
    m1, m2 = LoraModel(random_mlp()), LoraModel(random_mlp())
    m1.add_adapter("a", LoraConfig(r=2, init=init), seed=7)
    m2.add_adapter("a", LoraConfig(r=2, init=init), seed=7)
    for name, layer in m1.lora_layers().items():
        assert torch.equal(layer.lora_A["a"].weight, m2.lora_layers()[name].lora_A["a"].weight)
    m2.add_adapter("b", LoraConfig(r=2, init=init), seed=8)
    assert not torch.equal(
        m2.lora_layers()["linear1"].lora_A["b"].weight, m1.lora_layers()["linear1"].lora_A["a"].weight
    )


# --- gradients --------------------------------------------------------------------------------------
def test_only_a_and_b_receive_gradients(x):
    lora_model = LoraModel(random_mlp())
    config = LoraConfig(r=4, alpha=8)
    lora_model.add_adapter("a", config, seed=0)
    randomize_b(lora_model, "a")  # with B = 0, A's gradient would be zero
    params = lora_model.mark_only_lora_trainable("a")
    loss = torch.nn.functional.cross_entropy(lora_model(x), torch.arange(32) % 10)
    loss.backward()
    for name, p in lora_model.model.named_parameters():
        if ".lora_" in name:
            assert p.requires_grad, name
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
        else:
            assert not p.requires_grad, name
            assert p.grad is None, name
    assert len(params) == 6
    trainable = sum(p.numel() for p in lora_model.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in params) == parameter_table(lora_model, config).lora_params == 4 * 6794


def test_mark_only_lora_trainable_freezes_other_adapters():
    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("a", LoraConfig(r=2))
    lora_model.add_adapter("b", LoraConfig(r=3, target_modules=("linear2",)))
    params = lora_model.mark_only_lora_trainable("b")
    trainable = {n for n, p in lora_model.named_parameters() if p.requires_grad}
    assert trainable == {"model.linear2.lora_A.b.weight", "model.linear2.lora_B.b.weight"}
    assert sum(p.numel() for p in params) == 3 * 3000
    with pytest.raises(ConfigError):
        lora_model.mark_only_lora_trainable("nosuch")


def test_wrapping_freezes_the_base():
    lora_model = LoraModel(random_mlp())
    assert all(not p.requires_grad for p in lora_model.parameters())


# --- forward maths ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("r", "alpha", "rslora", "targets"),
    [
        (4, 8.0, False, ("linear1", "linear2", "linear3")),
        (4, 8.0, True, ("linear1", "linear2", "linear3")),
        (1, 3.0, False, ("linear2",)),
        (9, 2.0, True, ("linear1", "linear3")),
    ],
)
def test_forward_equals_base_plus_scaled_low_rank_update(r, alpha, rslora, targets, x):
    base = random_mlp()
    lora_model = LoraModel(base)
    config = LoraConfig(r=r, alpha=alpha, use_rslora=rslora, target_modules=targets)
    lora_model.add_adapter("a", config, seed=0)
    randomize_b(lora_model, "a")
    expected_scale = alpha / math.sqrt(r) if rslora else alpha / r
    assert config.scale == pytest.approx(expected_scale)
    deltas = adapter_deltas(lora_model, "a")
    assert set(deltas) == set(targets)
    for _a, _b, scale in deltas.values():
        assert scale == pytest.approx(expected_scale)
    with torch.no_grad():
        out = lora_model(x)
        expected = manual_forward(base, x, deltas)
        plain = manual_forward(base, x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert (out - plain).abs().max() > 1e-3  # the update really does something


@pytest.mark.parametrize("targets", [("linear1", "linear2", "linear3"), ("linear2",), ("linear1", "linear3")])
def test_training_forward_and_gradients_match_the_plain_sum(targets, x):
    """Training adds the side path inside the matmul (addmm_); its logits and every gradient must be
    those of the plain sum x W^T + b + (x A^T) B^T * scale differentiated by autograd."""
    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("a", LoraConfig(r=4, alpha=8.0, target_modules=targets), seed=0)
    randomize_b(lora_model, "a")
    params = lora_model.mark_only_lora_trainable("a")
    lora_model.train()
    y = torch.arange(x.shape[0]) % 10
    loss = torch.nn.functional.cross_entropy(lora_model(x), y)
    loss.backward()
    fast = [p.grad.clone() for p in params]
    with torch.no_grad():
        eval_logits = lora_model(x)  # the no-grad path: PEFT's order of operations

    reference = {
        name: (a.clone().requires_grad_(True), b.clone().requires_grad_(True), s)
        for name, (a, b, s) in adapter_deltas(lora_model, "a").items()
    }
    logits = manual_forward(lora_model.model, x, reference)
    torch.nn.functional.cross_entropy(logits, y).backward()
    expected = [g for name in reference for g in (reference[name][0].grad, reference[name][1].grad)]
    torch.testing.assert_close(logits.detach(), eval_logits, atol=1e-5, rtol=1e-5)
    assert len(fast) == len(expected) == 2 * len(targets)
    for got, want in zip(fast, expected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)
        assert torch.count_nonzero(got) > 0
    assert all(p.grad is None for p in lora_model.model.parameters() if not p.requires_grad)


def test_a_scale_beyond_what_float32_carries_is_refused_naming_alpha():
    LoraConfig(r=8, alpha=8e6).validate()  # the bound itself is allowed
    cases = [
        (LoraConfig(r=8, alpha=1e300), "alpha/r is 1.25e\\+299 on linear1 .rank 8."),
        (LoraConfig(r=8, alpha=1e30), "alpha/r is 1.25e\\+29 on linear1"),
        (LoraConfig(r=4, alpha=4e6 + 4), "alpha/r is 1e\\+06 on linear1"),
        (LoraConfig(r=16, alpha=8e6, use_rslora=True), "alpha/sqrt.r. is 2e\\+06"),
        (LoraConfig(r=8, alpha=8, alpha_pattern={"linear3": 1e8}), "alpha/r is 1.25e\\+07 on linear3"),
    ]
    for config, message in cases:
        with pytest.raises(ConfigError, match=f"^alpha: the update's scale {message}.*lower alpha$"):
            config.validate()


def test_rslora_scale_is_alpha_over_sqrt_r():
    assert LoraConfig(r=16, alpha=8, use_rslora=True).scale == pytest.approx(2.0)
    assert LoraConfig(r=16, alpha=8, use_rslora=False).scale == pytest.approx(0.5)
    assert LoraConfig(r=1, alpha=5, use_rslora=True).scale == pytest.approx(5.0)


def test_delta_weight_is_scale_b_a():
    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("a", LoraConfig(r=3, alpha=6), seed=0)
    randomize_b(lora_model, "a")
    for layer in lora_model.lora_layers().values():
        expected = layer.lora_B["a"].weight @ layer.lora_A["a"].weight * 2.0
        torch.testing.assert_close(layer.delta_weight("a"), expected)
    # the update of the small layer (10 x 2000) has rank exactly r
    assert torch.linalg.matrix_rank(lora_model.lora_layers()["linear3"].delta_weight("a")) == 3


def test_dropout_only_acts_in_training(x):
    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("a", LoraConfig(r=4, dropout=0.5), seed=0)
    randomize_b(lora_model, "a")
    lora_model.eval()
    with torch.no_grad():
        assert torch.equal(lora_model(x), lora_model(x))
        expected = manual_forward(lora_model.model, x, adapter_deltas(lora_model, "a"))
        torch.testing.assert_close(lora_model(x), expected, atol=1e-5, rtol=1e-5)
        lora_model.train()
        assert not torch.equal(lora_model(x), lora_model(x))


# --- merging ------------------------------------------------------------------------------------------
def test_merge_matches_unmerged_and_never_touches_base_weights(x):
    base = random_mlp()
    lora_model = LoraModel(base)
    with torch.no_grad():
        base_out = lora_model(x)
    lora_model.add_adapter("a", LoraConfig(r=4, alpha=8), seed=0)
    randomize_b(lora_model, "a")
    clones = base_clones(lora_model)
    with torch.no_grad():
        unmerged = lora_model(x)
        assert not torch.equal(unmerged, base_out)
        lora_model.merge()
        assert all(layer.merged for layer in lora_model.lora_layers().values())
        merged = lora_model(x)
        torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
        for key, value in lora_model.base_state_dict().items():
            assert torch.equal(value, clones[key]), key
        # disabled while merged: the plain base, exactly
        with lora_model.adapters_disabled():
            assert torch.equal(lora_model(x), base_out)
        assert torch.equal(lora_model(x), merged)
        lora_model.unmerge()
        assert not any(layer.merged for layer in lora_model.lora_layers().values())
        assert torch.equal(lora_model(x), unmerged)
        for key, value in lora_model.base_state_dict().items():
            assert torch.equal(value, clones[key]), key
        lora_model.disable_adapters()
        assert torch.equal(lora_model(x), base_out)
        lora_model.enable_adapters()
        assert torch.equal(lora_model(x), unmerged)
        lora_model.set_adapter(None)
        assert torch.equal(lora_model(x), base_out)


@pytest.mark.parametrize("trains", ["adapter", "combination", "base weight"])
def test_training_through_a_merged_weight_is_refused(trains, x):
    """The merged weight is built without autograd: a step through it gives the adapter no gradient and,
    had anything changed A, B or W, would run on a stale sum. Any forward that needs a gradient of what
    the merged weight was made from must say to unmerge first."""
    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("a", LoraConfig(r=4, alpha=8), seed=0)
    randomize_b(lora_model, "a")
    lora_model.add_adapter("b", LoraConfig(r=2, alpha=2, target_modules=("linear2",)), seed=1)
    lora_model.set_adapter(["a", "b"] if trains == "combination" else "a")
    params = lora_model.mark_only_lora_trainable("a")
    if trains == "base weight":
        lora_model.mark_only_lora_trainable("b")  # A and B of "a" frozen again
        params = [lora_model.lora_layers()["linear2"].base_layer.weight.requires_grad_(True)]
    lora_model.train()
    lora_model.merge()
    with pytest.raises(ConfigError) as info:
        lora_model(x)
    # linear1 refuses first, and it holds only "a" (a combination's message: test_a_merged_combination_...)
    assert info.value.field == "adapter"
    assert info.value.reason == "adapter 'a' is merged, and training cannot reach a merged weight: unmerge() first"
    with torch.no_grad():  # evaluating the merged model is what merging is for
        merged = lora_model(x)
    lora_model.unmerge()
    torch.nn.functional.cross_entropy(lora_model(x), torch.arange(32) % 10).backward()
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in params)
    with torch.no_grad():
        torch.testing.assert_close(lora_model(x), merged, atol=1e-5, rtol=0)


def test_a_frozen_merged_model_runs_with_gradients_on(x):
    """Nothing the merged weight was made from needs a gradient (a loaded adapter): nothing to refuse, e.g.
    for a gradient with respect to the input."""
    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("a", LoraConfig(r=4, alpha=8), seed=0)
    randomize_b(lora_model, "a")
    for p in lora_model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        unmerged = lora_model(x)
    lora_model.merge()
    xi = x.clone().requires_grad_(True)
    out = lora_model(xi)
    torch.testing.assert_close(out, unmerged, atol=1e-5, rtol=0)
    out.sum().backward()
    assert xi.grad is not None and torch.count_nonzero(xi.grad) > 0


def test_merge_with_no_active_adapter_is_a_no_op(x):
    lora_model = LoraModel(random_mlp())
    with torch.no_grad():
        base_out = lora_model(x)
    lora_model.add_adapter("a", LoraConfig(r=2), seed=0)
    randomize_b(lora_model, "a")
    lora_model.set_adapter(None)
    lora_model.merge()
    assert not any(layer.merged for layer in lora_model.lora_layers().values())
    with torch.no_grad():
        assert torch.equal(lora_model(x), base_out)


def test_switching_adapter_drops_the_merged_weight(x):
    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("a", LoraConfig(r=2), seed=0)
    randomize_b(lora_model, "a", seed=1)
    lora_model.add_adapter("b", LoraConfig(r=2), seed=1)
    randomize_b(lora_model, "b", seed=2)
    with torch.no_grad():
        lora_model.set_adapter("b")
        out_b = lora_model(x)
        lora_model.set_adapter("a")
        lora_model.merge()
        lora_model.set_adapter("b")
        assert torch.equal(lora_model(x), out_b)


def test_lora_linear_alone():
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 5)
    layer = LoraLinear(linear)
    layer.add_adapter("a", LoraConfig(r=2, alpha=4))
    layer.set_adapter("a")
    with torch.no_grad():
        layer.lora_B["a"].weight.normal_()
        x = torch.randn(3, 6)
        expected = linear(x) + x @ layer.lora_A["a"].weight.T @ layer.lora_B["a"].weight.T * 2.0
        torch.testing.assert_close(layer(x), expected)
        layer.delete_adapter("a")
        assert layer.active_adapter is None and "a" not in layer.lora_A and "a" not in layer.scaling
        assert torch.equal(layer(x), linear(x))


# --- several adapters on one base ------------------------------------------------------------------
def test_several_named_adapters_switch_instantly(x):
    base = random_mlp()
    lora_model = LoraModel(base)
    with torch.no_grad():
        base_out = lora_model(x)
    lora_model.add_adapter("all", LoraConfig(r=4, alpha=8), seed=0)
    randomize_b(lora_model, "all", seed=1)
    lora_model.add_adapter("last", LoraConfig(r=2, alpha=2, target_modules=("linear3",)), seed=1)
    randomize_b(lora_model, "last", seed=2)
    lora_model.add_adapter("first", LoraConfig(r=1, alpha=1, target_modules=("linear1",), use_rslora=True), seed=2)
    randomize_b(lora_model, "first", seed=3)
    assert lora_model.active_adapter == "first"  # add_adapter activates the new one
    assert set(lora_model.adapters) == {"all", "last", "first"}

    expected = {name: manual_forward(base, x, adapter_deltas(lora_model, name)) for name in lora_model.adapters}
    assert set(adapter_deltas(lora_model, "last")) == {"linear3"}
    assert set(adapter_deltas(lora_model, "first")) == {"linear1"}
    outs = {}
    with torch.no_grad():
        for name in ["all", "last", "first", "all"]:
            lora_model.set_adapter(name)
            assert lora_model.active_adapter == name
            outs[name] = lora_model(x)
            torch.testing.assert_close(outs[name], expected[name], atol=1e-5, rtol=1e-5)
        assert not torch.equal(outs["all"], outs["last"])
        assert not torch.equal(outs["last"], outs["first"])
        lora_model.set_adapter(None)
        assert lora_model.active_adapter is None
        assert torch.equal(lora_model(x), base_out)

        lora_model.set_adapter("all")
        lora_model.delete_adapter("all")
        assert "all" not in lora_model.adapters
        assert lora_model.active_adapter is None
        for layer in lora_model.lora_layers().values():
            assert "all" not in layer.lora_A and "all" not in layer.lora_B and "all" not in layer.scaling
        assert torch.equal(lora_model(x), base_out)
        with pytest.raises(ConfigError):
            lora_model.set_adapter("all")
        with pytest.raises(ConfigError):
            lora_model.delete_adapter("all")
        lora_model.set_adapter("last")
        torch.testing.assert_close(lora_model(x), expected["last"], atol=1e-5, rtol=1e-5)
        lora_model.delete_adapter("first")  # not the active one
        assert lora_model.active_adapter == "last"
        torch.testing.assert_close(lora_model(x), expected["last"], atol=1e-5, rtol=1e-5)
    names = {n for n, _ in lora_model.named_parameters() if ".lora_" in n}
    assert names == {"model.linear3.lora_A.last.weight", "model.linear3.lora_B.last.weight"}


def test_adapter_state_dict_uses_peft_keys():
    lora_model = LoraModel(random_mlp())
    config = LoraConfig(r=3, target_modules=("linear1", "linear3"))
    lora_model.add_adapter("a", config)
    sd = lora_model.adapter_state_dict("a")
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        "base_model.model.linear1.lora_A.weight": (3, 784),
        "base_model.model.linear1.lora_B.weight": (1000, 3),
        "base_model.model.linear3.lora_A.weight": (3, 2000),
        "base_model.model.linear3.lora_B.weight": (10, 3),
    }
    assert lora_model.expected_adapter_shapes(config) == {k: tuple(v.shape) for k, v in sd.items()}
    assert set(lora_model.base_state_dict()) == {f"linear{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}


def test_expected_adapter_shapes_follow_rank_pattern_and_the_rank_cap():
    lora_model = LoraModel(random_mlp())
    config = LoraConfig(r=16, rank_pattern={"linear1": 2}, target_modules=("linear1", "linear3"))
    assert lora_model.expected_adapter_shapes(config) == {
        "base_model.model.linear1.lora_A.weight": (2, 784),
        "base_model.model.linear1.lora_B.weight": (1000, 2),
        "base_model.model.linear3.lora_A.weight": (10, 2000),  # r 16 capped at min(2000, 10)
        "base_model.model.linear3.lora_B.weight": (10, 10),
    }
    lora_model.add_adapter("a", config)
    sd = lora_model.adapter_state_dict("a")
    assert lora_model.expected_adapter_shapes(config) == {k: tuple(v.shape) for k, v in sd.items()}


# --- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"r": 0}, "rank"),
        ({"r": -2}, "rank"),
        ({"r": 1.5}, "rank"),
        ({"r": True}, "rank"),
        ({"alpha": 0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"alpha": float("inf")}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"init": "zeros"}, "init"),
        ({"target_modules": ()}, "targets"),
        ({"target_modules": ("linear1", "linear1")}, "targets"),
        ({"target_modules": ("linear4",)}, "targets"),
        # a rank above a layer's limit is capped there (tests/core/test_sweeps.py); rank_pattern is exact
        ({"r": 11, "rank_pattern": {"linear3": 11}}, "rank"),  # linear3 has 10 outputs
        ({"r": 4, "rank_pattern": {"linear4": 2}}, "rank"),
        ({"r": 4, "rank_pattern": {"linear1": 0}}, "rank"),
        ({"r": 4, "alpha_pattern": {"linear1": 0.0}}, "alpha"),
    ],
)
def test_bad_configs_are_rejected(kwargs, field):
    lora_model = LoraModel(random_mlp())
    with pytest.raises(ConfigError) as info:
        lora_model.add_adapter("a", LoraConfig(**kwargs))
    assert info.value.field == field
    assert lora_model.adapters == {} and lora_model.lora_layers() == {}


def test_largest_allowed_ranks_are_accepted():
    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("a", LoraConfig(r=10))
    lora_model.add_adapter("b", LoraConfig(r=11, target_modules=("linear1", "linear2")))
    assert set(lora_model.adapters) == {"a", "b"}


def test_duplicate_adapter_name_is_rejected():
    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("a", LoraConfig(r=1))
    with pytest.raises(ConfigError) as info:
        lora_model.add_adapter("a", LoraConfig(r=2))
    assert (info.value.field, info.value.reason) == ("name", "an adapter called 'a' is already loaded")
    assert lora_model.adapter_config("a").r == 1


def test_a_fresh_lora_model_has_no_active_adapter():
    lora_model = LoraModel(random_mlp())
    assert lora_model.active_adapter is None
    assert lora_model.active_adapters == [] and lora_model.adapter_weights == {}


def test_an_unknown_adapter_name_is_refused_listing_the_loaded_ones():
    lora_model = LoraModel(random_mlp())
    with pytest.raises(ConfigError) as info:
        lora_model.set_adapter("b")
    assert (info.value.field, info.value.reason) == ("adapter", "no adapter called 'b' (loaded: none)")
    lora_model.add_adapter("c", LoraConfig(r=1))
    lora_model.add_adapter("a", LoraConfig(r=1))
    with pytest.raises(ConfigError) as info:
        lora_model.delete_adapter("b")
    assert info.value.reason == "no adapter called 'b' (loaded: a, c)"


@pytest.mark.parametrize("name", ["", "  ", "../x", "a/b", ".hidden", "a..b", "x" * 65, "name with space", "é"])
def test_unsafe_adapter_names_are_rejected(name):
    with pytest.raises(ConfigError) as info:
        validate_adapter_name(name)
    assert info.value.field == "name"
    if not name.strip():
        assert info.value.reason == "an adapter name must not be empty"
    elif len(name) > 64:
        assert info.value.reason == "must be at most 64 characters, got 65"
    else:
        assert info.value.reason == (
            f"{name!r} is not a valid adapter name: use letters, digits, '-', '_' and '.' "
            "(not starting with '.', no '..', no '/')"
        )


def test_loaded_adapter_tensors_give_the_same_logits_frozen_with_their_meta(x):
    source = LoraModel(random_mlp())
    config = LoraConfig(r=3, alpha=6, target_modules=("linear1", "linear3"))
    source.add_adapter("a", config, seed=0)
    randomize_b(source, "a")
    target = LoraModel(random_mlp())
    target.load_adapter_tensors("a", config, source.adapter_state_dict("a"), meta={"base_sha256": "f" * 64})
    assert target.active_adapter == "a" and target.adapter_meta("a") == {"base_sha256": "f" * 64}
    assert not any(p.requires_grad for p in target.parameters())
    for key, tensor in target.adapter_state_dict("a").items():
        assert torch.equal(tensor, source.adapter_state_dict("a")[key]), key
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


@pytest.mark.parametrize("name", ["digit-9", "a", "A_b.c-1", "x" * 64])
def test_safe_adapter_names_are_accepted(name):
    validate_adapter_name(name)


def test_peft_config_round_trip():
    config = LoraConfig(r=5, alpha=3.5, dropout=0.1, target_modules=("linear2",), use_rslora=True, init="gaussian")
    data = config.to_peft()
    assert data["peft_type"] == "LORA"
    assert data["bias"] == "none" and data["fan_in_fan_out"] is False
    assert LoraConfig.from_peft(data) == config


def test_rank_limits_per_layer():
    from lora_core.lora import linear_layers, rank_limits

    expected = {"linear1": 784, "linear2": 1000, "linear3": 10}
    lora_model = LoraModel(random_mlp())
    assert rank_limits(lora_model.model) == expected
    lora_model.add_adapter("a", LoraConfig(r=2, target_modules=("linear2",)))
    assert rank_limits(lora_model.model) == expected  # a wrapped layer reports its base layer
    assert isinstance(linear_layers(lora_model.model)["linear2"], torch.nn.Linear)
    assert linear_layers(lora_model.model)["linear2"] is lora_model.lora_layers()["linear2"].base_layer


# --- any valid adapter name works as a module key ------------------------------------------------------
# '.' is allowed in names (folder names such as v1.2) but not in PyTorch module keys, and a name such as
# 'train' or 'keys' is an attribute of nn.ModuleDict: both used to crash with a KeyError.
@pytest.mark.parametrize("name", ["v1.2", "a.v2", "train", "keys", "training", "_modules", "x.train"])
def test_names_that_are_not_module_keys_work(name, x):
    validate_adapter_name(name)
    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("plain", LoraConfig(r=2), seed=0)
    lora_model.add_adapter(name, LoraConfig(r=3, alpha=6), seed=1)
    randomize_b(lora_model, name)
    with torch.no_grad():
        out = lora_model(x)
    expected = manual_forward(lora_model.model, x, adapter_deltas(lora_model, name))
    assert torch.allclose(out, expected, atol=1e-5)
    for layer in lora_model.lora_layers().values():
        assert name in layer.lora_A and list(layer.lora_A) == ["plain", name]
        assert layer.lora_A[name].weight.shape[0] == 3
    state = lora_model.adapter_state_dict(name)
    assert all(k.startswith("base_model.model.linear") for k in state)
    lora_model.delete_adapter(name)
    assert all(name not in layer.lora_A for layer in lora_model.lora_layers().values())
    assert list(lora_model.adapters) == ["plain"]


def test_escaped_keys_cannot_collide():
    # '%' never appears in a valid name, so the escaped key of one name is never another name's key
    lora_model = LoraModel(random_mlp())
    for name in ("a.b", "a-2Eb", "train", "train_"):
        lora_model.add_adapter(name, LoraConfig(r=1))
    assert sorted(lora_model.adapters) == sorted(["a.b", "a-2Eb", "train", "train_"])
    with pytest.raises(ConfigError):
        validate_adapter_name("a%2Eb")


@pytest.mark.parametrize("name", ["..", "../x", "a/b", ".hidden", "a..b", "v1/../x"])
def test_path_tricks_are_still_refused(name):
    with pytest.raises(ConfigError, match="letters, digits"):
        validate_adapter_name(name)


# --- training's own autograd node (lora_core.lora.fast.FrozenBaseLoraFunction) --------------------------
def frozen_lora_layer(
    in_features: int = 20,
    out_features: int = 30,
    dtype: torch.dtype = torch.float32,
    **config: object,
) -> LoraLinear:
    """A LoraLinear with a frozen base, one active adapter "a" with a non-zero B, in training mode."""
    torch.manual_seed(0)
    layer = LoraLinear(torch.nn.Linear(in_features, out_features, dtype=dtype)).train()
    layer.base_layer.requires_grad_(False)
    layer.add_adapter("a", LoraConfig(**{"r": 4, "alpha": 8.0, **config}), torch.Generator().manual_seed(1))
    layer.set_adapter("a")
    with torch.no_grad():
        layer.lora_B["a"].weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(2))
    return layer


def plain_autograd_lora(layer: LoraLinear, x: torch.Tensor, dropout: float) -> torch.Tensor:
    """The textbook formula on the same tensors, differentiated by autograd:
    base(x) + (dropout(x) @ A.T) @ B.T * scale, the base matmul in bfloat16 under bfloat16 autocast and
    the side path and the sum in float32 (the dtype policy the fast path promises)."""
    a, b = layer.lora_A["a"].weight, layer.lora_B["a"].weight
    side = torch.nn.functional.dropout(x, dropout) if dropout else x
    base = layer.base_layer(x)
    with torch.autocast("cpu", enabled=False):
        return base.float() + (side.float() @ a.T) @ b.T * layer.scaling["a"]


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize(
    "config",
    [
        {},
        {"dropout": 0.3},
        {"use_rslora": True, "init": "gaussian"},
        {"use_rslora": True, "dropout": 0.5, "r": 7, "alpha": 3.0},
    ],
    ids=["plain", "dropout", "rslora-gaussian", "rslora-dropout"],
)
def test_fast_training_path_matches_plain_autograd(config, bf16):
    """Output and the gradients of A, B and the input from the custom backward equal those of the plain
    formula differentiated by autograd; the same seed gives both the same dropout mask."""
    layer = frozen_lora_layer(**config)
    dropout = float(config.get("dropout", 0.0))
    x = torch.randn(3, 16, 20, generator=torch.Generator().manual_seed(3))  # a leading batch shape too
    upstream = torch.randn(3, 16, 30, generator=torch.Generator().manual_seed(4))
    a, b = layer.lora_A["a"].weight, layer.lora_B["a"].weight
    results = []
    for run in (lambda xi: layer(xi), lambda xi: plain_autograd_lora(layer, xi, dropout)):
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(5)  # the dropout mask
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = run(xi)
        assert out.dtype == torch.float32 and out.shape == (3, 16, 30)
        (grad_a, grad_b, grad_x) = torch.autograd.grad(out, (a, b, xi), upstream)
        results.append((out.detach(), grad_a, grad_b, grad_x))
    (out, grad_a, grad_b, grad_x), (want_out, want_a, want_b, want_x) = results
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(grad_a, want_a)
    torch.testing.assert_close(grad_b, want_b)
    # under autocast g W runs in bfloat16 in both (one rounding of 2^-8 may land differently)
    torch.testing.assert_close(grad_x, want_x, **({"rtol": 1.6e-2, "atol": 1e-5} if bf16 else {}))
    assert torch.count_nonzero(grad_a) > 0 and torch.count_nonzero(grad_b) > 0
    assert layer.base_layer.weight.grad is None and layer.base_layer.bias.grad is None
    if bf16:  # the base matmul really ran in bfloat16: far from the float32 result
        torch.manual_seed(5)
        with torch.no_grad():
            assert (out - plain_autograd_lora(layer, x, dropout)).abs().max() > 1e-4


@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_fast_training_path_passes_gradcheck_in_float64(dropout):
    """Finite differences in float64 against the custom backward, for the input, A and B."""
    layer = frozen_lora_layer(6, 5, dtype=torch.float64, r=3, alpha=5.0, dropout=dropout)
    x = torch.randn(2, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(6), requires_grad=True)
    a = layer.lora_A["a"].weight.detach().clone().requires_grad_(True)
    b = layer.lora_B["a"].weight.detach().clone().requires_grad_(True)

    def run(xi: torch.Tensor, ai: torch.Tensor, bi: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(7)  # the same dropout mask on every evaluation
        return torch.func.functional_call(layer, {"lora_A.a.weight": ai, "lora_B.a.weight": bi}, (xi,))

    assert torch.autograd.gradcheck(run, (x, a, b))


def test_fast_training_path_skips_what_a_frozen_base_does_not_need():
    """The backward of a LoRA step never computes a gradient for any base weight (no (out, in) matmul
    result) and no gradient for linear1's input (no (batch, 784) result): only the side path's small
    products and the frozen layers' input gradients that the earlier adapters need, each with the side
    path's share added in place by the same addmm_, not by a separate sum."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class MatmulShapes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[tuple[str, tuple[int, ...]]] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                self.ops.append((func.overloadpacket.__name__, tuple(out.shape)))
            return out

    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("a", LoraConfig(r=4, alpha=8), seed=0)
    randomize_b(lora_model, "a")
    lora_model.mark_only_lora_trainable("a")
    lora_model.train()
    x = torch.randn(32, 784, generator=torch.Generator().manual_seed(1))
    loss = torch.nn.functional.cross_entropy(lora_model(x), torch.arange(32) % 10)
    recorder = MatmulShapes()
    with recorder:
        loss.backward()
    shapes = {shape for _, shape in recorder.ops}
    weight_shapes = {tuple(p.shape) for p in lora_model.base_state_dict().values()}
    assert not weight_shapes & shapes, recorder.ops
    assert (32, 784) not in shapes, recorder.ops
    # the input gradients of linear3 and linear2 (needed by linear2's and linear1's adapters): one mm
    # each, the side path's share added into it by addmm_; ReLU's backward between them
    matmuls = sorted(op for op in recorder.ops if op[0] in ("mm", "addmm", "addmm_", "add", "add_") and 4 not in op[1])
    assert matmuls == [("addmm_", (32, 1000)), ("addmm_", (32, 2000)), ("mm", (32, 1000)), ("mm", (32, 2000))]


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_base_weights_get_no_gradient_and_stay_bit_identical_while_training(bf16):
    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("a", LoraConfig(r=4, alpha=8, dropout=0.1), seed=0)
    params = lora_model.mark_only_lora_trainable("a")
    clones = base_clones(lora_model)
    a_before = [p.detach().clone() for p in params]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    lora_model.train()
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        x = torch.rand(16, 784, generator=gen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(lora_model(x), torch.arange(16) % 10)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for name, p in lora_model.model.named_parameters():
            if ".lora_" not in name:
                assert p.grad is None, name
    assert all(not torch.equal(p, before) for p, before in zip(params, a_before))  # the adapter did learn
    for key, value in lora_model.base_state_dict().items():
        assert torch.equal(value, clones[key]), key


@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_fast_training_path_takes_a_bfloat16_input_and_a_base_without_bias(dropout):
    """Under bfloat16 autocast the side path casts its input to the adapter's float32, and the gradient of x
    comes back in x's own dtype; a base layer without bias is cast without one."""
    torch.manual_seed(0)
    layer = LoraLinear(torch.nn.Linear(6, 5, bias=False)).train()
    layer.base_layer.requires_grad_(False)
    layer.add_adapter("a", LoraConfig(r=2, alpha=4, dropout=dropout), torch.Generator().manual_seed(1))
    layer.set_adapter("a")
    with torch.no_grad():
        layer.lora_B["a"].weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(2))
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(3)).bfloat16().requires_grad_(True)
    torch.manual_seed(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.float32
    out.square().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16 and torch.count_nonzero(x.grad) > 0
    a, b = layer.lora_A["a"].weight, layer.lora_B["a"].weight
    assert a.grad is not None and a.grad.dtype == torch.float32 and torch.count_nonzero(a.grad) > 0
    assert b.grad is not None and b.grad.dtype == torch.float32 and torch.count_nonzero(b.grad) > 0
    if dropout == 0.0:  # without dropout the whole y is known: compare it with the plain formula
        xf = x.detach().float()
        expected = (xf @ layer.base_layer.weight.T) + (xf @ a.detach().T) @ b.detach().T * 2.0
        torch.testing.assert_close(out.detach(), expected, atol=0.05, rtol=0.02)  # bfloat16 base matmul


def test_bf16_cast_of_the_frozen_base_is_kept_and_renewed_when_the_base_changes():
    layer = frozen_lora_layer()
    x = torch.randn(8, 20, generator=torch.Generator().manual_seed(3))

    def step() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
            want = plain_autograd_lora(layer, x, 0.0)  # autocast's own cast of W and b, made afresh
        torch.testing.assert_close(out, want)
        return out

    first = step()
    cast = layer._base_cast
    assert cast is not None and cast.weight.dtype == torch.bfloat16 and cast.bias.dtype == torch.bfloat16
    assert torch.equal(step(), first) and layer._base_cast is cast  # made once, reused
    # the cache sees in-place writes through the tensor's private version counter, which PyTorch bumps on
    # every in-place op (also under no_grad, and load_state_dict's copy_): held here, should that change
    version = layer.base_layer.weight._version
    with torch.no_grad():
        layer.base_layer.weight.mul_(2.0)
    assert layer.base_layer.weight._version > version
    assert not torch.equal(step(), first) and layer._base_cast is not cast
    cast, version = layer._base_cast, layer.base_layer.weight._version
    state = {k: v.clone() for k, v in layer.base_layer.state_dict().items()}
    state["weight"] *= 0.5
    layer.base_layer.load_state_dict(state)
    assert layer.base_layer.weight._version > version
    assert torch.equal(step(), first) and layer._base_cast is not cast
    cast = layer._base_cast
    layer.base_layer.bias = torch.nn.Parameter(torch.ones(30), requires_grad=False)  # a new tensor too
    step()
    assert layer._base_cast is not cast and torch.equal(layer._base_cast.bias, torch.ones(30, dtype=torch.bfloat16))
    layer.eval()
    assert layer._base_cast is None


def test_fast_training_path_refuses_a_second_derivative():
    """The backward reads x A^T saved from the forward, outside autograd: differentiated again, the gradient
    of B would count as a constant in x and A (a gradient penalty would come out silently wrong). A second
    derivative must raise instead."""
    layer = frozen_lora_layer(6, 5, dtype=torch.float64, r=3, alpha=5.0)
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(6), requires_grad=True)
    a, b = layer.lora_A["a"].weight, layer.lora_B["a"].weight
    grad_a, grad_b = torch.autograd.grad(layer(x).square().sum(), (a, b), create_graph=True)
    penalty = grad_a.square().sum() + grad_b.square().sum()
    with pytest.raises(RuntimeError, match="once_differentiable"):
        penalty.backward()


def test_lora_linear_with_a_trainable_base_trains_it_with_plain_autograd():
    """A LoraLinear used on its own keeps nn.Linear's trainable weight: that must get its gradient."""
    torch.manual_seed(0)
    layer = LoraLinear(torch.nn.Linear(6, 5)).train()
    layer.add_adapter("a", LoraConfig(r=2, alpha=4))
    layer.set_adapter("a")
    x = torch.randn(3, 6)
    layer(x).square().sum().backward()
    w, bias = layer.base_layer.weight, layer.base_layer.bias
    assert w.grad is not None and bias.grad is not None
    wr, br = w.detach().clone().requires_grad_(True), bias.detach().clone().requires_grad_(True)
    a, b = layer.lora_A["a"].weight.detach(), layer.lora_B["a"].weight.detach()
    (x @ wr.T + br + (x @ a.T) @ b.T * 2.0).square().sum().backward()
    torch.testing.assert_close(w.grad, wr.grad)
    torch.testing.assert_close(bias.grad, br.grad)


def test_disabled_or_inactive_adapters_train_nothing(x):
    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("a", LoraConfig(r=4, alpha=8), seed=0)
    randomize_b(lora_model, "a")
    lora_model.add_adapter("b", LoraConfig(r=2, alpha=2, target_modules=("linear2",)), seed=1)
    randomize_b(lora_model, "b", seed=2)
    params_b = lora_model.mark_only_lora_trainable("b")
    lora_model.train()
    with torch.no_grad():
        base_out = manual_forward(lora_model.model, x)
        b_out = manual_forward(lora_model.model, x, adapter_deltas(lora_model, "b"))
    torch.testing.assert_close(lora_model(x), b_out)  # "b" is active: its own update only
    with lora_model.adapters_disabled():
        out = lora_model(x)
        assert not out.requires_grad
        torch.testing.assert_close(out, base_out)
    lora_model.set_adapter("a")  # "b" is trainable but not active: nothing reaches it
    out = lora_model(x)
    assert not out.requires_grad
    assert all(p.grad is None for p in params_b)


# --- LoraLinear on its own ----------------------------------------------------------------------------------
def two_adapter_layer(dropout: float = 0.0) -> LoraLinear:
    """A LoraLinear(6, 5) with adapters "a" (r 2, scale 2) and "b" (r 3, scale 1), both with a non-zero B."""
    torch.manual_seed(0)
    layer = LoraLinear(torch.nn.Linear(6, 5))
    layer.base_layer.requires_grad_(False)
    layer.add_adapter("a", LoraConfig(r=2, alpha=4, dropout=dropout), torch.Generator().manual_seed(1))
    layer.add_adapter("b", LoraConfig(r=3, alpha=3, dropout=dropout), torch.Generator().manual_seed(2))
    with torch.no_grad():
        for name in ("a", "b"):
            layer.lora_B[name].weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(3))
    return layer


def by_hand_update(layer: LoraLinear, x: torch.Tensor, weights: dict[str, float]) -> torch.Tensor:
    out = layer.base_layer(x)
    for name, weight in weights.items():
        out = out + weight * layer.scaling[name] * (x @ layer.lora_A[name].weight.T) @ layer.lora_B[name].weight.T
    return out


def test_a_fresh_lora_linear_is_its_base_layer_and_says_so():
    linear = torch.nn.Linear(6, 5)
    layer = LoraLinear(linear)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(layer(x), linear(x))
    assert layer.active_adapter is None and layer.combination is None and not layer.merged
    assert layer.extra_repr() == "adapters=[], active=None"
    layer.add_adapter("a", LoraConfig(r=2))
    layer.add_adapter("v1.2", LoraConfig(r=2))
    layer.set_combination([("a", 0.5), ("v1.2", 1)])
    assert layer.extra_repr() == "adapters=['a', 'v1.2'], active={'a': 0.5, 'v1.2': 1.0}"
    layer.set_adapter("v1.2")
    assert layer.extra_repr() == "adapters=['a', 'v1.2'], active='v1.2'"


def test_train_without_an_argument_switches_training_on():
    layer = LoraLinear(torch.nn.Linear(6, 5)).eval()
    assert layer.train() is layer and layer.training and layer.base_layer.training


def test_adapters_are_made_on_the_base_layers_device_and_dtype():
    layer = LoraLinear(torch.nn.Linear(6, 5, device="meta", dtype=torch.float64))
    layer.add_adapter("a", LoraConfig(r=2))
    for module in (layer.lora_A["a"], layer.lora_B["a"]):
        assert module.weight.device.type == "meta" and module.weight.dtype == torch.float64
        assert module.bias is None


def test_rank_and_alpha_patterns_shape_each_layers_adapter():
    lora_model = LoraModel(random_mlp())
    config = LoraConfig(r=4, alpha=8, rank_pattern={"linear2": 2}, alpha_pattern={"linear2": 6})
    lora_model.add_adapter("a", config, seed=0)
    layers = lora_model.lora_layers()
    assert layers["linear1"].lora_A["a"].weight.shape == (4, 784) and layers["linear1"].scaling["a"] == 2.0
    assert layers["linear2"].lora_A["a"].weight.shape == (2, layers["linear2"].in_features)
    assert layers["linear2"].lora_B["a"].weight.shape == (layers["linear2"].out_features, 2)
    assert layers["linear2"].scaling["a"] == 3.0
    alone = LoraLinear(torch.nn.Linear(6, 5))  # no layer name: the config's own r and scale
    alone.add_adapter("a", config)
    assert alone.lora_A["a"].weight.shape == (4, 6) and alone.scaling["a"] == 2.0


def test_only_a_trainable_bias_still_trains_by_plain_autograd():
    """W frozen but b trainable: the fast path would give b no gradient, so the plain formula runs."""
    layer = two_adapter_layer()
    layer.set_adapter("a")
    layer.base_layer.bias.requires_grad_(True)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(4))
    layer(x).sum().backward()
    torch.testing.assert_close(layer.base_layer.bias.grad, torch.full((5,), 3.0))
    assert layer.base_layer.weight.grad is None


def test_reselecting_the_merged_adapter_keeps_it_merged():
    layer = two_adapter_layer()
    layer.set_adapter("a")
    layer.merge()
    layer.set_adapter("a")
    assert layer.merged
    layer.set_adapter("b")
    assert not layer.merged


def test_deleting_an_adapter_of_a_combination_keeps_the_others_at_their_weights():
    layer = two_adapter_layer()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(4))
    layer.set_combination([("a", 2.0), ("b", 0.5)])
    assert layer.active_adapter is None
    layer.delete_adapter("b")
    assert layer.combination == (("a", 2.0),) and "b" not in layer.lora_A and "b" not in layer.scaling
    with torch.no_grad():
        torch.testing.assert_close(layer(x), by_hand_update(layer, x, {"a": 2.0}))
    layer.delete_adapter("a")
    assert layer.combination == ()
    with torch.no_grad():
        assert torch.equal(layer(x), layer.base_layer(x))


def test_a_combination_at_weight_two_doubles_and_disabling_gives_the_base():
    layer = two_adapter_layer()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(4))
    layer.set_combination([("a", 2.0), ("b", 1.0)])
    with torch.no_grad():
        torch.testing.assert_close(layer(x), by_hand_update(layer, x, {"a": 2.0, "b": 1.0}))
        layer.adapters_enabled = False
        assert torch.equal(layer(x), layer.base_layer(x))


def test_a_combination_applies_each_adapters_dropout_only_in_training():
    layer = two_adapter_layer(dropout=0.5)
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(4))
    layer.set_combination([("a", 1.0), ("b", 0.5)])
    with torch.no_grad():
        layer.eval()
        torch.testing.assert_close(layer(x), by_hand_update(layer, x, {"a": 1.0, "b": 0.5}))
        layer.train()
        assert not torch.equal(layer(x), layer(x))


def test_a_merged_combination_refuses_training_naming_its_adapters():
    layer = two_adapter_layer()
    layer.lora_A["b"].weight.requires_grad_(True)
    layer.set_combination([("a", 1.0), ("b", 0.5)])
    layer.merge()
    with pytest.raises(ConfigError) as info:
        layer(torch.randn(3, 6))
    assert info.value.field == "adapter"
    assert info.value.reason == (
        "adapters 'a', 'b' are merged, and training cannot reach a merged weight: unmerge() first"
    )


def test_a_zero_weight_first_in_a_combination_skips_only_that_adapter():
    layer = two_adapter_layer()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(4))
    layer.set_combination([("a", 0.0), ("b", 0.5)])
    with torch.no_grad():
        torch.testing.assert_close(layer(x), by_hand_update(layer, x, {"b": 0.5}))


@pytest.mark.parametrize("combined", [False, True], ids=["one adapter", "combination"])
def test_bfloat16_inputs_under_autocast_give_float32_outputs(combined):
    """The side path casts its input to the adapter's dtype: a bfloat16 input meets float32 A and B there."""
    layer = two_adapter_layer()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(4))
    if combined:
        layer.set_combination([("a", 1.0), ("b", 0.5)])
    else:
        layer.set_adapter("a")
    with torch.no_grad():
        expected = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=0.02, rtol=0)  # bfloat16 input and base matmul: ~4e-3 off


def test_adapter_modules_list_names_not_escaped_keys():
    layer = LoraLinear(torch.nn.Linear(6, 5))
    for name in ("v1.2", "train", "a"):
        layer.add_adapter(name, LoraConfig(r=2))
    assert layer.lora_A.keys() == ["v1.2", "train", "a"]
    assert [(name, module.weight.shape) for name, module in layer.lora_B.items()] == [
        (name, (5, 2)) for name in ("v1.2", "train", "a")
    ]
