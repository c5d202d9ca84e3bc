"""The artifacts folder: the base model and named adapters, saved safely and loaded without pickle.

    <artifacts>/base/model.safetensors        linear1.weight, linear1.bias, ... (float32)
    <artifacts>/base/model.json               architecture, normalisation, training, metrics, data MD5s
    <artifacts>/adapters/<name>/adapter_model.safetensors   PEFT keys: base_model.model.<layer>.lora_A.weight
    <artifacts>/adapters/<name>/adapter_config.json         PEFT's LoraConfig fields
    <artifacts>/adapters/<name>/metrics.json                before/after evaluation, base fingerprint, weights' sha256

Every file is written to a staging folder and swapped in whole (see fileio.replace_dir).

Writers and readers:
- Every write (save, rename, delete) runs under the folder's writer lock, `ArtifactStore.writing()`:
  fcntl.flock on the artifacts folder itself, so the CLI, `make study` and the dashboard's worker
  processes exclude each other, and the lock goes with the process if it dies. `<artifacts>/.lock`
  says who holds it (removed on release). A second writer waits LOCK_WAIT_S, then gets ArtifactsBusy
  naming the holder and since when. The workflows in lora_core.lab.study hold it for their whole run.
- Only a writer repairs what a killed writer left (an interrupted swap, staging folders), right after
  taking the lock. Readers never rename, delete or create anything: they read a folder's backup while
  a swap is in progress and re-read when the folder changed under them (fileio.read_dir_files).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NotRequired, ParamSpec, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12 on

from lora_core.errors import AdapterExistsError, ArtifactError, ArtifactsBusy, ConfigError, StaleAdapterError
from lora_core.evaluate import EvaluationDifference, EvaluationSummary
from lora_core.lora import LoraConfig, LoraModel, linear_layers, validate_adapter_name
from lora_core.lora.nf4 import Nf4Config
from lora_core.model import IN_FEATURES, LAYER_NAMES, MAX_HIDDEN, MLP, NUM_CLASSES
from lora_core.numbers import Number
from lora_core.store.fileio import (
    FileRead,
    FileTooLarge,
    FolderKeptChanging,
    atomic_write_bytes,
    atomic_write_json,
    current_dir,
    new_staging_dir,
    parse_json,
    parse_json_object,
    read_dir_files,
    recover_dir,
    replace_dir,
)
from lora_core.store.paths import default_artifacts_dir
from lora_core.store.schema import check_schema

BASE_FORMAT = "lora_core.base.v1"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_METRICS = "metrics.json"
MAX_FILE_BYTES = 512 * 1024 * 1024
BASE_WEIGHTS = "model.safetensors"
BASE_META = "model.json"
LOCK_INFO = ".lock"
FREE_SPACE_MARGIN = 16 * 2**20  # beyond a run's own files: metrics, JSON results, the filesystem's own needs
LOCK_WAIT_S = 2.0  # a second writer waits this long (covers a status probe or a short save), then is refused


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


class _FinetuneRecord(TypedDict):
    """The settings an adapter was trained with, as each workflow records them (study, experiment, personal)."""

    digits: NotRequired[list[int] | None]
    rank: NotRequired[int]
    alpha: NotRequired[Number]
    targets: NotRequired[list[str]]
    steps: NotRequired[int]
    batch_size: NotRequired[int]
    lr: NotRequired[Number]
    lr_schedule: NotRequired[str]
    replay: NotRequired[Number | None]
    dropout: NotRequired[Number]
    use_rslora: NotRequired[bool]
    use_dora: NotRequired[bool]
    use_vera: NotRequired[bool]
    loraplus_lr_ratio: NotRequired[Number]
    init: NotRequired[str]
    seed: NotRequired[int]
    device: NotRequired[str]
    precision: NotRequired[str]
    precision_used: NotRequired[str]
    precision_reason: NotRequired[str]


class _BaseTensorsRecord(TypedDict):
    recorded_by: str
    recorded: NotRequired[str]
    before: dict[str, str]
    after: dict[str, str]


class _PissaRecord(TypedDict):
    trained_rank: int
    saved_rank: int
    residual_base: _BaseTensorsRecord
    residual_max_abs_diff: dict[str, Number]


class _Nf4LayerRecord(TypedDict):
    weights: int
    scaler_block_size: int
    bytes: int
    fp32_bytes: int


class _CodesRecord(TypedDict):
    before: dict[str, str]
    after: dict[str, str]


class _QuantizedBaseRecord(TypedDict):
    format: str
    block_size: int
    implementation: NotRequired[str]
    sha256: NotRequired[str]  # of every code and scale tensor's bytes, in order
    layers: dict[str, _Nf4LayerRecord]
    fp32_layers: dict[str, str]
    codes_sha256: _CodesRecord
    base_accuracy: NotRequired[EvaluationSummary]


class AdapterMetrics(TypedDict):
    """An adapter's metrics.json: the schema every listing and load checks. Only the base model's fingerprint
    is required (an adapter written by another tool may have nothing else); whatever else is there must have
    the type the lab writes. The lab's workflows add records of their own ("task", "personal")."""

    name: NotRequired[str]
    base_sha256: str
    weights_sha256: NotRequired[str]
    created: NotRequired[str]
    target_digits: NotRequired[list[int]]
    finetune: NotRequired[_FinetuneRecord]
    seconds: NotRequired[Number]
    samples_per_s: NotRequired[Number]
    final_loss: NotRequired[Number | None]
    trainable_params: NotRequired[int]
    before: NotRequired[EvaluationSummary]
    after: NotRequired[EvaluationSummary]
    difference: NotRequired[EvaluationDifference]
    base_tensors: NotRequired[_BaseTensorsRecord]
    pissa: NotRequired[_PissaRecord]  # PiSSA only: the residual base it trained on (lora_core.lab.proof.pissa_record)
    # QLoRA only: the NF4 base it trained and runs on (LoraModel.quantized_record), with that base's own accuracy
    quantized_base: NotRequired[_QuantizedBaseRecord]


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


