"""Training reads MNIST as load_mnist keeps it, uint8 pixels normalised batch by batch, and gets exactly
the model it got from the normalised float set held whole."""

from __future__ import annotations

import copy
import dataclasses

import torch

from lora_core.data import MnistData
from lora_core.lora import LoraModel
from lora_core.train import FinetuneConfig, TrainConfig, finetune, train_base

CONFIG = TrainConfig(epochs=1, batch_size=128, lr=2e-3, seed=3, device="cpu", hidden=(64, 32))


def as_floats(data: MnistData) -> MnistData:
    """The same data with the training images held as normalised floats, as before uint8 storage."""
    return dataclasses.replace(data, train_x=data.train_x)


def test_base_training_on_uint8_pixels_equals_training_on_normalised_floats(tiny_mnist):
    assert tiny_mnist.train_images.dtype == torch.uint8
    floats = as_floats(tiny_mnist)
    assert floats.train_images.dtype == torch.float32
    pixel_model, pixel_run = train_base(tiny_mnist, CONFIG)
    float_model, float_run = train_base(floats, CONFIG)
    assert pixel_run.losses == float_run.losses
    for (key, a), (_, b) in zip(pixel_model.state_dict().items(), float_model.state_dict().items()):
        assert torch.equal(a, b), key


def test_finetuning_on_uint8_pixels_equals_finetuning_on_normalised_floats(tiny_mnist):
    base, _ = train_base(tiny_mnist, dataclasses.replace(CONFIG, batch_size=500))
    config = FinetuneConfig(digits=(7,), rank=2, alpha=4, steps=15, batch_size=32, seed=1, device="cpu")
    runs, models = [], []
    for data in (tiny_mnist, as_floats(tiny_mnist)):
        lora_model = LoraModel(copy.deepcopy(base))
        runs.append(finetune(lora_model, "digit-7", data, config))
        models.append(lora_model.model.state_dict())
    assert runs[0].losses == runs[1].losses
    assert models[0].keys() == models[1].keys()
    for key in models[0]:
        assert torch.equal(models[0][key], models[1][key]), key
