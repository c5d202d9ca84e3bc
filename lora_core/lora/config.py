"""How an adapter is shaped: LoraConfig, as Hugging Face PEFT's lora/config.py, kept apart from the layers."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from lora_core.errors import ConfigError
from lora_core.lora.layer import linear_layers, rank_limits
from lora_core.model import LAYER_NAMES, MAX_HIDDEN
from lora_core.numbers import is_finite_number

INITS = ("kaiming", "gaussian")


# The update s·B·A·x is computed in float32 (bfloat16 has the same range), and Adam moves each entry of B by
# about the learning rate per step whatever the gradient's size, so the update grows like s × lr. A bound far
# above any scale in use (PEFT's are 1 to 2: alpha = r or 2r) keeps s, and s × lr for any learning rate a run
# accepts (at most 1), far inside float32's range.
MAX_SCALE = 1e6
# No layer of a base model has more rows or columns than this: a larger rank would be capped to the same.
MAX_RANK = MAX_HIDDEN


@dataclass(frozen=True)
class LoraConfig:
    """How an adapter is shaped; kept apart from the layers, like PEFT's LoraConfig."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = LAYER_NAMES
    use_rslora: bool = False
    init: str = "kaiming"
    # DoRA (Liu et al., 2024; PEFT's use_dora): W' = m * (W + s*B*A) / ||W + s*B*A|| per output row, with a trainable
    # magnitude m per row, starting at ||W||
    use_dora: bool = False
    # VeRA (Kopiczko et al., 2024; PEFT's VeraConfig): one frozen random pair A (r x in), B (out x r) shared by every
    # layer, drawn from projection_prng_key as PEFT draws it; each layer trains only two vectors, d (r) and b (out):
    # dW = diag(b) B diag(d) A, with d starting at d_initial and b at 0. No scale: alpha and rsLoRA play no part.
    use_vera: bool = False
    projection_prng_key: int = 0
    d_initial: float = 0.1
    # PEFT's per-layer overrides of r and alpha, as (layer, value) pairs sorted by layer (a dict is accepted).
    # capped_for() fills them where r is above a layer's limit; empty for every adapter that needs none.
    rank_pattern: tuple[tuple[str, int], ...] = ()
    alpha_pattern: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        for key in ("rank_pattern", "alpha_pattern"):
            value = getattr(self, key)
            pairs = value.items() if isinstance(value, dict) else value
            object.__setattr__(self, key, tuple(sorted((str(k), v) for k, v in pairs)))

    @property
    def scale(self) -> float:
        if self.use_vera:
            return 1.0
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def rank_for(self, layer: str) -> int:
        """The rank of `layer`'s adapter: rank_pattern's where it names the layer, else r."""
        return dict(self.rank_pattern).get(layer, self.r)

    def scale_for(self, layer: str) -> float:
        """`layer`'s scale as PEFT computes it: its alpha (alpha_pattern's or alpha) over its rank (or sqrt)."""
        if self.use_vera:
            return 1.0
        alpha, r = dict(self.alpha_pattern).get(layer, self.alpha), self.rank_for(layer)
        return alpha / (math.sqrt(r) if self.use_rslora else r)

    def capped_for(self, model: nn.Module) -> LoraConfig:
        """This config with r capped at min(in, out) on each layer that cannot hold it, the way PEFT says so:
        rank_pattern gives the capped rank, and alpha_pattern an alpha that keeps the layer's scale alpha/r
        (alpha/sqrt(r) with rsLoRA). Without it PEFT would scale the capped layer by alpha/r', which with the
        usual alpha = 2r grows with r (12.8 on linear3 at r=64): the layer would train at another learning
        rate, not just with fewer dimensions. Layers rank_pattern already names are left as they are (validate
        refuses them above the limit); a config that needs no cap is returned itself."""
        if self.use_vera:  # one shared A and B: every layer takes r from them, as PEFT's VeRA does
            return self
        limits = rank_limits(model)
        ranks, alphas = dict(self.rank_pattern), dict(self.alpha_pattern)
        for name in self.target_modules:
            limit = limits.get(name)
            if name in ranks or limit is None or self.r <= limit:
                continue
            ratio = limit / self.r
            ranks[name] = limit
            alphas[name] = alphas.get(name, self.alpha) * (math.sqrt(ratio) if self.use_rslora else ratio)
        if ranks == dict(self.rank_pattern):
            return self
        return dataclasses.replace(self, rank_pattern=ranks, alpha_pattern=alphas)

    def validate(self, model: nn.Module | None = None) -> None:
        """Raise ConfigError for any value that cannot make a sensible adapter on `model`."""
        if isinstance(self.r, bool) or not isinstance(self.r, int) or not 1 <= self.r <= MAX_RANK:
            raise ConfigError("rank", f"must be a whole number from 1 to {MAX_RANK:,}, got {self.r!r}")
        if not is_finite_number(self.alpha) or self.alpha <= 0:
            raise ConfigError("alpha", f"must be a positive number, got {self.alpha!r}")
        if not is_finite_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout!r}")
        if self.init not in INITS:
            raise ConfigError("init", f"must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.use_vera:
            if self.use_dora:
                raise ConfigError("use_vera", "VeRA and DoRA cannot be combined; choose one of them")
            if self.rank_pattern or self.alpha_pattern:
                raise ConfigError("rank", "VeRA shares one A and B across layers: no per-layer rank or alpha")
            if not is_finite_number(self.d_initial):
                raise ConfigError("d_initial", f"must be a number, got {self.d_initial!r}")
            key = self.projection_prng_key
            if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < 2**63:
                raise ConfigError("projection_prng_key", f"must be a whole number from 0 to 2**63 - 1, got {key!r}")
        if not self.target_modules:
            raise ConfigError("targets", "choose at least one layer to adapt")
        if len(set(self.target_modules)) != len(self.target_modules):
            raise ConfigError("targets", f"lists a layer twice: {', '.join(self.target_modules)}")
        for name, r in self.rank_pattern:
            if name not in self.target_modules:
                raise ConfigError("rank", f"rank_pattern names {name!r}, which is not one of the target layers")
            if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= MAX_RANK:
                reason = f"rank_pattern: {name} must be a whole number from 1 to {MAX_RANK:,}, got {r!r}"
                raise ConfigError("rank", reason)
        for name, alpha in self.alpha_pattern:
            if name not in self.target_modules:
                raise ConfigError("alpha", f"alpha_pattern names {name!r}, which is not one of the target layers")
            if not is_finite_number(alpha) or alpha <= 0:
                raise ConfigError("alpha", f"alpha_pattern: {name} must be a positive number, got {alpha!r}")
        for layer in self.target_modules:
            scale = self.scale_for(layer)
            if scale > MAX_SCALE:
                over = "sqrt(r)" if self.use_rslora else "r"
                raise ConfigError(
                    "alpha",
                    f"the update's scale alpha/{over} is {scale:.3g} on {layer} (rank {self.rank_for(layer)}), "
                    f"above the {MAX_SCALE:g} allowed (float32 could not carry the update); lower alpha",
                )
        if model is None:
            return
        layers = linear_layers(model)
        for name in self.target_modules:
            if name not in layers:
                known = ", ".join(layers)
                raise ConfigError("targets", f"unknown layer {name!r}; the model has {known}")
        # r itself may exceed a layer's limit: capped_for caps it there. A rank rank_pattern gives is exact.
        for name, r in self.rank_pattern:
            layer = layers[name]
            limit = min(layer.in_features, layer.out_features)
            if r > limit:
                raise ConfigError(
                    "rank",
                    f"rank_pattern gives {name} rank {r}, larger than it allows ({layer.in_features} -> "
                    f"{layer.out_features}: at most {limit})",
                )

    def to_peft(self) -> dict[str, Any]:
        """The fields of Hugging Face PEFT's adapter_config.json for this adapter (its VeraConfig's for VeRA)."""
        if self.use_vera:
            return {
                "peft_type": "VERA",
                "task_type": None,
                "base_model_name_or_path": None,
                "r": self.r,
                "target_modules": list(self.target_modules),
                "projection_prng_key": self.projection_prng_key,
                "save_projection": True,  # A and B travel in the file: a reader needs no PRNG of ours
                "vera_dropout": self.dropout,
                "d_initial": self.d_initial,
                "bias": "none",
                "fan_in_fan_out": False,
                "init_weights": True,
                "inference_mode": True,
                "modules_to_save": None,
            }
        return {
            "peft_type": "LORA",
            "task_type": None,
            "base_model_name_or_path": None,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": list(self.target_modules),
            "use_rslora": self.use_rslora,
            **({"use_dora": True} if self.use_dora else {}),  # only for DoRA: other adapters' files stay as they were
            "bias": "none",
            "fan_in_fan_out": False,
            "init_lora_weights": True if self.init == "kaiming" else "gaussian",
            "inference_mode": True,
            "modules_to_save": None,
            # only where a layer differs from r and alpha, so that every other adapter's file stays as it was
            **({"rank_pattern": dict(self.rank_pattern)} if self.rank_pattern else {}),
            **({"alpha_pattern": dict(self.alpha_pattern)} if self.alpha_pattern else {}),
        }

    @classmethod
    def from_peft(cls, data: dict[str, Any]) -> LoraConfig:
        """Read the fields this package uses from a PEFT adapter_config.json dictionary."""
        if data.get("peft_type") == "VERA":
            return cls._from_peft_vera(data)
        if data.get("peft_type") != "LORA":
            raise ConfigError("peft_type", f"expected 'LORA' or 'VERA', got {data.get('peft_type')!r}")
        targets = _peft_targets(data, ("r", "lora_alpha", "target_modules"))
        init = "gaussian" if data.get("init_lora_weights") == "gaussian" else "kaiming"
        patterns = {}
        for key in ("rank_pattern", "alpha_pattern"):
            value = data.get(key) or {}
            if not isinstance(value, dict):
                raise ConfigError(key, f"must map layer names to values, got {value!r}")
            patterns[key] = value
        cfg = cls(
            r=data["r"],
            alpha=data["lora_alpha"],
            dropout=data.get("lora_dropout", 0.0),
            target_modules=tuple(targets),
            use_rslora=bool(data.get("use_rslora", False)),
            use_dora=bool(data.get("use_dora", False)),
            init=init,
            **patterns,
        )
        cfg.validate()
        return cfg

    @classmethod
    def _from_peft_vera(cls, data: dict[str, Any]) -> LoraConfig:
        targets = _peft_targets(data, ("r", "target_modules"))
        cfg = cls(
            r=data["r"],
            alpha=float(data["r"]),  # unused by VeRA; r keeps the config valid
            dropout=data.get("vera_dropout", 0.0),
            target_modules=tuple(targets),
            use_vera=True,
            projection_prng_key=data.get("projection_prng_key", 0),
            d_initial=data.get("d_initial", 0.1),
        )
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        if not self.use_vera:  # only for VeRA: every other adapter's record stays as it was
            for key in ("use_vera", "projection_prng_key", "d_initial"):
                del d[key]
        if not self.use_dora:
            del d["use_dora"]
        for key in ("rank_pattern", "alpha_pattern"):  # as in to_peft: only where a layer differs
            if getattr(self, key):
                d[key] = dict(getattr(self, key))
            else:
                del d[key]
        return d


def _peft_targets(data: dict[str, Any], required: tuple[str, ...]) -> list[str]:
    """An adapter_config.json's target layers, once the keys `required` are there and its bias and layout are ones
    this package reads (ConfigError naming the field otherwise)."""
    for key in required:
        if key not in data:
            raise ConfigError(key, "missing from adapter_config.json")
    if data.get("bias", "none") != "none" or data.get("fan_in_fan_out", False):
        raise ConfigError("bias", "only bias='none' and fan_in_fan_out=false adapters are supported")
    targets = data["target_modules"]
    if isinstance(targets, str) or not isinstance(targets, list):
        raise ConfigError("target_modules", f"must be a list of layer names, got {targets!r}")
    return targets