_P = ParamSpec("_P")
_R = TypeVar("_R")
_held = threading.local()  # per thread: {artifacts folder: depth} of the writer locks it holds
_verified_weights: set[tuple[Any, ...]] = set()  # weight files whose sha256 was checked, by identity
_verified_lock = threading.Lock()


def _held_locks() -> dict[str, int]:
    if not hasattr(_held, "locks"):
        _held.locks = {}
    return _held.locks


def writes(what: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorator for a workflow whose first argument is an ArtifactStore: run it all under the writer lock."""

    def decorate(fn: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(fn)
        def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            store = args[0]
            assert isinstance(store, ArtifactStore)
            with store.writing(what):
                return fn(*args, **kwargs)

        return run

    return decorate


def describe_holder(holder: dict[str, Any]) -> str:
    """'training the base model (process 123, since 2026-11-29 10:42:03 UTC)' from a lock's holder info."""
    since = str(holder.get("since") or "")
    try:
        since = datetime.fromisoformat(since).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        since = since or "an unknown time"
    return f"{holder.get('what') or 'another run'} (process {holder.get('pid', '?')}, since {since})"


class ArtifactStore:
    """All saved work under one root folder: one writer at a time (see `writing`), any number of readers."""

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

    # --- the writer lock ---------------------------------------------------------------------------
    @contextmanager
    def writing(self, what: str, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
        """Hold this folder's writer lock; reentrant within one thread (the outer `what` is reported).

        Raises ArtifactsBusy after `wait_s` seconds if another process or thread holds it.
        """
        key = str(self.root.resolve())
        held = _held_locks()
        if key in held:
            held[key] += 1
            try:
                yield
            finally:
                held[key] -= 1
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = self.writer() or {}
                        raise ArtifactsBusy(
                            f"the artifacts folder {self.root} is busy: {describe_holder(holder)}; "
                            "try again when it has finished (or stop it)",
                            holder,
                        ) from None
                    time.sleep(0.05)
            held[key] = 1
            try:
                # informational only (the flock is the lock), so a plain write: readers tolerate a partial one
                info = json.dumps({"what": what, "pid": os.getpid(), "since": now_iso()})
                (self.root / LOCK_INFO).write_text(info + "\n")
                self._recover()
                yield
            finally:
                del held[key]
                (self.root / LOCK_INFO).unlink(missing_ok=True)  # before the lock goes: the next holder writes its own
        finally:
            os.close(fd)  # releases the flock

    def writer(self) -> dict[str, Any] | None:
        """Who holds the writer lock now ({"what", "pid", "since"}), or None. Reads only."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    info = parse_json((self.root / LOCK_INFO).read_bytes(), self.root / LOCK_INFO)
                except (OSError, ArtifactError):
                    info = None
                return info if isinstance(info, dict) else {"what": "another run"}
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def recover(self) -> None:
        """Take the writer lock once, which repairs what a killed writer left behind."""
        with self.writing("repairing the artifacts folder"):
            pass

    def _recover(self) -> None:
        """Under the lock: finish or undo interrupted folder swaps, drop a killed writer's leftovers."""
        recover_dir(self.base_dir, stale_seconds=0)  # every writer holds the lock: no staging folder is live
        if not self.adapters_dir.is_dir():
            return
        names = set()
        for entry in self.adapters_dir.iterdir():
            n = entry.name
            if not n.startswith("."):
                names.add(n)
            elif n.endswith(".previous"):
                names.add(n[1 : -len(".previous")])
            elif ".staging-" in n:
                names.add(n[1 : n.index(".staging-")])
            elif ".deleted-" in n:
                shutil.rmtree(entry, ignore_errors=True)
        for n in names:
            recover_dir(self.adapters_dir / n, stale_seconds=0)

    # --- reading -------------------------------------------------------------------------------------
    def _read(self, final: Path, names: tuple[str, ...]) -> tuple[Path, dict[str, FileRead]] | None:
        try:
            return read_dir_files(final, names, MAX_FILE_BYTES)
        except FileTooLarge as exc:
            raise ArtifactError(
                f"{exc.path} is {exc.size / 2**20:.0f} MiB, larger than any model of this study"
            ) from None
        except FolderKeptChanging as exc:
            raise ArtifactError(f"{exc}; try again") from None
        except OSError as exc:
            raise ArtifactError(f"{final} cannot be read ({exc})") from exc

    # --- base model ----------------------------------------------------------------------------
    def has_base(self) -> bool:
        for _ in range(3):  # a swap between two checks can hide both folders for an instant
            folder = current_dir(self.base_dir)
            if folder is not None and (folder / BASE_META).is_file() and (folder / BASE_WEIGHTS).is_file():
                return True
        return False

    def require_free_space(self, nbytes: int, what: str) -> None:
        """Refuse, before a run starts, one whose files (`nbytes` in all) the disk holding the artifacts folder has
        no room for: a full disk would otherwise end the run at its save, its training lost."""
        folder = self.root
        while not folder.exists() and folder != folder.parent:  # the folder is made at the first save
            folder = folder.parent
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            return  # cannot tell: the save will say
        needed = nbytes + FREE_SPACE_MARGIN
        if free < needed:
            raise ArtifactError(
                f"{what} needs about {needed / 2**20:.0f} MiB in {self.root}, and the disk has {free / 2**20:.0f} "
                "MiB free; free some space or choose another folder with --artifacts"
            )

    @writes("saving the base model")
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
            atomic_write_bytes(staging / BASE_WEIGHTS, weights)
            atomic_write_json(staging / BASE_META, full_meta)
            replace_dir(staging, self.base_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return full_meta

    def _read_base(self, *names: str) -> tuple[Path, dict[str, FileRead]]:
        read = self._read(self.base_dir, (BASE_META, *names))
        if read is None or read[1][BASE_META].data is None:
            raise ArtifactError(f"no base model in {self.base_dir}; train one first (python -m lora_core train)")
        return read

    def base_meta(self) -> dict[str, Any]:
        """model.json only (cheap: for status displays)."""
        folder, files = self._read_base()
        return _base_meta_from(files[BASE_META], folder / BASE_META)

    def verified_base_meta(self) -> dict[str, Any]:
        """model.json, once the weights file is known to match its sha256 (hashed again only when the
        file changes: a process remembers each version it checked)."""
        folder, files = self._read_base()
        meta = _base_meta_from(files[BASE_META], folder / BASE_META)
        try:
            info = os.stat(folder / BASE_WEIGHTS)
        except OSError:
            info = None
        if info is not None:
            identity = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size, meta["sha256"])
            with _verified_lock:
                if identity in _verified_weights:
                    return meta
        folder, files = self._read_base(BASE_WEIGHTS)
        meta = _base_meta_from(files[BASE_META], folder / BASE_META)
        weights = files[BASE_WEIGHTS]
        _check_base_sha(weights, meta, folder / BASE_WEIGHTS)
        with _verified_lock:
            _verified_weights.add((*(weights.identity or ()), meta["sha256"]))
        return meta

    def load_base(self, device: torch.device | str = "cpu") -> BaseModelRecord:
        folder, files = self._read_base(BASE_WEIGHTS)
        meta = _base_meta_from(files[BASE_META], folder / BASE_META)
        weights_path = folder / BASE_WEIGHTS
        data = _check_base_sha(files[BASE_WEIGHTS], meta, weights_path)
        hidden = meta["architecture"]["hidden"]
        tensors = _parse_safetensors(data, weights_path, _base_shapes(hidden))
        model = MLP(hidden[0], hidden[1])  # built only once the file is known to fit
        model.load_state_dict(tensors)
        model.eval()
        return BaseModelRecord(model.to(device), meta, folder)

    # --- adapters ------------------------------------------------------------------------------
    def save_adapter(
        self, lora_model: LoraModel, name: str, metrics: dict[str, Any], base_sha256: str, *, overwrite: bool = False
    ) -> Path:
        """Save adapter `name`; with overwrite=False, refuse if it exists now (checked under the lock)."""
        config = lora_model.adapter_config(name)
        tensors = {k: v.to("cpu", torch.float32).contiguous() for k, v in lora_model.adapter_state_dict(name).items()}
        weights = save_safetensors_bytes(tensors, metadata={"format": "pt"})
        final = self.adapter_dir(name)
        with self.writing(f"saving adapter {name!r}"):
            if not overwrite and current_dir(final) is not None:
                raise AdapterExistsError(name)
            staging = new_staging_dir(final)
            try:
                atomic_write_bytes(staging / ADAPTER_WEIGHTS, weights)
                atomic_write_json(staging / ADAPTER_CONFIG, config.to_peft())
                record = {"name": name, "base_sha256": base_sha256, "weights_sha256": sha256_bytes(weights)}
                atomic_write_json(staging / ADAPTER_METRICS, {**record, "created": now_iso(), **metrics})
                replace_dir(staging, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return final

    def adapter_exists(self, name: str) -> bool:
        return current_dir(self.adapter_dir(name)) is not None

    def unused_adapter_name(self, name: str) -> str:
        """`name` if no adapter has it, else the first free one of name-2, name-3, ..."""
        candidate, n = name, 1
        while self.adapter_exists(candidate):
            n += 1
            candidate = f"{name}-{n}"
        return candidate

    def list_adapters(self) -> list[AdapterRecord]:
        if not self.adapters_dir.is_dir():
            return []
        names = set()
        for entry in self.adapters_dir.iterdir():
            if not entry.name.startswith("."):
                names.add(entry.name)
            elif entry.name.endswith(".previous"):  # a swap in progress (or interrupted): still listed
                names.add(entry.name[1 : -len(".previous")])
        records = []
        for name in sorted(names):
            read = self._read(self.adapters_dir / name, (ADAPTER_CONFIG, ADAPTER_METRICS, ADAPTER_WEIGHTS))
            if read is not None:
                records.append(_adapter_record(name, *read))
        return records

    def adapter_names(self) -> list[str]:
        return [r.name for r in self.list_adapters()]

    def _read_adapter_files(self, name: str) -> tuple[Path, dict[str, FileRead]]:
        """One consistent version of the adapter's three files."""
        read = self._read(self.adapter_dir(name), (ADAPTER_CONFIG, ADAPTER_METRICS, ADAPTER_WEIGHTS))
        if read is None:
            known = ", ".join(self.adapter_names()) or "none"
            raise ArtifactError(f"no adapter called {name!r} in {self.adapters_dir} (saved: {known})")
        return read

    def read_adapter(self, name: str) -> AdapterRecord:
        record = _adapter_record(name, *self._read_adapter_files(name))
        if record.error:
            raise ArtifactError(record.error)
        return record

    def load_adapter(
        self, lora_model: LoraModel, name: str, base_sha256: str, as_name: str | None = None
    ) -> AdapterRecord:
        """Check adapter `name` against this base model and add it to `lora_model` (not activated)."""
        folder, files = self._read_adapter_files(name)
        record = _adapter_record(name, folder, files, rehash=True)
        if record.error:
            raise ArtifactError(record.error)
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
        quantized = (record.metrics or {}).get("quantized_base")
        if quantized is not None:  # the NF4 base metrics.json says the adapter runs on must be buildable here
            try:
                Nf4Config.from_record(quantized).validate(linear_layers(lora_model.model))
            except ConfigError as exc:
                raise ArtifactError(f"{record.path / ADAPTER_METRICS}: {exc}") from exc
        weights_path = record.path / ADAPTER_WEIGHTS
        assert files[ADAPTER_WEIGHTS].data is not None  # _adapter_record checked it
        dtype = next(lora_model.model.parameters()).dtype
        expected = {k: (shape, dtype) for k, shape in lora_model.expected_adapter_shapes(record.config).items()}
        tensors = _parse_safetensors(files[ADAPTER_WEIGHTS].data, weights_path, expected)
        device = next(lora_model.model.parameters()).device
        previous = lora_model.active_adapter
        lora_model.load_adapter_tensors(
            as_name or name, record.config, {k: v.to(device) for k, v in tensors.items()}, meta=record.metrics
        )
        lora_model.set_adapter(previous)
        return record

    def delete_adapter(self, name: str) -> None:
        with self.writing(f"deleting adapter {name!r}"):
            folder = self.read_adapter_folder(name)
            trash = Path(tempfile.mkdtemp(dir=self.adapters_dir, prefix=f".{name}.deleted-"))
            folder.rename(trash / name)
            shutil.rmtree(trash, ignore_errors=True)

    def rename_adapter(self, old: str, new: str) -> Path:
        target = self.adapter_dir(new)
        with self.writing(f"renaming adapter {old!r}"):
            folder = self.read_adapter_folder(old)
            if current_dir(target) is not None:
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

        _, files = self._read_adapter_files(name)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for file_name in sorted(files):
                if files[file_name].data is not None:
                    zf.writestr(f"{name}/{file_name}", files[file_name].data)
        return buffer.getvalue()


def _check_base_sha(weights: FileRead, meta: dict[str, Any], path: Path) -> bytes:
    """The weights' bytes, once they are known to be the ones model.json describes (the one sha256 check)."""
    if weights.data is None:
        raise ArtifactError(f"{path} is missing")
    if sha256_bytes(weights.data) != meta["sha256"]:
        raise ArtifactError(
            f"{path} does not match the sha256 recorded in model.json; the two files "
            "come from different saves. Retrain the base model."
        )
    return weights.data


def _base_meta_from(file: FileRead, path: Path) -> dict[str, Any]:
    return _check_base_meta(_json_from(file, path), path)


def _adapter_record(name: str, folder: Path, files: dict[str, FileRead], *, rehash: bool = False) -> AdapterRecord:
    """The adapter as listed, or the reason it cannot be used. Its weights are hashed once per version on disk
    for listing, and every time with `rehash` (loading them, as load_base does)."""
    try:
        config = _config_from(_json_from(files[ADAPTER_CONFIG], folder / ADAPTER_CONFIG), folder / ADAPTER_CONFIG)
        metrics = _json_from(files[ADAPTER_METRICS], folder / ADAPTER_METRICS)
        if not isinstance(metrics.get("base_sha256"), str):
            raise ArtifactError(f"{folder / ADAPTER_METRICS}: missing the base model fingerprint 'base_sha256'")
        check_schema(metrics, AdapterMetrics, folder / ADAPTER_METRICS, "adapter's metrics file")
        _check_adapter_weights(files[ADAPTER_WEIGHTS], metrics.get("weights_sha256"), folder, rehash)
        return AdapterRecord(name, folder, config, metrics)
    except ArtifactError as exc:
        return AdapterRecord(name, folder, None, None, str(exc))


def _check_adapter_weights(weights: FileRead, recorded: Any, folder: Path, rehash: bool) -> None:
    """The weights file is there and is the one metrics.json records (hashed again only when the file changes).
    An adapter saved before the sha256 was recorded is checked as far as it can be: a complete safetensors file."""
    path = folder / ADAPTER_WEIGHTS
    if weights.data is None:
        raise ArtifactError(f"{path} is missing")
    if not weights.data:
        raise ArtifactError(f"{path} is empty; fine-tune the adapter again")
    if recorded is not None and not (isinstance(recorded, str) and len(recorded) == 64):
        raise ArtifactError(f"{folder / ADAPTER_METRICS}: 'weights_sha256' should be a sha256, found {recorded!r}")
    identity = (*(weights.identity or ()), recorded)
    with _verified_lock:
        if not rehash and weights.identity is not None and identity in _verified_weights:
            return
    if recorded is not None and sha256_bytes(weights.data) != recorded:
        raise ArtifactError(
            f"{path} does not match the sha256 recorded in metrics.json: the file was damaged or changed after "
            "it was saved; fine-tune the adapter again"
        )
    if recorded is None:
        try:
            load_safetensors_bytes(weights.data)
        except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
            raise ArtifactError(f"{path} is not a valid safetensors file ({exc})") from exc
    with _verified_lock:
        _verified_weights.add(identity)


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
    return _json_from(FileRead(_read_limited(path), None), path)


def _json_from(file: FileRead, path: Path) -> dict[str, Any]:
    if file.data is None:
        raise ArtifactError(f"{path} is missing")
    return parse_json_object(file.data, path)


def _config_from(data: dict[str, Any], path: Path) -> LoraConfig:
    try:
        return LoraConfig.from_peft(data)
    except (ConfigError, TypeError) as exc:
        raise ArtifactError(f"{path}: {exc}") from exc


def _check_base_meta(meta: dict[str, Any], path: Path) -> dict[str, Any]:
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
