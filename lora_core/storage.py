"""The artifacts folder: the base model and named adapters, saved safely and loaded without pickle.

    <artifacts>/base/model.safetensors        linear1.weight, linear1.bias, ... (float32)
    <artifacts>/base/model.json               architecture, normalisation, training, metrics, data MD5s
    <artifacts>/adapters/<name>/adapter_model.safetensors   PEFT keys: base_model.model.<layer>.lora_A.weight
    <artifacts>/adapters/<name>/adapter_config.json         PEFT's LoraConfig fields
    <artifacts>/adapters/<name>/metrics.json                before/after evaluation, base fingerprint

Every file is written to a staging folder and swapped in whole (see fileio.replace_dir).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from .errors import ArtifactError, ConfigError, StaleAdapterError
from .fileio import atomic_write_bytes, atomic_write_json, new_staging_dir, recover_dir, replace_dir
from .lora import LoraConfig, LoraModel, validate_adapter_name
from .model import IN_FEATURES, LAYER_NAMES, MLP, NUM_CLASSES
from .paths import default_artifacts_dir

BASE_FORMAT = "lora_core.base.v1"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_METRICS = "metrics.json"
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_HIDDEN = 16_384  # the largest hidden size TrainConfig accepts


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class BaseModelRecord:
    model: MLP
    meta: dict[str, Any]
    path: Path

    @property
    def fingerprint(self) -> str:
        return str(self.meta["sha256"])


@dataclass
class AdapterRecord:
    """An adapter folder as listed: config and metrics if readable, else the reason it is not."""

    name: str
    path: Path
    config: LoraConfig | None
    metrics: dict[str, Any] | None
    error: str | None = None

    @property
    def base_sha256(self) -> str | None:
        return (self.metrics or {}).get("base_sha256")


class ArtifactStore:
    """All saved work under one root folder; safe for several readers and writers in turn."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_artifacts_dir()

    @property
    def base_dir(self) -> Path:
        return self.root / "base"

    @property
    def adapters_dir(self) -> Path:
        return self.root / "adapters"

    def adapter_dir(self, name: str) -> Path:
        validate_adapter_name(name)
        return self.adapters_dir / name

    # --- base model ----------------------------------------------------------------------------
    def has_base(self) -> bool:
        recover_dir(self.base_dir)
        return (self.base_dir / "model.json").is_file() and (self.base_dir / "model.safetensors").is_file()

    def save_base(self, model: MLP, meta: dict[str, Any]) -> dict[str, Any]:
        """Save weights and metadata together; returns the metadata as written (with sha256)."""
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
        weights = save_safetensors_bytes(tensors, metadata={"format": "pt"})
        full_meta = {
            "format": BASE_FORMAT,
            "architecture": {
                "class": "MLP",
                "in_features": IN_FEATURES,
                "hidden": list(model.hidden),
                "num_classes": NUM_CLASSES,
                "layers": list(LAYER_NAMES),
                "activation": "relu",
            },
            "parameters": sum(t.numel() for t in tensors.values()),
            "created": now_iso(),
            **meta,
            "sha256": sha256_bytes(weights),
        }
        staging = new_staging_dir(self.base_dir)
        try:
            atomic_write_bytes(staging / "model.safetensors", weights)
            atomic_write_json(staging / "model.json", full_meta)
            replace_dir(staging, self.base_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return full_meta

    def base_meta(self) -> dict[str, Any]:
        """model.json only (cheap: for status displays)."""
        if not self.has_base():
            raise ArtifactError(f"no base model in {self.base_dir}; train one first (python -m lora_core train)")
        return _read_base_meta(self.base_dir / "model.json")

    def load_base(self, device: torch.device | str = "cpu") -> BaseModelRecord:
        meta = self.base_meta()
        weights_path = self.base_dir / "model.safetensors"
        data = _read_limited(weights_path)
        if sha256_bytes(data) != meta["sha256"]:
            raise ArtifactError(
                f"{weights_path} does not match the sha256 recorded in model.json; the two files "
                "come from different saves. Retrain the base model."
            )
        hidden = meta["architecture"]["hidden"]
        tensors = _parse_safetensors(data, weights_path, _base_shapes(hidden))
        model = MLP(hidden[0], hidden[1])  # built only once the file is known to fit
        model.load_state_dict(tensors)
        model.eval()
        return BaseModelRecord(model.to(device), meta, self.base_dir)

    # --- adapters ------------------------------------------------------------------------------
    def save_adapter(self, lora_model: LoraModel, name: str, metrics: dict[str, Any], base_sha256: str) -> Path:
        config = lora_model.adapter_config(name)
        tensors = {k: v.to("cpu", torch.float32).contiguous() for k, v in lora_model.adapter_state_dict(name).items()}
        final = self.adapter_dir(name)
        staging = new_staging_dir(final)
        try:
            atomic_write_bytes(staging / ADAPTER_WEIGHTS, save_safetensors_bytes(tensors, metadata={"format": "pt"}))
            atomic_write_json(staging / ADAPTER_CONFIG, config.to_peft())
            atomic_write_json(
                staging / ADAPTER_METRICS,
                {"name": name, "base_sha256": base_sha256, "created": now_iso(), **metrics},
            )
            replace_dir(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final

    def list_adapters(self) -> list[AdapterRecord]:
        if not self.adapters_dir.is_dir():
            return []
        records = []
        for folder in sorted(self.adapters_dir.iterdir()):
            if folder.name.startswith("."):
                continue
            recover_dir(folder)
            if folder.is_dir():
                records.append(self._read_adapter_record(folder))
        return records

    def adapter_names(self) -> list[str]:
        return [r.name for r in self.list_adapters()]

    def _read_adapter_record(self, folder: Path) -> AdapterRecord:
        try:
            config = _read_adapter_config(folder / ADAPTER_CONFIG)
            metrics = _read_json(folder / ADAPTER_METRICS)
            if not isinstance(metrics.get("base_sha256"), str):
                raise ArtifactError(f"{folder / ADAPTER_METRICS}: missing the base model fingerprint 'base_sha256'")
            return AdapterRecord(folder.name, folder, config, metrics)
        except ArtifactError as exc:
            return AdapterRecord(folder.name, folder, None, None, str(exc))

    def read_adapter(self, name: str) -> AdapterRecord:
        folder = self.adapter_dir(name)
        recover_dir(folder)
        if not folder.is_dir():
            known = ", ".join(self.adapter_names()) or "none"
            raise ArtifactError(f"no adapter called {name!r} in {self.adapters_dir} (saved: {known})")
        record = self._read_adapter_record(folder)
        if record.error:
            raise ArtifactError(record.error)
        return record

    def load_adapter(
        self, lora_model: LoraModel, name: str, base_sha256: str, as_name: str | None = None
    ) -> AdapterRecord:
        """Check adapter `name` against this base model and add it to `lora_model` (not activated)."""
        record = self.read_adapter(name)
        if record.base_sha256 != base_sha256:
            raise StaleAdapterError(
                f"adapter {name!r} was trained on a different base model (fingerprint "
                f"{str(record.base_sha256)[:12]}, current base {base_sha256[:12]}); "
                "fine-tune it again on the current base model"
            )
        assert record.config is not None
        try:
            record.config.validate(lora_model.model)
        except ConfigError as exc:
            raise ArtifactError(f"{record.path / ADAPTER_CONFIG} does not fit the base model: {exc}") from exc
        weights_path = record.path / ADAPTER_WEIGHTS
        dtype = next(lora_model.model.parameters()).dtype
        expected = {k: (shape, dtype) for k, shape in lora_model.expected_adapter_shapes(record.config).items()}
        tensors = _parse_safetensors(_read_limited(weights_path), weights_path, expected)
        device = next(lora_model.model.parameters()).device
        previous = lora_model.active_adapter
        lora_model.load_adapter_tensors(
            as_name or name, record.config, {k: v.to(device) for k, v in tensors.items()}, meta=record.metrics
        )
        lora_model.set_adapter(previous)
        return record

    def delete_adapter(self, name: str) -> None:
        folder = self.read_adapter_folder(name)
        trash = Path(tempfile.mkdtemp(dir=self.adapters_dir, prefix=f".{name}.deleted-"))
        folder.rename(trash / name)
        shutil.rmtree(trash, ignore_errors=True)

    def rename_adapter(self, old: str, new: str) -> Path:
        folder = self.read_adapter_folder(old)
        target = self.adapter_dir(new)
        if target.exists():
            raise ConfigError("name", f"an adapter called {new!r} already exists")
        folder.rename(target)
        metrics_path = target / ADAPTER_METRICS
        if metrics_path.is_file():
            metrics = _read_json(metrics_path)
            metrics["name"] = new
            atomic_write_json(metrics_path, metrics)
        return target

    def read_adapter_folder(self, name: str) -> Path:
        folder = self.adapter_dir(name)
        if not folder.is_dir():
            known = ", ".join(self.adapter_names()) or "none"
            raise ArtifactError(f"no adapter called {name!r} in {self.adapters_dir} (saved: {known})")
        return folder

    def adapter_zip(self, name: str) -> bytes:
        """The adapter's PEFT-layout folder as a zip archive, for downloading."""
        import io
        import zipfile

        folder = self.read_adapter_folder(name)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for file in sorted(folder.iterdir()):
                if file.is_file():
                    zf.write(file, f"{name}/{file.name}")
        return buffer.getvalue()


# --- validation helpers ------------------------------------------------------------------------
def _base_shapes(hidden: list[int]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    sizes = (IN_FEATURES, hidden[0], hidden[1], NUM_CLASSES)
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for name, n_in, n_out in zip(LAYER_NAMES, sizes, sizes[1:]):
        shapes[f"{name}.weight"] = ((n_out, n_in), torch.float32)
        shapes[f"{name}.bias"] = ((n_out,), torch.float32)
    return shapes


def _read_limited(path: Path) -> bytes:
    if not path.is_file():
        raise ArtifactError(f"{path} is missing")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ArtifactError(f"{path} is {size / 2**20:.0f} MiB, larger than any model of this study")
    return path.read_bytes()


def _parse_safetensors(
    data: bytes, path: Path, expected: dict[str, tuple[tuple[int, ...], torch.dtype]]
) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes (never pickle) and check keys, shapes and dtypes exactly."""
    try:
        tensors = load_safetensors_bytes(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise ArtifactError(f"{path} is not a valid safetensors file ({exc})") from exc
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected {', '.join(extra)}")
        raise ArtifactError(f"{path} does not fit the base model: {'; '.join(parts)}")
    for key, (shape, dtype) in expected.items():
        t = tensors[key]
        if tuple(t.shape) != tuple(shape):
            raise ArtifactError(f"{path}: {key} has shape {tuple(t.shape)}, the base model needs {tuple(shape)}")
        if t.dtype != dtype:
            raise ArtifactError(f"{path}: {key} is {t.dtype}, expected {dtype}")
        if not torch.isfinite(t).all():
            raise ArtifactError(f"{path}: {key} contains NaN or infinite values")
    return tensors


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ArtifactError(f"{path} is missing")
    try:
        data = json.loads(_read_limited(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} should hold a JSON object, found {type(data).__name__}")
    return data


def _read_adapter_config(path: Path) -> LoraConfig:
    data = _read_json(path)
    try:
        return LoraConfig.from_peft(data)
    except (ConfigError, TypeError) as exc:
        raise ArtifactError(f"{path}: {exc}") from exc


def _read_base_meta(path: Path) -> dict[str, Any]:
    meta = _read_json(path)
    arch = meta.get("architecture")
    hidden = arch.get("hidden") if isinstance(arch, dict) else None
    if meta.get("format") != BASE_FORMAT:
        raise ArtifactError(f"{path}: format is {meta.get('format')!r}, expected {BASE_FORMAT!r}")
    if not (
        isinstance(hidden, list)
        and len(hidden) == 2
        and all(isinstance(h, int) and not isinstance(h, bool) and 0 < h <= MAX_HIDDEN for h in hidden)
    ):
        raise ArtifactError(f"{path}: architecture.hidden must be two positive sizes, got {hidden!r}")
    if not isinstance(meta.get("sha256"), str):
        raise ArtifactError(f"{path}: missing the weights' sha256")
    return meta
