"""The LoRA layer: nn.Linear plus named low-rank adapters, as Hugging Face PEFT's lora/layer.py.

The frozen weight W is never modified. An adapter adds B(A(x)) * scale on the side:
    y = x W^T + b + dropout(x) A^T B^T * scale,   scale = alpha / r  (or alpha / sqrt(r), rsLoRA)
A new adapter has B = 0, so it changes nothing until trained. Merging builds W + scale * B A into a
separate tensor used for inference; unmerging drops that tensor, so W stays bit-for-bit what it was.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lora_core.errors import ConfigError
from lora_core.lora.fast import BaseCast, FrozenBaseLoraFunction, cast_frozen_base
from lora_core.lora.nf4 import Nf4Config, Nf4Linear, why_not_quantized

if TYPE_CHECKING:
    from lora_core.lora.config import LoraConfig


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


class DoraMagnitude(nn.Module):
    """DoRA's trainable magnitude: one value per output row of W (PEFT's lora_magnitude_vector)."""

    def __init__(self, magnitude: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(magnitude)


class VeraVector(nn.Module):
    """One of VeRA's trainable vectors in a layer: d (one per rank) or b (one per output row)."""

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(values)


def weight_norm(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """||W + delta|| of each output row (PEFT's DoRA get_weight_norm, dim=1 of an out x in weight)."""
    return torch.linalg.norm(weight + delta, dim=1)


class LoraLinear(nn.Module):
    """nn.Linear plus any number of named low-rank adapters: none active, one, or several at once, each with
    a weight (set_combination)."""

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.lora_A = AdapterModules()
        self.lora_B = AdapterModules()
        self.lora_dropout = AdapterModules()
        self.lora_magnitude_vector = AdapterModules()  # DoRA adapters only
        # VeRA adapters only: the trained vectors; lora_A and lora_B hold this layer's slices of the shared frozen pair
        self.vera_lambda_d = AdapterModules()
        self.vera_lambda_b = AdapterModules()
        self.scaling: dict[str, float] = {}
        self.active_adapter: str | None = None
        # several adapters at once: (name, weight) pairs of the ones this layer holds; None when not combining
        self.combination: tuple[tuple[str, float], ...] | None = None
        self.adapters_enabled = True
        self._merged_weight: torch.Tensor | None = None
        self._base_cast: BaseCast | None = None  # W and b in autocast's dtype while training; _frozen_base_as
        # QLoRA: frozen NF4 copies of base_layer by Nf4Config.key, which adapters run on which, and the copy the
        # current activation runs on (None: base_layer). A layer an NF4 adapter does not adapt still runs on NF4.
        self.quantized: dict[str, Nf4Linear] = {}
        self.adapter_base: dict[str, str] = {}
        self._active_base: str | None = None

    def add_adapter(
        self,
        name: str,
        config: LoraConfig,
        generator: torch.Generator | None = None,
        layer: str | None = None,
        shared: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Add adapter `name`; `layer` (this layer's name in the model) picks its rank_pattern/alpha_pattern. A VeRA
        adapter takes its frozen A and B as slices of `shared` (the model's one pair, largest sizes)."""
        w = self.base_layer.weight
        if config.use_vera:
            if shared is None:
                raise ConfigError("use_vera", "a VeRA adapter needs the model's shared A and B")
            self._add_vera(name, config, shared)
            return
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
        if config.use_dora:  # B = 0: m = ||W|| per row, so the adapter starts as a no-op here too
            with torch.no_grad():
                self.lora_magnitude_vector[name] = DoraMagnitude(torch.linalg.norm(w, dim=1).clone())

    def _add_vera(self, name: str, config: LoraConfig, shared: tuple[torch.Tensor, torch.Tensor]) -> None:
        w = self.base_layer.weight
        shared_a, shared_b = shared
        a = nn.Linear(self.in_features, config.r, bias=False, device="meta")
        b = nn.Linear(config.r, self.out_features, bias=False, device="meta")
        # frozen views of the shared pair: nothing of them is trained or saved per layer
        a.weight = nn.Parameter(shared_a[:, : self.in_features], requires_grad=False)
        b.weight = nn.Parameter(shared_b[: self.out_features, :], requires_grad=False)
        self.lora_A[name] = a
        self.lora_B[name] = b
        self.lora_dropout[name] = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.scaling[name] = 1.0
        self.vera_lambda_d[name] = VeraVector(
            torch.full((config.r,), float(config.d_initial), dtype=w.dtype, device=w.device)
        )
        self.vera_lambda_b[name] = VeraVector(torch.zeros(self.out_features, dtype=w.dtype, device=w.device))

    def is_vera(self, name: str) -> bool:
        return name in self.vera_lambda_d

    def attach_quantized(self, name: str, config: Nf4Config) -> Nf4Linear | None:
        """Make adapter `name` run on this layer's NF4 copy of W (built once per config, W untouched); None where
        the layer's size does not divide into the config's blocks and it stays float32."""
        if why_not_quantized(self.base_layer, config.block_size):
            return None
        if config.key not in self.quantized:
            self.quantized[config.key] = Nf4Linear(self.base_layer, config.block_size)
        self.adapter_base[name] = config.key
        return self.quantized[config.key]

    def active_base(self) -> nn.Module:
        """The base the current activation runs on: base_layer, or the NF4 copy its adapters trained on."""
        if self._active_base is None or not self.adapters_enabled:
            return self.base_layer
        return self.quantized[self._active_base]

    def delete_adapter(self, name: str) -> None:
        if self.active_adapter == name:
            self.unmerge()
            self.active_adapter = None
        if self.combination is not None and any(n == name for n, _ in self.combination):
            self.set_combination(tuple((n, w) for n, w in self.combination if n != name))
        stores = (
            self.lora_A,
            self.lora_B,
            self.lora_dropout,
            self.lora_magnitude_vector,
            self.vera_lambda_d,
            self.vera_lambda_b,
        )
        for store in stores:
            if name in store:
                del store[name]
        self.scaling.pop(name, None)
        key = self.adapter_base.pop(name, None)
        if key is not None and key not in self.adapter_base.values():
            del self.quantized[key]
            if self._active_base == key:
                self._active_base = None

    def set_adapter(self, name: str | None) -> None:
        if name != self.active_adapter or self.combination is not None:
            self.unmerge()
        self.combination = None
        self.active_adapter = name if name in self.lora_A else None
        self._active_base = self.adapter_base.get(name) if name is not None else None

    def is_dora(self, name: str) -> bool:
        return name in self.lora_magnitude_vector

    def set_combination(self, weighted: Sequence[tuple[str, float]]) -> None:
        """Activate several adapters at once, each update scaled by its weight; names this layer does not
        hold are left out (an adapter need not cover every layer). A DoRA adapter rescales W itself, so it
        has no update to weigh or add to another's: it is refused."""
        dora = [name for name, _ in weighted if self.is_dora(name)]
        if dora:
            raise ConfigError(
                "adapters", f"DoRA adapter {dora[0]!r} cannot be weighted or combined with others; use it alone"
            )
        bases = {self.adapter_base.get(name) for name, _ in weighted}
        if len(bases) > 1:
            raise ConfigError("adapters", "adapters trained on different bases (NF4 and float32) cannot be combined")
        self.unmerge()
        self.active_adapter = None
        self.combination = tuple((name, float(weight)) for name, weight in weighted if name in self.lora_A)
        self._active_base = bases.pop() if bases else None

    def delta_weight(self, name: str) -> torch.Tensor:
        """What the adapter adds to W (for inspection and merging): scale * B A; for VeRA diag(b) B diag(d) A; for
        DoRA the whole change m * (W + scale * B A) / ||W + scale * B A|| - W."""
        if self.is_vera(name):
            d, b = self.vera_lambda_d[name].weight, self.vera_lambda_b[name].weight
            return (b.view(-1, 1) * self.lora_B[name].weight) @ (d.view(-1, 1) * self.lora_A[name].weight)
        delta = (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]
        if not self.is_dora(name):
            return delta
        w = self.base_layer.weight
        magnitude = self.lora_magnitude_vector[name].weight
        return (magnitude / weight_norm(w, delta)).view(-1, 1) * (w + delta) - w

    @torch.no_grad()
    def merge(self) -> None:
        if self.combination is not None:
            self._merge_combination()
            return
        if self.active_adapter is None:
            return
        self._merged_weight = self.active_base().weight + self.delta_weight(self.active_adapter)

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
            self._merged_weight = self.active_base().weight + delta

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
            return self.active_base()(x)
        if self._merged_weight is not None:
            return self._merged_forward(x)
        if self.is_dora(name):
            return self._dora_forward(x, name)
        if self.is_vera(name):
            return self._vera_forward(x, name)
        dropout = self.lora_dropout[name]
        # with dropout 0 the side path reads x itself: no Identity call, no copy
        x_side = dropout(x) if isinstance(dropout, nn.Dropout) else None
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        scale = self.scaling[name]
        weight, bias = self.base_layer.weight, self.base_layer.bias
        base_trainable = weight.requires_grad or (bias is not None and bias.requires_grad)
        if not torch.is_grad_enabled() or base_trainable or self._active_base is not None:
            # evaluation and prediction: PEFT's own order of operations, so that logits agree with PEFT's
            # to the last bit and every reported accuracy is unchanged. A base layer left trainable (a
            # LoraLinear used on its own) also takes this path: plain autograd gives W and b their gradients.
            # So does an NF4 base, whose matmul dequantises W for each pass and keeps nothing (QLoRA).
            out = self.active_base()(x)
            side = x if x_side is None else x_side
            if out.dtype != b.dtype:  # bfloat16 autocast: the side path and the sum in float32, as below
                with torch.autocast(x.device.type, enabled=False):
                    return out.to(b.dtype) + F.linear(F.linear(side.to(a.dtype), a), b) * scale
            return out + F.linear(F.linear(side, a), b) * scale
        # training with a frozen base: one autograd node for the whole layer, which adds the side path into
        # the base output in place and computes no gradient for W or b (see FrozenBaseLoraFunction)
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type) and weight.is_floating_point():
            weight, bias = self._frozen_base_as(torch.get_autocast_dtype(device_type))
        lead = x.shape[:-1]
        out = FrozenBaseLoraFunction.apply(
            x.reshape(-1, self.in_features),
            None if x_side is None else x_side.reshape(-1, self.in_features),
            weight,
            bias,
            a,
            b,
            scale,
        )
        return out.view(*lead, self.out_features)

    def _dora_forward(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """DoRA as PEFT computes it, by plain autograd: (m / ||W + s*B*A||) * (W x + s * B A x) + b, the norm
        taken per output row and detached from the graph (the DoRA paper's section 4.3; PEFT does the same).
        Under bfloat16 autocast the sums run in float32, as the LoRA path's do."""
        dropout = self.lora_dropout[name]
        side = dropout(x) if isinstance(dropout, nn.Dropout) else x
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        w, bias = self.base_layer.weight, self.base_layer.bias
        scale = self.scaling[name]
        magnitude = self.lora_magnitude_vector[name].weight
        wx = F.linear(x, w)
        with torch.autocast(x.device.type, enabled=False):
            lora = F.linear(F.linear(side.to(a.dtype), a), b)
            norm = weight_norm(w, (b @ a) * scale).detach()
            out = (magnitude / norm) * (wx.to(lora.dtype) + lora * scale)
            return out if bias is None else out + bias

    def _vera_update(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """VeRA's b * (B (d * (A x))), in the vectors' dtype (float32 under bfloat16 autocast, as LoRA's side path)."""
        dropout = self.lora_dropout[name]
        side = dropout(x) if isinstance(dropout, nn.Dropout) else x
        d, b = self.vera_lambda_d[name].weight, self.vera_lambda_b[name].weight
        with torch.autocast(x.device.type, enabled=False):
            return b * F.linear(d * F.linear(side.to(d.dtype), self.lora_A[name].weight), self.lora_B[name].weight)

    def _vera_forward(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """PEFT's VeRA forward by plain autograd: W x + b_bias + b * (B (d * (A x)))."""
        out = self.active_base()(x)
        update = self._vera_update(x, name)
        return out.to(update.dtype) + update

    def _merged_forward(self, x: torch.Tensor) -> torch.Tensor:
        """x through the merged weight, refused while any tensor it was made from needs a gradient.

        The merged weight is built without autograd: a training step through it would give A, B and W no
        gradient, and an update to any of them would leave the merged weight stale. This is the one check
        for it, since every way of training a merged layer (LoraModel, this layer alone, any loop) runs here.
        """
        if torch.is_grad_enabled():
            names = [n for n, _ in self.combination or ()] or [str(self.active_adapter)]
            sources = [self.base_layer.weight]
            for name in names:
                sources += [self.lora_A[name].weight, self.lora_B[name].weight]
                if self.is_dora(name):
                    sources.append(self.lora_magnitude_vector[name].weight)
                if self.is_vera(name):
                    sources += [self.vera_lambda_d[name].weight, self.vera_lambda_b[name].weight]
            if any(t.requires_grad for t in sources):
                which = f"adapter {names[0]!r} is" if len(names) == 1 else f"adapters {', '.join(map(repr, names))} are"
                message = f"{which} merged, and training cannot reach a merged weight: unmerge() first"
                raise ConfigError("adapter", message)
        return F.linear(x, self._merged_weight, self.base_layer.bias)

    def _combined_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Base output plus every active adapter's update times its weight, by plain autograd (combinations
        are for evaluation and prediction). Each term is computed exactly as the single-adapter evaluation
        path computes its one term, and a weight of 1 multiplies nothing, so that a combination of one adapter
        at weight 1 (the others at 0) gives that adapter's logits to the last bit."""
        if not self.adapters_enabled or not self.combination:
            return self.active_base()(x)
        if self._merged_weight is not None:
            return self._merged_forward(x)
        out = self.active_base()(x)
        first_b = self.lora_B[self.combination[0][0]].weight
        if out.dtype != first_b.dtype:  # bfloat16 autocast: the side paths and the sum in float32
            with torch.autocast(x.device.type, enabled=False):
                return self._add_updates(out.to(first_b.dtype), x)
        return self._add_updates(out, x)

    def _add_updates(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        for name, weight in self.combination or ():
            if weight == 0.0:  # contributes nothing: skipped, not multiplied
                continue
            if self.is_vera(name):
                term = self._vera_update(x, name)
                out = out + (term if weight == 1.0 else term * weight)
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
        """The frozen W and b cast to `dtype` for autocast's base matmuls, made once while they are unchanged
        (cast_frozen_base). The copy lives while training and is dropped by eval()."""
        weight, bias = self.base_layer.weight, self.base_layer.bias
        if weight.dtype == dtype:
            return weight, bias
        cached = self._base_cast = cast_frozen_base(self._base_cast, weight, bias, dtype)
        return cached.weight, cached.bias

    def train(self, mode: bool = True) -> LoraLinear:
        if not mode:
            self._base_cast = None
        return super().train(mode)

    def extra_repr(self) -> str:
        active = dict(self.combination) if self.combination is not None else self.active_adapter
        return f"adapters={list(self.lora_A)}, active={active!r}"
