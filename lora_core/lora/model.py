"""LoRA as a drop-in replacement for nn.Linear, plus a model wrapper holding named adapters.

The frozen weight W is never modified. An adapter adds B(A(x)) * scale on the side:
    y = x W^T + b + dropout(x) A^T B^T * scale,   scale = alpha / r  (or alpha / sqrt(r), rsLoRA)
A new adapter has B = 0, so it changes nothing until trained. Merging builds W + scale * B A into a
separate tensor used for inference; unmerging drops that tensor, so W stays bit-for-bit what it was.

Several adapters can be active at once, each with a weight (PEFT's set_adapter with a list of names, and the
sum of updates that its add_weighted_adapter builds with combination_type="cat"):
    y = x W^T + b + sum_k w_k * scale_k * dropout_k(x) A_k^T B_k^T
A combination merges the same way, into a separate tensor W + sum_k w_k scale_k B_k A_k: W itself is never
written, so unmerging leaves it bit-identical (W + dW - dW would not be, in floating point).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lora_core.errors import ConfigError, StaleAdapterError
from lora_core.model import LAYER_NAMES, MLP
from lora_core.numbers import is_finite_number

INITS = ("kaiming", "gaussian")


@dataclass(frozen=True)
class LoraConfig:
    """How an adapter is shaped; kept apart from the layers, like PEFT's LoraConfig."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = LAYER_NAMES
    use_rslora: bool = False
    init: str = "kaiming"
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
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def rank_for(self, layer: str) -> int:
        """The rank of `layer`'s adapter: rank_pattern's where it names the layer, else r."""
        return dict(self.rank_pattern).get(layer, self.r)

    def scale_for(self, layer: str) -> float:
        """`layer`'s scale as PEFT computes it: its alpha (alpha_pattern's or alpha) over its rank (or sqrt)."""
        alpha, r = dict(self.alpha_pattern).get(layer, self.alpha), self.rank_for(layer)
        return alpha / (math.sqrt(r) if self.use_rslora else r)

    def capped_for(self, model: nn.Module) -> LoraConfig:
        """This config with r capped at min(in, out) on each layer that cannot hold it, the way PEFT says so:
        rank_pattern gives the capped rank, and alpha_pattern an alpha that keeps the layer's scale alpha/r
        (alpha/sqrt(r) with rsLoRA). Without it PEFT would scale the capped layer by alpha/r', which with the
        usual alpha = 2r grows with r (12.8 on linear3 at r=64): the layer would train at another learning
        rate, not just with fewer dimensions. Layers rank_pattern already names are left as they are (validate
        refuses them above the limit); a config that needs no cap is returned itself."""
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
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ConfigError("rank", f"must be a whole number of at least 1, got {self.r!r}")
        if not is_finite_number(self.alpha) or self.alpha <= 0:
            raise ConfigError("alpha", f"must be a positive number, got {self.alpha!r}")
        if not is_finite_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout!r}")
        if self.init not in INITS:
            raise ConfigError("init", f"must be one of {', '.join(INITS)}, got {self.init!r}")
        if not self.target_modules:
            raise ConfigError("targets", "choose at least one layer to adapt")
        if len(set(self.target_modules)) != len(self.target_modules):
            raise ConfigError("targets", f"lists a layer twice: {', '.join(self.target_modules)}")
        for name, r in self.rank_pattern:
            if name not in self.target_modules:
                raise ConfigError("rank", f"rank_pattern names {name!r}, which is not one of the target layers")
            if isinstance(r, bool) or not isinstance(r, int) or r < 1:
                raise ConfigError("rank", f"rank_pattern: {name} must be a whole number of at least 1, got {r!r}")
        for name, alpha in self.alpha_pattern:
            if name not in self.target_modules:
                raise ConfigError("alpha", f"alpha_pattern names {name!r}, which is not one of the target layers")
            if not is_finite_number(alpha) or alpha <= 0:
                raise ConfigError("alpha", f"alpha_pattern: {name} must be a positive number, got {alpha!r}")
        if model is None:
            return
        layers = dict(_linear_layers(model))
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
        """The fields of Hugging Face PEFT's adapter_config.json for this adapter."""
        return {
            "peft_type": "LORA",
            "task_type": None,
            "base_model_name_or_path": None,
            "r": self.r,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": list(self.target_modules),
            "use_rslora": self.use_rslora,
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
        if data.get("peft_type") != "LORA":
            raise ConfigError("peft_type", f"expected 'LORA', got {data.get('peft_type')!r}")
        for key in ("r", "lora_alpha", "target_modules"):
            if key not in data:
                raise ConfigError(key, "missing from adapter_config.json")
        if data.get("bias", "none") != "none" or data.get("fan_in_fan_out", False):
            raise ConfigError("bias", "only bias='none' and fan_in_fan_out=false adapters are supported")
        targets = data["target_modules"]
        if isinstance(targets, str) or not isinstance(targets, list):
            raise ConfigError("target_modules", f"must be a list of layer names, got {targets!r}")
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
            init=init,
            **patterns,
        )
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        for key in ("rank_pattern", "alpha_pattern"):  # as in to_peft: only where a layer differs
            if getattr(self, key):
                d[key] = dict(getattr(self, key))
            else:
                del d[key]
        return d


