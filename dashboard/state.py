"""Shared and per-session state of the dashboard.

Shared by every browser session of one server (st.cache_resource, treated as read-only):
    the MNIST tensors, each saved base model (keyed by its sha256) and evaluations of saved models.
Per session (st.session_state):
    a LoraModel built on a deep copy of the cached base (LoraModel swaps the base's layers in
    place, so the cached model itself is never wrapped), the active adapter and the enabled switch.
Everything saved lives in the artifacts folder ($LORA_ARTIFACTS_DIR), read fresh on every run, so
two sessions see the same saved work.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st
import torch

from lora_core.data import MnistData, denormalize, load_mnist
from lora_core.errors import ArtifactError, ConfigError, DataError
from lora_core.evaluate import Evaluation, evaluate
from lora_core.lora import LoraModel
from lora_core.paths import default_artifacts_dir, default_data_dir
from lora_core.storage import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterRecord, ArtifactStore, BaseModelRecord

ACTIVE_KEY = "active_adapter"
ENABLED_KEY = "adapters_enabled"
LORA_KEY = "_session_lora"


# --- shared, cached --------------------------------------------------------------------------------
@st.cache_resource(show_spinner="Loading MNIST (once per server)...")
def _load_data(data_dir: str) -> MnistData:
    return load_mnist(Path(data_dir))


def data() -> MnistData:
    """The real MNIST tensors, loaded once per server; stops the page with advice if missing."""
    try:
        return _load_data(str(default_data_dir()))
    except DataError as exc:
        st.error(f"MNIST could not be loaded: {exc}")
        st.stop()
        raise  # unreachable; keeps type checkers happy


@st.cache_resource
def warm_up_torch() -> threading.Thread:
    """Once per server, in the background: PyTorch's first optimizer step imports torch._dynamo lazily,
    which takes seconds; doing it now lets the first training run report progress right away."""

    def work() -> None:
        p = torch.nn.Parameter(torch.zeros(1))
        p.grad = torch.ones(1)
        torch.optim.Adam([p]).step()

    thread = threading.Thread(target=work, name="dashboard-warm-up", daemon=True)
    thread.start()
    return thread


def store() -> ArtifactStore:
    """The artifacts folder of this server ($LORA_ARTIFACTS_DIR or ./artifacts)."""
    return ArtifactStore(default_artifacts_dir())


@st.cache_resource(max_entries=4, show_spinner="Loading the base model...")
def _load_base(_root: str, sha256: str) -> BaseModelRecord:
    # keyed by the weights' sha256 only: equal fingerprints mean equal weights, whichever folder holds them
    record = ArtifactStore(_root).load_base("cpu")
    if record.fingerprint != sha256:  # replaced between reading model.json and the weights
        raise ArtifactError("the base model changed while it was being loaded; reload the page")
    return record


@dataclass
class BaseStatus:
    """What is known about the saved base model: its record, or why there is none."""

    record: BaseModelRecord | None
    meta: dict[str, Any] | None
    error: str | None

    @property
    def sha(self) -> str | None:
        return self.record.fingerprint if self.record else None


def base_status() -> BaseStatus:
    """Read model.json (cheap) and return the cached base model for its fingerprint."""
    s = store()
    if not s.has_base():
        return BaseStatus(None, None, None)
    try:
        meta = s.verified_base_meta()  # the weights file still matches model.json (hashed once per version)
        record = _load_base(str(s.root), str(meta["sha256"]))
    except ArtifactError as exc:
        return BaseStatus(None, None, str(exc))
    # the cached weights may come from another folder holding the same ones (same seed and settings); what
    # this folder's run recorded (when, how, in which precision and why) is its own model.json
    record = dataclasses.replace(record, meta=meta, path=s.base_dir)
    return BaseStatus(record, meta, None)


@st.cache_resource(max_entries=8, show_spinner="Evaluating the base model on the 10,000 test digits...")
def _base_evaluation(_root: str, sha256: str) -> Evaluation:
    record = _load_base(_root, sha256)
    return evaluate(record.model, _test_x(), _test_y())


def base_evaluation(base: BaseModelRecord) -> Evaluation:
    return _base_evaluation(str(store().root), base.fingerprint)


def _adapter_stamp(record: AdapterRecord) -> str:
    """A digest of the adapter's weights and config: changes whenever the adapter is saved again."""
    digest = hashlib.sha256()
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        try:
            digest.update((record.path / name).read_bytes())
        except OSError:
            digest.update(b"missing")
    return digest.hexdigest()


