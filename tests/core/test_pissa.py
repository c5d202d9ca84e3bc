"""PiSSA (Meng et al., 2024; PEFT's init_lora_weights="pissa"): the adapter starts from W's top-r singular
directions and trains on the residual W - s B0 A0 (in a copy); it is saved as plain LoRA of rank 2r on the
untouched W, which PEFT loads to the same logits, and the residual it trained on is recorded as changed."""

from __future__ import annotations

import json

import pytest
import torch
from core_helpers import random_mlp

from lora_core.errors import ConfigError
from lora_core.lab.study import finetune_and_save_adapter
from lora_core.lora import LoraConfig, LoraModel
from lora_core.lora.pissa import as_plain_lora, principal_factors, residual_start
from lora_core.store.artifacts import ADAPTER_CONFIG, ArtifactStore
from lora_core.train import FinetuneConfig

CONFIG = LoraConfig(r=8, alpha=16)  # linear3 (10 outputs) cannot hold rank 16 once converted


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(32, 784, generator=torch.Generator().manual_seed(0))


def test_principal_factors_are_w_s_best_rank_r_part():
    w = torch.randn(40, 30, generator=torch.Generator().manual_seed(0))
    a0, b0 = principal_factors(w, 5, scale=2.0)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    torch.testing.assert_close(2.0 * b0 @ a0, u[:, :5] @ torch.diag(s[:5]) @ vh[:5], atol=1e-5, rtol=0)
    torch.testing.assert_close(a0.norm(dim=1), b0.norm(dim=0), atol=1e-5, rtol=1e-5)  # split evenly


def test_the_residual_start_matches_peft_s_pissa_and_leaves_the_base_alone(peft, x):
    base = random_mlp(0)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    start = residual_start(base, "p", CONFIG)
    with torch.no_grad():
        torch.testing.assert_close(start.model(x), base(x), atol=1e-5, rtol=0)  # step 0: the base's function
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    theirs = peft.get_peft_model(
        random_mlp(0),
        peft.LoraConfig(
            r=8, lora_alpha=16, target_modules=["linear1", "linear2", "linear3"], init_lora_weights="pissa"
        ),
    )
    for name, layer in start.model.lora_layers().items():
        peft_layer = getattr(theirs.base_model.model, name)
        torch.testing.assert_close(layer.lora_A["p"].weight, peft_layer.lora_A["default"].weight, atol=1e-6, rtol=0)
        torch.testing.assert_close(layer.lora_B["p"].weight, peft_layer.lora_B["default"].weight, atol=1e-6, rtol=0)
        torch.testing.assert_close(layer.base_layer.weight, peft_layer.base_layer.weight, atol=1e-6, rtol=0)
        assert not torch.equal(layer.base_layer.weight, getattr(base, name).weight)  # the copy holds W_res


def test_the_conversion_gives_the_trained_model_on_the_untouched_w(x):
    base = random_mlp(0)
    with torch.no_grad():
        base_logits = base(x)
    start = residual_start(base, "p", CONFIG)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # as if trained: A and B moved away from A0, B0
        for layer in start.model.lora_layers().values():
            for p in (layer.lora_A["p"].weight, layer.lora_B["p"].weight):
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
        trained = start.model(x)
    config, tensors = as_plain_lora(start, "p")
    assert (config.r, config.scale) == (16, CONFIG.scale)
    assert dict(config.rank_pattern) == {"linear3": 10}  # at its limit: an identity on its 10 outputs
    assert config.scale_for("linear3") == pytest.approx(CONFIG.scale)
    plain = LoraModel(base)
    plain.load_adapter_tensors("p", config, tensors)
    plain.set_adapter("p")
    with torch.no_grad():
        got = plain(x)
    assert (trained - base_logits).abs().max() > 1e-2
    torch.testing.assert_close(got, trained, atol=1e-5, rtol=0)


def test_a_pissa_run_saves_plain_lora_that_peft_loads_and_records_the_changed_residual(
    peft, small_base, small_mnist, tmp_path
):
    store = ArtifactStore(tmp_path)
    store.save_base(small_base, {})
    record = store.load_base("cpu")
    model = LoraModel(record.model)
    before = {k: v.clone() for k, v in model.base_state_dict().items()}
    config = FinetuneConfig(digits=(3,), rank=4, alpha=8, steps=6, batch_size=32, device="cpu", init="pissa")
    outcome = finetune_and_save_adapter(store, record, model, small_mnist, config, "p")
    assert all(torch.equal(before[k], v) for k, v in model.base_state_dict().items())
    metrics = outcome.metrics
    assert metrics["finetune"]["init"] == "pissa" and metrics["trainable_params"] == outcome.trainable_params
    assert outcome.trainable_params == sum(4 * (i + o) for i, o in ((784, 256), (256, 256), (256, 10)))
    assert metrics["base_tensors"]["before"] == metrics["base_tensors"]["after"]  # W: untouched
    pissa = metrics["pissa"]
    assert (pissa["trained_rank"], pissa["saved_rank"]) == (4, 8)
    residual = pissa["residual_base"]
    changed = {k for k in residual["before"] if residual["before"][k] != residual["after"][k]}
    assert changed == {"linear1.weight", "linear2.weight", "linear3.weight"}  # the residual base: by design
    assert all(pissa["residual_max_abs_diff"][k] > 0 for k in changed)
    peft_config = json.loads((store.adapter_dir("p") / ADAPTER_CONFIG).read_text())
    assert (peft_config["peft_type"], peft_config["r"], peft_config["init_lora_weights"]) == ("LORA", 8, True)

    x = small_mnist.test_x[:500]
    model.set_adapter("p")
    with torch.no_grad():
        ours = model(x)
        theirs = peft.PeftModel.from_pretrained(store.load_base("cpu").model, str(store.adapter_dir("p")))(x)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_pissa_is_refused_with_dora_and_an_unknown_init_names_pissa():
    with pytest.raises(ConfigError, match="PiSSA and DoRA"):
        FinetuneConfig(digits=(1,), init="pissa", use_dora=True).validate()
    with pytest.raises(ConfigError, match="kaiming, gaussian, pissa"):
        FinetuneConfig(digits=(1,), init="svd").validate()
