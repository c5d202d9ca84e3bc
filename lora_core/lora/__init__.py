"""LoRA as a drop-in replacement for nn.Linear, plus a model wrapper holding named adapters."""

from lora_core.lora.model import (
    INITS,
    AdapterModules,
    LoraConfig,
    LoraLinear,
    LoraModel,
    base_state_dict,
    linear_layers,
    rank_limits,
    validate_adapter_name,
)

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
