"""VeRA (Kopiczko et al., 2024; PEFT's VeraConfig): one frozen random pair A, B shared by every layer, drawn from a
seed as PEFT draws it; each layer trains two vectors, dW = diag(b) B diag(d) A. What it computes, what it trains,
that PEFT reads our files and we read PEFT's, and what it refuses."""

from __future__ import annotations

import json

import pytest
import torch
from core_helpers import random_mlp
from safetensors.torch import load_file

from lora_core.errors import ConfigError
from lora_core.lora import LoraConfig, LoraModel
from lora_core.params import parameter_table
from lora_core.store.artifacts import ADAPTER_CONFIG, ArtifactStore
from lora_core.train import FinetuneConfig, finetune

VERA = LoraConfig(r=16, alpha=16, use_vera=True, projection_prng_key=3)
LAYERS = ["linear1", "linear2", "linear3"]


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(32, 784, generator=torch.Generator().manual_seed(0))


def trained_vera(seed: int = 1) -> LoraModel:
    """A VeRA adapter 'v' with both vectors moved away from their start."""
    model = LoraModel(random_mlp(0))
    model.add_adapter("v", VERA)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.lora_layers().values():
            layer.vera_lambda_b["v"].weight.normal_(0, 0.5, generator=gen)
            layer.vera_lambda_d["v"].weight.normal_(0, 0.5, generator=gen)
    return model


def test_the_shared_pair_is_peft_s_and_a_new_adapter_is_the_base(peft, x):
    ours = LoraModel(random_mlp(0))
    with torch.no_grad():
        base = ours(x)
    ours.add_adapter("v", VERA)
    theirs = peft.get_peft_model(random_mlp(0), peft.VeraConfig(r=16, target_modules=LAYERS, projection_prng_key=3))
    shared_a, shared_b = ours.adapters["v"].vera_shared
    assert torch.equal(shared_a, theirs.base_model.vera_A["default"])
    assert torch.equal(shared_b, theirs.base_model.vera_B["default"])
    with torch.no_grad():
        assert torch.equal(ours(x), base)  # b starts at 0


def test_vera_computes_diag_b_b_diag_d_a_layer_by_layer(x):
    model = trained_vera()
    h = x
    for i, layer in enumerate(model.lora_layers().values()):
        a, b = layer.lora_A["v"].weight, layer.lora_B["v"].weight
        d_vec, b_vec = layer.vera_lambda_d["v"].weight, layer.vera_lambda_b["v"].weight
        update = torch.diag(b_vec) @ b @ torch.diag(d_vec) @ a
        torch.testing.assert_close(layer.delta_weight("v"), update, atol=1e-5, rtol=1e-5)
        h = h @ (layer.base_layer.weight + update).T + layer.base_layer.bias
        if i < 2:
            h = torch.relu(h)
    with torch.no_grad():
        torch.testing.assert_close(model(x), h, atol=1e-4, rtol=0)


