"""A model with named LoRA adapters: LoraModel, as Hugging Face PEFT's lora/model.py.

Several adapters can be active at once, each with a weight (PEFT's set_adapter with a list of names, and the
sum of updates that its add_weighted_adapter builds with combination_type="cat"):
    y = x W^T + b + sum_k w_k * scale_k * dropout_k(x) A_k^T B_k^T
A combination merges the same way, into a separate tensor W + sum_k w_k scale_k B_k A_k: W itself is never
written, so unmerging leaves it bit-identical (W + dW - dW would not be, in floating point).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lora_core.errors import ConfigError, StaleAdapterError
from lora_core.lora.config import MAX_SCALE, LoraConfig
from lora_core.lora.layer import LoraLinear, linear_layers, rank_limits
from lora_core.lora.nf4 import NF4, Nf4Config, Nf4Linear, raw_sha256, why_not_quantized
from lora_core.model import LAYER_NAMES, MLP
from lora_core.numbers import is_finite_number


@dataclass
class _AdapterEntry:
    config: LoraConfig
    meta: dict[str, Any] = field(default_factory=dict)
    vera_shared: tuple[torch.Tensor, torch.Tensor] | None = None  # VeRA: the frozen A and B every layer slices
    quantization: Nf4Config | None = None  # QLoRA: the NF4 base the adapter runs on (None: the float32 base)
    quantized_at_start: dict[str, str] = field(default_factory=dict)  # sha256 of its codes and scales when added


def vera_projection(config: LoraConfig, model: nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """VeRA's shared frozen A (r x largest in) and B (largest out x r), drawn as PEFT's VeraModel draws them: Kaiming
    uniform (gain sqrt(2), fan in) from one CPU generator seeded with config.projection_prng_key, A first."""
    layers = linear_layers(model)
    targets = [layers[name] for name in config.target_modules]
    largest_in = max(layer.in_features for layer in targets)
    largest_out = max(layer.out_features for layer in targets)
    generator = torch.Generator(device="cpu").manual_seed(config.projection_prng_key)

    def kaiming(shape: tuple[int, int]) -> torch.Tensor:
        bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(shape[1])
        return torch.empty(shape).uniform_(-bound, bound, generator=generator)

    a = kaiming((config.r, largest_in))
    b = kaiming((largest_out, config.r))
    return a.to(device), b.to(device)


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
        quantization: Nf4Config | None = None,
    ) -> None:
        """Add a fresh adapter (B = 0, so the model's outputs do not change) and make it active. A rank
        above a layer's limit is capped there (LoraConfig.capped_for); adapter_config(name) says so.

        With `quantization` (or a "quantized_base" record in `meta`, as a saved QLoRA adapter has) the adapter runs
        on an NF4 copy of the base, built from W and shared by every adapter of that config; a record's hashes of
        the codes and scales must match the rebuilt ones (StaleAdapterError otherwise)."""
        validate_adapter_name(name)
        config.validate(self.model)
        config = config.capped_for(self.model)
        if name in self.adapters:
            raise ConfigError("name", f"an adapter called {name!r} is already loaded")
        record = (meta or {}).get("quantized_base")
        if quantization is None and isinstance(record, dict):
            quantization = Nf4Config.from_record(record)
        if quantization is not None:
            if config.use_dora or config.use_vera:
                kind = "DoRA" if config.use_dora else "VeRA"
                raise ConfigError("base_precision", f"the NF4 base (QLoRA) takes plain LoRA adapters here, not {kind}")
            quantization.validate(linear_layers(self.model))
        device = next(self.model.parameters()).device
        generator = None
        if seed is not None:
            generator = torch.Generator(device=device)
            generator.manual_seed(seed)
        shared = vera_projection(config, self.model, device) if config.use_vera else None
        for layer_name in config.target_modules:
            layer = getattr(self.model, layer_name)
            if not isinstance(layer, LoraLinear):
                layer = LoraLinear(layer)
                setattr(self.model, layer_name, layer)
            layer.add_adapter(name, config, generator, layer=layer_name, shared=shared)
        self.adapters[name] = _AdapterEntry(config, dict(meta or {}), shared)
        if quantization is not None:
            self._attach_quantized(name, quantization, record)
        self.set_adapter(name)

    def _attach_quantized(self, name: str, quantization: Nf4Config, record: dict[str, Any] | None) -> None:
        for layer_name in LAYER_NAMES:  # every layer, adapted or not: the whole base is the NF4 one
            layer = getattr(self.model, layer_name)
            if not isinstance(layer, LoraLinear):
                layer = LoraLinear(layer)
                setattr(self.model, layer_name, layer)
            layer.attach_quantized(name, quantization)
        entry = self.adapters[name]
        entry.quantization = quantization
        entry.quantized_at_start = self.quantized_hashes(name)
        expected = ((record or {}).get("codes_sha256") or {}).get("after")
        if isinstance(expected, dict) and expected != entry.quantized_at_start:
            differ = sorted(
                k
                for k in set(expected) | set(entry.quantized_at_start)
                if expected.get(k) != entry.quantized_at_start.get(k)
            )
            self.delete_adapter(name)
            raise StaleAdapterError(
                f"adapter {name!r} was trained on an NF4 base whose codes and scales differ from the ones rebuilt "
                f"from this base ({', '.join(differ[:3])}{', ...' if len(differ) > 3 else ''}); was it quantised by "
                "another torchao version or from another base?"
            )

    def quantized_layers(self, name: str) -> dict[str, Nf4Linear]:
        """The NF4 layers adapter `name` runs on, by layer name (empty for an adapter on the float32 base)."""
        self._require(name)
        return {
            layer_name: layer.quantized[layer.adapter_base[name]]
            for layer_name, layer in self.lora_layers().items()
            if name in layer.adapter_base
        }

    def quantized_sha256(self, name: str) -> str:
        """One sha256 over every stored part of adapter `name`'s NF4 base, layer by layer in quantized_hashes' order."""
        digest = hashlib.sha256()
        for layer in self.quantized_layers(name).values():
            for tensor in layer.parts().values():
                digest.update(tensor.detach().to("cpu").numpy().tobytes())
        return digest.hexdigest()

    def quantized_hashes(self, name: str) -> dict[str, str]:
        """sha256 of each stored part of adapter `name`'s NF4 base (linear1.weight.quantized_data, ...)."""
        return {
            f"{layer_name}.weight.{part}": raw_sha256(tensor)
            for layer_name, layer in self.quantized_layers(name).items()
            for part, tensor in layer.parts().items()
        }

    def quantized_record(self, name: str) -> dict[str, Any] | None:
        """What a QLoRA adapter's metrics.json holds under "quantized_base": the format and block size, each NF4
        layer's bytes against float32's, the layers left float32 and why, and the sha256 of the codes and scales
        when the adapter was added and now. None for an adapter on the float32 base."""
        entry = self._require(name)
        if entry.quantization is None:
            return None
        block = entry.quantization.block_size
        quantized = self.quantized_layers(name)
        return {
            "format": NF4,
            "block_size": block,
            "implementation": f"torchao {_torchao_version()}",
            "sha256": self.quantized_sha256(name),
            "layers": {
                layer_name: {
                    "weights": layer.in_features * layer.out_features,
                    "scaler_block_size": layer.scaler_block_size,
                    "bytes": layer.nbytes,
                    "fp32_bytes": layer.in_features * layer.out_features * 4,
                }
                for layer_name, layer in quantized.items()
            },
            "fp32_layers": {
                layer_name: reason
                for layer_name, layer in linear_layers(self.model).items()
                if (reason := why_not_quantized(layer, block))
            },
            "codes_sha256": {"before": dict(entry.quantized_at_start), "after": self.quantized_hashes(name)},
        }

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
        dora = [n for n, _ in weighted if self.adapters[n].config.use_dora]
        if dora:  # checked before any layer changes
            raise ConfigError(
                "adapters", f"DoRA adapter {dora[0]!r} cannot be weighted or combined with others; use it alone"
            )
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
            config = self.adapters[name].config
            scale = max(config.scale_for(layer) for layer in config.target_modules)
            if abs(weight) * scale > MAX_SCALE:  # the weight multiplies the scale: the same bound holds
                raise ConfigError(
                    "weights",
                    f"the weight of {name!r} ({weight:.3g}) times its scale ({scale:.3g}) is above the {MAX_SCALE:g} "
                    f"allowed (float32 could not carry the update); give a weight between "
                    f"{-MAX_SCALE / scale:.3g} and {MAX_SCALE / scale:.3g}",
                )
        self.check_same_base(names)
        bases = {self.adapters[n].quantization for n in names}
        if len(bases) > 1:
            on_nf4 = next(n for n in names if self.adapters[n].quantization is not None)
            on_fp32 = next(n for n in names if self.adapters[n].quantization is None)
            raise ConfigError(
                "adapters",
                f"{on_nf4!r} runs on the NF4 base and {on_fp32!r} on the float32 base; combine adapters of one base",
            )
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
        quantization = self.adapters[weighted[0][0]].quantization  # one base for all (_weighted)
        if quantization is not None:
            combined_meta.setdefault("quantized_base", self.quantized_record(weighted[0][0]))
        with self.active_adapters_kept():
            self.add_adapter(adapter_name, config, meta=combined_meta, quantization=quantization)
            for layer_name, (a, b) in factors.items():
                layer = self.lora_layers()[layer_name]
                layer.lora_A[adapter_name].weight.copy_(a)
                layer.lora_B[adapter_name].weight.copy_(b)
                layer.lora_A[adapter_name].weight.requires_grad_(False)
                layer.lora_B[adapter_name].weight.requires_grad_(False)

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

    @contextmanager
    def active_adapters_kept(self) -> Iterator[None]:
        """Whatever the block activates, the adapters active before it (none, one, or a weighted combination) are
        active again afterwards, with their weights."""
        combination, active = self._combination, self._active
        try:
            yield
        finally:
            if combination is not None:
                self.set_adapter([name for name, _ in combination], weights=[w for _, w in combination])
            else:
                self.set_adapter(active)

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
        """Freeze everything but adapter `name`'s A and B (DoRA: and m; VeRA: its d and b only); return those
        trainable parameters."""
        self._require(name)
        for p in self.parameters():
            p.requires_grad_(False)
        params: list[nn.Parameter] = []
        for layer in self.lora_layers().values():
            if name not in layer.lora_A:
                continue
            if layer.is_vera(name):  # A and B are the frozen shared pair: only the two vectors train
                trained = [layer.vera_lambda_d[name].weight, layer.vera_lambda_b[name].weight]
            else:
                extra = [layer.lora_magnitude_vector[name].weight] if layer.is_dora(name) else []
                trained = [layer.lora_A[name].weight, layer.lora_B[name].weight, *extra]
            for p in trained:
                p.requires_grad_(True)
                params.append(p)
        return params

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """The base MLP's weights under its own keys (linear1.weight, ...), without any adapter."""
        return base_state_dict(self.model)

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """Adapter `name`'s tensors under Hugging Face PEFT's keys (PEFT's VeRA keys for a VeRA adapter, with the
        shared A and B saved once, as save_projection=True saves them)."""
        entry = self._require(name)
        out: dict[str, torch.Tensor] = {}
        if entry.vera_shared is not None:
            out["base_model.vera_A"], out["base_model.vera_B"] = entry.vera_shared
        for layer_name, layer in self.lora_layers().items():
            if name in layer.lora_A and layer.is_vera(name):
                prefix = f"base_model.model.{layer_name}"
                out[f"{prefix}.vera_lambda_b"] = layer.vera_lambda_b[name].weight.detach()
                out[f"{prefix}.vera_lambda_d"] = layer.vera_lambda_d[name].weight.detach()
            elif name in layer.lora_A:
                prefix = f"base_model.model.{layer_name}"
                out[f"{prefix}.lora_A.weight"] = layer.lora_A[name].weight.detach()
                out[f"{prefix}.lora_B.weight"] = layer.lora_B[name].weight.detach()
                if layer.is_dora(name):
                    out[f"{prefix}.lora_magnitude_vector"] = layer.lora_magnitude_vector[name].weight.detach()
        return out

    def expected_adapter_shapes(self, config: LoraConfig) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        layers = linear_layers(self.model)
        config = config.capped_for(self.model)
        if config.use_vera:
            targets = [layers[name] for name in config.target_modules]
            shapes["base_model.vera_A"] = (config.r, max(layer.in_features for layer in targets))
            shapes["base_model.vera_B"] = (max(layer.out_features for layer in targets), config.r)
            for layer_name in config.target_modules:
                prefix = f"base_model.model.{layer_name}"
                shapes[f"{prefix}.vera_lambda_b"] = (layers[layer_name].out_features,)
                shapes[f"{prefix}.vera_lambda_d"] = (config.r,)
            return shapes
        for layer_name in config.target_modules:
            layer = layers[layer_name]
            prefix = f"base_model.model.{layer_name}"
            r = config.rank_for(layer_name)
            shapes[f"{prefix}.lora_A.weight"] = (r, layer.in_features)
            shapes[f"{prefix}.lora_B.weight"] = (layer.out_features, r)
            if config.use_dora:
                shapes[f"{prefix}.lora_magnitude_vector"] = (layer.out_features,)
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
            shared = self.adapters[name].vera_shared
            if shared is not None:  # the file's own A and B (PEFT's save_projection), copied into the shared pair
                shared[0].copy_(tensors["base_model.vera_A"])
                shared[1].copy_(tensors["base_model.vera_B"])
            for layer_name, layer in self.lora_layers().items():
                if name in layer.lora_A and layer.is_vera(name):
                    prefix = f"base_model.model.{layer_name}"
                    layer.vera_lambda_b[name].weight.copy_(tensors[f"{prefix}.vera_lambda_b"])
                    layer.vera_lambda_d[name].weight.copy_(tensors[f"{prefix}.vera_lambda_d"])
                elif name in layer.lora_A:
                    prefix = f"base_model.model.{layer_name}"
                    layer.lora_A[name].weight.copy_(tensors[f"{prefix}.lora_A.weight"])
                    layer.lora_B[name].weight.copy_(tensors[f"{prefix}.lora_B.weight"])
                    if layer.is_dora(name):
                        layer.lora_magnitude_vector[name].weight.copy_(tensors[f"{prefix}.lora_magnitude_vector"])
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A module's base weights under the plain MLP's keys (linear1.weight, ...): LoRA-wrapped layers'
    base_layer tensors renamed back, adapter tensors left out."""
    return {
        key.replace(".base_layer.", "."): value
        for key, value in model.state_dict().items()
        if ".lora_" not in key and ".vera_" not in key
    }


def plain_copy(model: nn.Module) -> MLP:
    """A fresh MLP holding copies of the base tensors of `model` (an MLP, one whose layers LoRA wrapped, or a
    LoraModel), on its device, in eval mode; the caller's model is never touched."""
    inner = model.model if isinstance(model, LoraModel) else model
    plain = MLP(*inner.hidden)
    plain.load_state_dict({k: v.detach().clone() for k, v in base_state_dict(inner).items()})
    return plain.to(next(inner.parameters()).device).eval()


def _torchao_version() -> str:
    from importlib.metadata import version

    return version("torchao")


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
