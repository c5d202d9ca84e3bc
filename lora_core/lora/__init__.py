"""LoRA as a drop-in replacement for nn.Linear, plus a model wrapper holding named adapters.

Laid out as Hugging Face PEFT's tuners/lora:
    config.py   LoraConfig: how an adapter is shaped (rank, alpha, dropout, target layers, init)
    layer.py    LoraLinear: nn.Linear plus named adapters, y = x W^T + b + scale * dropout(x) A^T B^T
    model.py    LoraModel: an MLP whose layers carry named adapters (add, activate, combine, merge, save)
    fast.py     the training path of a layer with a frozen base: the same y with a leaner backward
    pissa.py    PiSSA's start from W's top singular directions, and its conversion to plain LoRA on W
    nf4.py      QLoRA's frozen 4-bit NF4 base (torchao), built beside W for the adapters trained on it
"""

from lora_core.lora.config import INITS, LoraConfig
from lora_core.lora.layer import AdapterModules, LoraLinear, linear_layers, rank_limits
from lora_core.lora.model import LoraModel, base_state_dict, validate_adapter_name

__all__ = [
    "INITS",
    "AdapterModules",
    "LoraConfig",
    "LoraLinear",
    "LoraModel",
    "base_state_dict",
    "linear_layers",
    "rank_limits",
    "validate_adapter_name",
]