@st.cache_resource(max_entries=16, show_spinner="Evaluating the adapter on the 10,000 test digits...")
def _adapter_evaluation(_root: str, sha256: str, _name: str, stamp: str) -> Evaluation:
    base = _load_base(_root, sha256)
    model = LoraModel(copy.deepcopy(base.model))
    ArtifactStore(_root).load_adapter(model, _name, sha256)
    model.set_adapter(_name)
    return evaluate(model, _test_x(), _test_y())


def adapter_evaluation(base: BaseModelRecord, record: AdapterRecord) -> Evaluation:
    """Live evaluation of a saved adapter on the test set (cached per saved version)."""
    return _adapter_evaluation(str(store().root), base.fingerprint, record.name, _adapter_stamp(record))


def _test_x() -> torch.Tensor:
    return data().test_x


def _test_y() -> torch.Tensor:
    return data().test_y


def test_pixels(index: int) -> Any:
    """Test image `index` as a 28x28 array in 0..1 (what the model sees, for display)."""
    return denormalize(data().test_x[index]).reshape(28, 28).numpy()


# --- adapters on disk --------------------------------------------------------------------------------
@dataclass
class AdapterInfo:
    record: AdapterRecord
    status: str  # "ok", "stale" or "broken"
    message: str | None

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def targets(self) -> list[int]:
        return list((self.record.metrics or {}).get("target_digits") or [])


def adapters(base_sha: str | None) -> list[AdapterInfo]:
    """Every adapter folder, marked usable with the current base, stale, or broken."""
    out = []
    for rec in store().list_adapters():
        if rec.error:
            out.append(AdapterInfo(rec, "broken", rec.error))
        elif base_sha is None:
            out.append(AdapterInfo(rec, "stale", "there is no usable base model to apply it to"))
        elif rec.base_sha256 != base_sha:
            out.append(
                AdapterInfo(rec, "stale", "trained on a different base model; fine-tune it again on the current one")
            )
        else:
            out.append(AdapterInfo(rec, "ok", None))
    return out


def usable_adapters(base_sha: str | None) -> list[AdapterInfo]:
    return [a for a in adapters(base_sha) if a.ok]


# --- per session ---------------------------------------------------------------------------------------
def active_adapter(base_sha: str | None) -> str | None:
    """The session's active adapter; by default the newest usable one. Cleared if it disappeared."""
    usable = usable_adapters(base_sha)
    names = [a.name for a in usable]
    if ACTIVE_KEY not in st.session_state:
        newest = max(usable, key=lambda a: str((a.record.metrics or {}).get("created", "")), default=None)
        st.session_state[ACTIVE_KEY] = newest.name if newest else None
    name = st.session_state[ACTIVE_KEY]
    if name is not None and name not in names:
        st.session_state[ACTIVE_KEY] = None
        name = None
    return name


def set_active_adapter(name: str | None) -> None:
    st.session_state[ACTIVE_KEY] = name


def adapters_enabled() -> bool:
    return bool(st.session_state.get(ENABLED_KEY, True))


def set_adapters_enabled(enabled: bool) -> None:
    st.session_state[ENABLED_KEY] = enabled


def session_lora(base: BaseModelRecord) -> LoraModel:
    """This session's own LoraModel on a deep copy of the cached base (rebuilt if the base changed)."""
    entry = st.session_state.get(LORA_KEY)
    root = str(store().root)
    if entry is None or entry["sha"] != base.fingerprint or entry["root"] != root:
        entry = {"sha": base.fingerprint, "root": root, "model": LoraModel(copy.deepcopy(base.model)), "stamps": {}}
        st.session_state[LORA_KEY] = entry
    return entry["model"]


def load_into_session(base: BaseModelRecord, name: str) -> LoraModel:
    """Make sure adapter `name` (as saved now) is loaded in the session's LoraModel.

    Raises ArtifactError / StaleAdapterError / ConfigError for adapters that cannot be used.
    """
    model = session_lora(base)
    entry = st.session_state[LORA_KEY]
    record = store().read_adapter(name)
    stamp = _adapter_stamp(record)
    if name in model.adapters and entry["stamps"].get(name) == stamp:
        return model
    if name in model.adapters:
        model.delete_adapter(name)
    store().load_adapter(model, name, base.fingerprint)
    entry["stamps"][name] = stamp
    return model


def forget_in_session(name: str) -> None:
    """Drop adapter `name` from the session model (after a delete or rename on disk)."""
    entry = st.session_state.get(LORA_KEY)
    if entry and name in entry["model"].adapters:
        entry["model"].delete_adapter(name)
        entry["stamps"].pop(name, None)


def describe_error(exc: Exception) -> str:
    if isinstance(exc, ConfigError):
        return f"{exc.field}: {exc.reason}"
    return str(exc)