def test_peft_reads_our_vera_folder_and_we_read_peft_s(peft, tmp_path, x):
    store = ArtifactStore(tmp_path / "ours")
    meta = store.save_base(random_mlp(0), {})
    ours = trained_vera()
    folder = store.save_adapter(ours, "v", {}, meta["sha256"])
    assert json.loads((folder / ADAPTER_CONFIG).read_text())["peft_type"] == "VERA"
    with torch.no_grad():
        expected = ours(x)
        got = peft.PeftModel.from_pretrained(store.load_base().model, str(folder))(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    theirs = peft.get_peft_model(random_mlp(0), peft.VeraConfig(r=8, target_modules=LAYERS, projection_prng_key=5))
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "vera_lambda" in name:
                p.normal_(0, 0.5, generator=gen)
        their_logits = theirs(x)
    theirs.save_pretrained(str(tmp_path / "peft"))
    back = LoraModel(store.load_base().model)
    config = LoraConfig.from_peft(json.loads((tmp_path / "peft" / ADAPTER_CONFIG).read_text()))
    back.load_adapter_tensors("p", config, load_file(tmp_path / "peft" / "adapter_model.safetensors"))
    back.set_adapter("p")
    with torch.no_grad():
        torch.testing.assert_close(back(x), their_logits, atol=1e-5, rtol=0)


def test_vera_trains_only_its_vectors(small_base, small_mnist):
    model = LoraModel(small_base)
    before = {k: v.clone() for k, v in model.base_state_dict().items()}
    config = FinetuneConfig(digits=(9,), rank=32, steps=5, batch_size=32, lr=1e-2, device="cpu", use_vera=True)
    finetune(model, "v", small_mnist, config)
    shared_a, shared_b = (t.clone() for t in model.adapters["v"].vera_shared)
    for layer in model.lora_layers().values():
        assert layer.vera_lambda_b["v"].weight.abs().max() > 0  # b moved from 0
        assert not torch.all(layer.vera_lambda_d["v"].weight == 0.1)
    assert torch.equal(model.adapters["v"].vera_shared[0], shared_a)
    assert torch.equal(model.adapters["v"].vera_shared[1], shared_b)
    after = model.base_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    table = parameter_table(model, config.lora_config())
    assert table.lora_params == 3 * 32 + 256 + 256 + 10 == sum(p.numel() for p in model.mark_only_lora_trainable("v"))
    assert table.columns()[-2:] == ["λd params", "λb params"]


def test_vera_is_refused_beside_dora_loraplus_and_pissa():
    with pytest.raises(ConfigError, match="VeRA and DoRA"):
        FinetuneConfig(digits=(1,), use_vera=True, use_dora=True).validate()
    with pytest.raises(ConfigError, match="VeRA trains neither A nor B"):
        FinetuneConfig(digits=(1,), use_vera=True, loraplus_lr_ratio=16.0).validate()
    with pytest.raises(ConfigError, match="PiSSA and VeRA"):
        FinetuneConfig(digits=(1,), use_vera=True, init="pissa").validate()


def test_a_weighted_vera_adapter_adds_its_update_times_the_weight(x):
    model = trained_vera()
    layer = model.lora_layers()["linear1"]  # one layer: its output is linear in the update's weight
    with torch.no_grad():
        model.set_adapter(None)
        base = layer(x)
        model.set_adapter("v")
        full = layer(x)
        model.set_adapter(["v"], weights=[0.5])
        half = layer(x)
        model.set_adapter(["v"], weights=[1.0])
        assert torch.equal(layer(x), full)  # a list of one at weight 1 is the adapter alone
    assert (full - base).abs().max() > 1e-3
    torch.testing.assert_close(half, base + 0.5 * (full - base), atol=1e-5, rtol=0)
    b, d = layer.vera_lambda_b["v"].weight, layer.vera_lambda_d["v"].weight
    expected = b.view(-1, 1) * (layer.lora_B["v"].weight @ (d.view(-1, 1) * layer.lora_A["v"].weight))
    torch.testing.assert_close(layer.delta_weight("v"), expected, atol=1e-6, rtol=0)


def test_vera_s_shared_pair_is_frozen_real_and_its_dropout_follows_the_config():
    model = LoraModel(random_mlp(0))
    model.add_adapter("v", LoraConfig(r=8, alpha=8, use_vera=True, dropout=0.1))
    model.add_adapter("w", LoraConfig(r=8, alpha=8, use_vera=True))
    for layer in model.lora_layers().values():
        for pair in (layer.lora_A["v"], layer.lora_B["v"]):
            assert not pair.weight.requires_grad and pair.bias is None
        assert isinstance(layer.lora_dropout["v"], torch.nn.Dropout) and layer.lora_dropout["v"].p == 0.1
        assert isinstance(layer.lora_dropout["w"], torch.nn.Identity)
    assert all(p.device.type == "cpu" for p in model.parameters())  # nothing left on the meta device