def _linear_layers(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    for name, module in model.named_children():
        if isinstance(module, LoraLinear):
            yield name, module.base_layer
        elif isinstance(module, nn.Linear):
            yield name, module


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """The model's nn.Linear children by name (the frozen base layer where LoRA wraps one)."""
    return dict(_linear_layers(model))


def rank_limits(model: nn.Module) -> dict[str, int]:
    """The largest sensible LoRA rank per layer: min(in_features, out_features)."""
    return {name: min(layer.in_features, layer.out_features) for name, layer in _linear_layers(model)}


class AdapterModules(nn.ModuleDict):
    """nn.ModuleDict keyed by adapter name, for names that are not valid module keys.

    Adapter names are folder names and may contain '.' ("v1.2") or equal an attribute of
    nn.ModuleDict ("train", "keys"); PyTorch refuses both as module keys. Such a name is stored under
    an escaped key ('.' -> '%2E', a leading '%' against attribute clashes). '%' is never part of a
    valid adapter name, so the mapping is one-to-one, and plain names keep their own key.
    """

    def __getitem__(self, name: str) -> nn.Module:
        return super().__getitem__(_module_key(name))

    def __setitem__(self, name: str, module: nn.Module) -> None:
        super().__setitem__(_module_key(name), module)

    def __delitem__(self, name: str) -> None:
        super().__delitem__(_module_key(name))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(_module_key(name))

    def __iter__(self) -> Iterator[str]:
        return (_adapter_name(key) for key in super().__iter__())

    def keys(self) -> list[str]:  # type: ignore[override]
        return list(self)

    def items(self) -> list[tuple[str, nn.Module]]:  # type: ignore[override]
        return [(_adapter_name(key), module) for key, module in self._modules.items() if module is not None]


_EMPTY_MODULE_DICT = nn.ModuleDict()  # its attributes (train, keys, training, ...) are the names to escape


def _module_key(name: str) -> str:
    key = name.replace(".", "%2E")
    return "%" + key if hasattr(_EMPTY_MODULE_DICT, key) else key


def _adapter_name(key: str) -> str:
    return key.removeprefix("%").replace("%2E", ".")


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast switched off where it is on; elsewhere nothing (entering torch.autocast costs about 8 us)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class _FrozenBaseLoraFunction(torch.autograd.Function):
    """y = x W^T + b + (s A^T) B^T * scale with W and b frozen, s = dropout(x) (or x itself), for training.

    Autograd through the plain formula spends a step's time on work a frozen base does not need: the
    in-place sum of the side path into a view of the output is replayed backward by copying and zeroing
    the whole (batch, out_features) gradient, the scale multiplies full-size tensors, and the input's
    gradient from the side path is a second (batch, in_features) tensor added to the base's. Here the
    backward computes only the matmuls that must run:
        dB = scale g^T (s A^T)                         (out x r; s A^T saved from the forward)
        dA = scale (g B)^T s                           (r x in)
        dx = g W + scale (g B) A                       one addmm, only where x needs a gradient
    and never a gradient for W or b. `weight` and `bias` arrive already in the dtype the base matmuls run
    in (under autocast, bfloat16 copies that LoraLinear keeps while W is unchanged); the side path, the sum
    and every gradient stay in the adapter's dtype (float32): in bfloat16 the small update would round away
    beside the base output.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        x_side: torch.Tensor | None,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        a: torch.Tensor,
        b: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        with _autocast_off(x.device.type):
            out = F.linear(x if x.dtype == weight.dtype else x.to(weight.dtype), weight, bias)
            if out.dtype != b.dtype:
                out = out.to(b.dtype)
            side = x if x_side is None else x_side
            if side.dtype != a.dtype:
                side = side.to(a.dtype)
            # the skinny products are taken in the orientation whose result is (r, ...) and read through
            # a transposed view: measured 2-4x faster here than the (..., r) orientation
            xa = torch.mm(a, side.t()).t()
            out.addmm_(xa, b.t(), alpha=scale)
        ctx.save_for_backward(side, xa, weight, a, b)
        ctx.scale = scale
        ctx.x_dtype = x.dtype
        ctx.side_dtype = None if x_side is None else x_side.dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        side, xa, weight, a, b = ctx.saved_tensors
        scale = ctx.scale
        need_x, need_side, _, _, need_a, need_b = ctx.needs_input_grad[:6]
        grad_x = grad_side = grad_a = grad_b = None
        with _autocast_off(grad.device.type):
            if grad.dtype != b.dtype:
                grad = grad.to(b.dtype)
            if need_b:
                grad_b = torch.mm(xa.t(), grad).t().mul_(scale)
            grad_xa = torch.mm(b.t(), grad.t()).t().mul_(scale)  # (batch, r): scaling it here is cheap
            if need_a:
                grad_a = torch.mm(grad_xa.t(), side)
            if need_x:
                grad_x = torch.mm(grad if grad.dtype == weight.dtype else grad.to(weight.dtype), weight)
                if grad_x.dtype != a.dtype:
                    grad_x = grad_x.to(a.dtype)
                if ctx.side_dtype is None:  # the side path read x itself: its gradient joins the same sum
                    grad_x.addmm_(grad_xa, a)
                if grad_x.dtype != ctx.x_dtype:
                    grad_x = grad_x.to(ctx.x_dtype)
            if need_side:
                grad_side = torch.mm(grad_xa, a)
                if grad_side.dtype != ctx.side_dtype:
                    grad_side = grad_side.to(ctx.side_dtype)
        return grad_x, grad_side, None, None, grad_a, grad_b, None


@dataclass
class _BaseCast:
    """A frozen base layer's W and b cast to `dtype`, with what they were made from."""

    dtype: torch.dtype
    sources: list[tuple[torch.Tensor, int, int]]  # (tensor, data_ptr, version) of W, then b
    weight: torch.Tensor
    bias: torch.Tensor | None


class LoraLinear(nn.Module):
    """nn.Linear plus any number of named low-rank adapters, at most one active at a time."""

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.lora_A = AdapterModules()
        self.lora_B = AdapterModules()
        self.lora_dropout = AdapterModules()
        self.scaling: dict[str, float] = {}
        self.active_adapter: str | None = None
        # several adapters at once: (name, weight) pairs of the ones this layer holds; None when not combining
        self.combination: tuple[tuple[str, float], ...] | None = None
        self.adapters_enabled = True
        self._merged_weight: torch.Tensor | None = None
        self._base_cast: _BaseCast | None = None  # W and b in autocast's dtype while training; _frozen_base_as

    def add_adapter(
        self, name: str, config: LoraConfig, generator: torch.Generator | None = None, layer: str | None = None
    ) -> None:
        """Add adapter `name`; `layer` (this layer's name in the model) picks its rank_pattern/alpha_pattern."""
        w = self.base_layer.weight
        r = config.rank_for(layer) if layer else config.r
        a = nn.Linear(self.in_features, r, bias=False, device=w.device, dtype=w.dtype)
        b = nn.Linear(r, self.out_features, bias=False, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            if config.init == "gaussian":  # PEFT's init_lora_weights="gaussian": N(0, 1/r)
                a.weight.normal_(0.0, 1.0 / r, generator=generator)
            else:  # PEFT's and nn.Linear's default: Kaiming-uniform with a = sqrt(5)
                bound = 1.0 / math.sqrt(self.in_features)
                a.weight.uniform_(-bound, bound, generator=generator)
            b.weight.zero_()
        self.lora_A[name] = a
        self.lora_B[name] = b
        self.lora_dropout[name] = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.scaling[name] = config.scale_for(layer) if layer else config.scale

    def delete_adapter(self, name: str) -> None:
        if self.active_adapter == name:
            self.unmerge()
            self.active_adapter = None
        if self.combination is not None and any(n == name for n, _ in self.combination):
            self.set_combination(tuple((n, w) for n, w in self.combination if n != name))
        for store in (self.lora_A, self.lora_B, self.lora_dropout):
            if name in store:
                del store[name]
        self.scaling.pop(name, None)

    def set_adapter(self, name: str | None) -> None:
        if name != self.active_adapter or self.combination is not None:
            self.unmerge()
        self.combination = None
        self.active_adapter = name if name in self.lora_A else None

    def set_combination(self, weighted: Sequence[tuple[str, float]]) -> None:
        """Activate several adapters at once, each update scaled by its weight; names this layer does not
        hold are left out (an adapter need not cover every layer)."""
        self.unmerge()
        self.active_adapter = None
        self.combination = tuple((name, float(weight)) for name, weight in weighted if name in self.lora_A)

    def delta_weight(self, name: str) -> torch.Tensor:
        """The update scale * B A that the adapter adds to W (for inspection and merging)."""
        return (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]

    @torch.no_grad()
    def merge(self) -> None:
        if self.combination is not None:
            self._merge_combination()
            return
        if self.active_adapter is None:
            return
        self._merged_weight = self.base_layer.weight + self.delta_weight(self.active_adapter)

    def combined_delta_weight(self) -> torch.Tensor | None:
        """sum_k w_k * scale_k * B_k A_k of the active combination (None when no adapter of it is here)."""
        delta = None
        for name, weight in self.combination or ():
            term = self.delta_weight(name) * weight
            delta = term if delta is None else delta + term
        return delta

    def _merge_combination(self) -> None:
        delta = self.combined_delta_weight()
        if delta is not None:  # a separate tensor, as for one adapter: W itself is never written
            self._merged_weight = self.base_layer.weight + delta

    def unmerge(self) -> None:
        self._merged_weight = None

    @property
    def merged(self) -> bool:
        return self._merged_weight is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.combination is not None:
            return self._combined_forward(x)
        name = self.active_adapter
        if name is None or not self.adapters_enabled:
            return self.base_layer(x)
        if self._merged_weight is not None:
            return F.linear(x, self._merged_weight, self.base_layer.bias)
        dropout = self.lora_dropout[name]
        # with dropout 0 the side path reads x itself: no Identity call, no copy
        x_side = dropout(x) if isinstance(dropout, nn.Dropout) else None
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        scale = self.scaling[name]
        weight, bias = self.base_layer.weight, self.base_layer.bias
        base_trainable = weight.requires_grad or (bias is not None and bias.requires_grad)
        if not torch.is_grad_enabled() or base_trainable:
            # evaluation and prediction: PEFT's own order of operations, so that logits agree with PEFT's
            # to the last bit and every reported accuracy is unchanged. A base layer left trainable (a
            # LoraLinear used on its own) also takes this path: plain autograd gives W and b their gradients.
            out = self.base_layer(x)
            side = x if x_side is None else x_side
            if out.dtype != b.dtype:  # bfloat16 autocast: the side path and the sum in float32, as below
                with torch.autocast(x.device.type, enabled=False):
                    return out.to(b.dtype) + F.linear(F.linear(side.to(a.dtype), a), b) * scale
            return out + F.linear(F.linear(side, a), b) * scale
        # training with a frozen base: one autograd node for the whole layer, which adds the side path into
        # the base output in place and computes no gradient for W or b (see _FrozenBaseLoraFunction)
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type) and weight.is_floating_point():
            weight, bias = self._frozen_base_as(torch.get_autocast_dtype(device_type))
        lead = x.shape[:-1]
        out = _FrozenBaseLoraFunction.apply(
            x.reshape(-1, self.in_features),
            None if x_side is None else x_side.reshape(-1, self.in_features),
            weight,
            bias,
            a,
            b,
            scale,
        )
        return out.view(*lead, self.out_features)

    def _combined_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output plus every active adapter's update times its weight, by plain autograd (combinations
        are for evaluation and prediction). Each term is computed exactly as the single-adapter evaluation
        path computes its one term, and a weight of 1 multiplies nothing, so that a combination of one adapter
        at weight 1 (the others at 0) gives that adapter's logits to the last bit."""
        if not self.adapters_enabled or not self.combination:
            return self.base_layer(x)
        if self._merged_weight is not None:
            return F.linear(x, self._merged_weight, self.base_layer.bias)
        out = self.base_layer(x)
        first_b = self.lora_B[self.combination[0][0]].weight
        if out.dtype != first_b.dtype:  # bfloat16 autocast: the side paths and the sum in float32
            with torch.autocast(x.device.type, enabled=False):
                return self._add_updates(out.to(first_b.dtype), x)
        return self._add_updates(out, x)

    def _add_updates(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        for name, weight in self.combination or ():
            if weight == 0.0:  # contributes nothing: skipped, not multiplied
                continue
            dropout = self.lora_dropout[name]
            side = dropout(x) if isinstance(dropout, nn.Dropout) else x
            a, b = self.lora_A[name].weight, self.lora_B[name].weight
            if side.dtype != a.dtype:
                side = side.to(a.dtype)
            term = F.linear(F.linear(side, a), b) * self.scaling[name]
            out = out + (term if weight == 1.0 else term * weight)
        return out

    def _frozen_base_as(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The frozen W and b cast to `dtype` for autocast's base matmuls, made once while they are unchanged.

        Autocast casts W again on every forward (2M float32 values read, 2M bfloat16 written for linear2,
        measured at over 10% of a bfloat16 LoRA step here). W and b are frozen, so the copy is kept and
        made again only when either changes: another tensor, new storage, or an in-place write, which bumps
        the tensor's version counter. The copy lives while training and is dropped by eval().
        """
        weight, bias = self.base_layer.weight, self.base_layer.bias
        if weight.dtype == dtype:
            return weight, bias
        # the sources are held (not only their addresses), so a new tensor can never reuse a cached one's
        state = [(t, t.data_ptr(), t._version) for t in (weight, bias) if t is not None]
        cached = self._base_cast
        if (
            cached is None
            or cached.dtype != dtype
            or len(cached.sources) != len(state)
            or any(t is not c or p != cp or v != cv for (t, p, v), (c, cp, cv) in zip(state, cached.sources))
        ):
            with torch.no_grad():
                cast_bias = None if bias is None else bias.detach().to(dtype)
                cached = self._base_cast = _BaseCast(dtype, state, weight.detach().to(dtype), cast_bias)
        return cached.weight, cached.bias

    def train(self, mode: bool = True) -> LoraLinear:
        if not mode:
            self._base_cast = None
        return super().train(mode)

    def extra_repr(self) -> str:
        active = dict(self.combination) if self.combination is not None else self.active_adapter
        return f"adapters={list(self.lora_A)}, active={active!r}"


@dataclass
class _AdapterEntry:
    config: LoraConfig
    meta: dict[str, Any] = field(default_factory=dict)


class LoraModel(nn.Module):
    """An MLP whose target layers carry named LoRA adapters; the base weights stay frozen.

    One adapter is active at a time, or several at once with a weight each (set_adapter with a list);
    switching is instant and never reloads the base.
    """

    def __init__(self, base: MLP) -> None:
        super().__init__()
        self.model = base
        self.adapters: dict[str, _AdapterEntry] = {}
        self._active: str | None = None
        self._combination: tuple[tuple[str, float], ...] | None = None
        for p in self.model.parameters():
            p.requires_grad_(False)

    # --- adapters -------------------------------------------------------------------------------
    def add_adapter(
        self,
        name: str,
        config: LoraConfig,
        seed: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Add a fresh adapter (B = 0, so the model's outputs do not change) and make it active. A rank
        above a layer's limit is capped there (LoraConfig.capped_for); adapter_config(name) says so."""
        validate_adapter_name(name)
        config.validate(self.model)
        config = config.capped_for(self.model)
        if name in self.adapters:
            raise ConfigError("name", f"an adapter called {name!r} is already loaded")
        device = next(self.model.parameters()).device
        generator = None
        if seed is not None:
            generator = torch.Generator(device=device)
            generator.manual_seed(seed)
        for layer_name in config.target_modules:
            layer = getattr(self.model, layer_name)
            if not isinstance(layer, LoraLinear):
                layer = LoraLinear(layer)
                setattr(self.model, layer_name, layer)
            layer.add_adapter(name, config, generator, layer=layer_name)
        self.adapters[name] = _AdapterEntry(config, dict(meta or {}))
        self.set_adapter(name)

    def delete_adapter(self, name: str) -> None:
        self._require(name)
        for layer in self.lora_layers().values():
            layer.delete_adapter(name)
        del self.adapters[name]
        if self._active == name or any(n == name for n, _ in self._combination or ()):
            self.set_adapter(None)

    def set_adapter(self, name: str | Sequence[str] | None, weights: Sequence[float] | None = None) -> None:
        """Make `name` the active adapter (None: the plain base model).

        A list of names activates them all at once, as PEFT's set_adapter does with a list: each adds its
        update, scaled by its weight from `weights` (1.0 each when not given), so the layers compute
        W x + b + sum_k w_k scale_k B_k A_k x. The adapters may differ in rank, scale and layers; they must have
        been trained on the same base model (StaleAdapterError otherwise). A list of one name at weight 1 is
        that adapter alone, on the single-adapter path."""
        if name is None or isinstance(name, str):
            if weights is not None:
                raise ConfigError("weights", "weights go with a list of adapters; give set_adapter a list of names")
            if name is not None:
                self._require(name)
            self._active = name
            self._combination = None
            for layer in self.lora_layers().values():
                layer.set_adapter(name)
            return
        weighted = self._weighted(list(name), weights)
        if len(weighted) == 1 and weighted[0][1] == 1.0:
            self.set_adapter(weighted[0][0])
            return
        self._active = None
        self._combination = weighted
        for layer in self.lora_layers().values():
            layer.set_combination(weighted)

    def _weighted(self, names: list[str], weights: Sequence[float] | None) -> tuple[tuple[str, float], ...]:
        """(name, weight) pairs, checked: known adapters, each once, finite weights, one base model."""
        if not names:
            raise ConfigError("adapters", "give at least one adapter to activate")
        for name in names:
            if not isinstance(name, str):
                raise ConfigError("adapters", f"adapter names must be strings, got {name!r}")
            self._require(name)
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError("adapters", f"lists {', '.join(repr(n) for n in repeated)} more than once")
        values = [1.0] * len(names) if weights is None else list(weights)
        if len(values) != len(names):
            raise ConfigError("weights", f"got {len(values)} weights for {len(names)} adapters; give one each")
        for name, weight in zip(names, values):
            if not is_finite_number(weight):
                raise ConfigError("weights", f"the weight of {name!r} must be a finite number, got {weight!r}")
        self.check_same_base(names)
        return tuple((name, float(weight)) for name, weight in zip(names, values))

    @torch.no_grad()
    def add_weighted_adapter(
        self, adapters: Sequence[str], weights: Sequence[float], adapter_name: str, meta: dict[str, Any] | None = None
    ) -> None:
        """Add adapter `adapter_name` whose update is sum_k w_k scale_k B_k A_k, as PEFT's add_weighted_adapter
        with combination_type="cat" builds it: per layer A = [w_k scale_k A_k] stacked, B = [B_k] side by side,
        rank the sum of the ranks, scale 1. Where that sum exceeds the layer's limit min(in, out) (rank_pattern
        could not hold it), the update, whose rank is at most that limit, is kept as its truncated SVD at the
        limit: the same matrix up to rounding. The active adapter is left as it was; save it like any other."""
        weighted = self._weighted(list(adapters), weights)
        validate_adapter_name(adapter_name)
        if adapter_name in self.adapters:
            raise ConfigError("name", f"an adapter called {adapter_name!r} is already loaded")
        layers = self.lora_layers()
        limits = rank_limits(self.model)
        factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer_name in LAYER_NAMES:
            layer = layers.get(layer_name)
            parts = [(layer, n, w) for n, w in weighted if layer is not None and n in layer.lora_A]
            if not parts:
                continue
            a = torch.cat([lyr.lora_A[n].weight * (w * lyr.scaling[n]) for lyr, n, w in parts], dim=0)
            b = torch.cat([lyr.lora_B[n].weight for lyr, n, _ in parts], dim=1)
            if a.shape[0] > limits[layer_name]:
                u, sv, vh = torch.linalg.svd((b.double() @ a.double()), full_matrices=False)
                keep = limits[layer_name]
                b, a = (u[:, :keep] * sv[:keep]).to(b.dtype), vh[:keep].to(a.dtype)
            factors[layer_name] = (a, b)
        ranks = {name: a.shape[0] for name, (a, _) in factors.items()}
        r = sum(self._require(n).config.r for n, _ in weighted)
        differs = {name: rank for name, rank in ranks.items() if rank != r}
        config = LoraConfig(
            r=r,
            alpha=float(r),  # scale 1 on every layer: the weights and scales are inside A
            target_modules=tuple(factors),
            rank_pattern=differs,
            alpha_pattern={name: float(rank) for name, rank in differs.items()},
        )
        shas = {self._require(n).meta.get("base_sha256") for n, _ in weighted} - {None}
        combined_meta = {
            **({"base_sha256": shas.pop()} if len(shas) == 1 else {}),
            "combination": {"adapters": [n for n, _ in weighted], "weights": [w for _, w in weighted], "type": "cat"},
            **(meta or {}),
        }
        before_names, before_weights = self.active_adapters, list(self.adapter_weights.values())
        self.add_adapter(adapter_name, config, meta=combined_meta)
        for layer_name, (a, b) in factors.items():
            layer = self.lora_layers()[layer_name]
            layer.lora_A[adapter_name].weight.copy_(a)
            layer.lora_B[adapter_name].weight.copy_(b)
            layer.lora_A[adapter_name].weight.requires_grad_(False)
            layer.lora_B[adapter_name].weight.requires_grad_(False)
        if len(before_names) > 1 or any(w != 1.0 for w in before_weights):
            self.set_adapter(before_names, before_weights)
        else:
            self.set_adapter(before_names[0] if before_names else None)

    def check_same_base(self, names: Sequence[str]) -> None:
        """Raise StaleAdapterError unless every adapter in `names` that records its base model's fingerprint
        (metrics' base_sha256, as saved adapters do) records the same one: an update learned on other weights
        means nothing added to these."""
        seen: dict[str, str] = {}
        for name in names:
            sha = self._require(name).meta.get("base_sha256")
            if isinstance(sha, str):
                seen.setdefault(sha, name)
        if len(seen) > 1:
            (sha1, first), (sha2, second) = list(seen.items())[:2]
            raise StaleAdapterError(
                f"adapters {first!r} and {second!r} were trained on different base models (fingerprints "
                f"{sha1[:12]} and {sha2[:12]}); only adapters of the same base model can be combined"
            )

    @property
    def active_adapter(self) -> str | None:
        """The one active adapter; None for the plain base model and while a combination is active."""
        return self._active

    @property
    def active_adapters(self) -> list[str]:
        """The names of every active adapter (PEFT's active_adapters): none, one, or a combination's."""
        if self._combination is not None:
            return [name for name, _ in self._combination]
        return [self._active] if self._active is not None else []

    @property
    def adapter_weights(self) -> dict[str, float]:
        """Each active adapter's weight (1.0 for a single active adapter)."""
        return dict(self._combination) if self._combination is not None else dict.fromkeys(self.active_adapters, 1.0)

    def adapter_config(self, name: str) -> LoraConfig:
        return self._require(name).config

    def adapter_meta(self, name: str) -> dict[str, Any]:
        return self._require(name).meta

    def _require(self, name: str) -> _AdapterEntry:
        if name not in self.adapters:
            known = ", ".join(sorted(self.adapters)) or "none"
            raise ConfigError("adapter", f"no adapter called {name!r} (loaded: {known})")
        return self.adapters[name]

    def lora_layers(self) -> dict[str, LoraLinear]:
        return {n: m for n, m in self.model.named_children() if isinstance(m, LoraLinear)}

    # --- enabling, merging ---------------------------------------------------------------------
    def enable_adapters(self, enabled: bool = True) -> None:
        for layer in self.lora_layers().values():
            layer.adapters_enabled = enabled

    def disable_adapters(self) -> None:
        self.enable_adapters(False)

    @contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """Run the plain base model inside the block, whatever adapter is active."""
        layers = self.lora_layers().values()
        before = [layer.adapters_enabled for layer in layers]
        self.disable_adapters()
        try:
            yield
        finally:
            for layer, was in zip(layers, before):
                layer.adapters_enabled = was

    def merge(self) -> None:
        """Fold the active adapter (or combination) into a separate copy of each weight for zero-overhead
        inference; the base weights themselves are never written."""
        for layer in self.lora_layers().values():
            layer.merge()

    def unmerge(self) -> None:
        for layer in self.lora_layers().values():
            layer.unmerge()

    # --- parameters ----------------------------------------------------------------------------
    def mark_only_lora_trainable(self, name: str) -> list[nn.Parameter]:
        """Freeze everything but adapter `name`'s A and B; return those trainable parameters."""
        self._require(name)
        for p in self.parameters():
            p.requires_grad_(False)
        params: list[nn.Parameter] = []
        for layer in self.lora_layers().values():
            if name in layer.lora_A:
                for p in (layer.lora_A[name].weight, layer.lora_B[name].weight):
                    p.requires_grad_(True)
                    params.append(p)
        return params

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """The base MLP's weights under its own keys (linear1.weight, ...), without any adapter."""
        return base_state_dict(self.model)

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """Adapter `name`'s tensors under Hugging Face PEFT's keys."""
        self._require(name)
        out: dict[str, torch.Tensor] = {}
        for layer_name, layer in self.lora_layers().items():
            if name in layer.lora_A:
                prefix = f"base_model.model.{layer_name}"
                out[f"{prefix}.lora_A.weight"] = layer.lora_A[name].weight.detach()
                out[f"{prefix}.lora_B.weight"] = layer.lora_B[name].weight.detach()
        return out

    def expected_adapter_shapes(self, config: LoraConfig) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        layers = dict(_linear_layers(self.model))
        config = config.capped_for(self.model)
        for layer_name in config.target_modules:
            layer = layers[layer_name]
            prefix = f"base_model.model.{layer_name}"
            r = config.rank_for(layer_name)
            shapes[f"{prefix}.lora_A.weight"] = (r, layer.in_features)
            shapes[f"{prefix}.lora_B.weight"] = (layer.out_features, r)
        return shapes

    def load_adapter_tensors(
        self,
        name: str,
        config: LoraConfig,
        tensors: dict[str, torch.Tensor],
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Add adapter `name` with weights from a PEFT-keyed state dict (checked by the caller)."""
        self.add_adapter(name, config, meta=meta)
        with torch.no_grad():
            for layer_name, layer in self.lora_layers().items():
                if name in layer.lora_A:
                    prefix = f"base_model.model.{layer_name}"
                    layer.lora_A[name].weight.copy_(tensors[f"{prefix}.lora_A.weight"])
                    layer.lora_B[name].weight.copy_(tensors[f"{prefix}.lora_B.weight"])
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A module's base weights under the plain MLP's keys (linear1.weight, ...): LoRA-wrapped layers'
    base_layer tensors renamed back, adapter tensors left out."""
    return {key.replace(".base_layer.", "."): value for key, value in model.state_dict().items() if ".lora_" not in key}


def validate_adapter_name(name: str) -> None:
    """Adapter names become folder names: keep them short, plain and safe."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("name", "an adapter name must not be empty")
    if len(name) > 64:
        raise ConfigError("name", f"must be at most 64 characters, got {len(name)}")
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    bad = sorted(set(name) - allowed)
    if bad or name.startswith(".") or ".." in name:
        raise ConfigError(
            "name",
            f"{name!r} is not a valid adapter name: use letters, digits, '-', '_' and '.' "
            "(not starting with '.', no '..', no '/')",
        )
