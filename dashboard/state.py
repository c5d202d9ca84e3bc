"""Shared and per-session state of the dashboard.

Shared by every browser session of one server (st.cache_resource, treated as read-only):
    the MNIST tensors, each saved base model (keyed by its sha256) and evaluations of saved models.
Per session (st.session_state):
    a LoraModel built on a deep copy of the cached base (LoraModel swaps the base's layers in
    place, so the cached model itself is never wrapped), the active adapter and the enabled switch.
Everything saved lives in the artifacts folder ($LORA_ARTIFACTS_DIR), read fresh on every run, so
two sessions see the same saved work.

Which base the reading pages show (Evaluation, Parameters, Draw): the main one by default, or a separate
base of an experiment (<artifacts>/bases/unseen-8-9, with its own adapters), chosen per session
(`chosen_view`). The functions below take that base's ArtifactStore as `where` (None: the main one); they
only read it. Writers (runs, rename, delete) always work on the main folder, `store()`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st
import torch

from lora_core.data import MnistData, denormalize, load_mnist
from lora_core.errors import ArtifactError, ConfigError, DataError
from lora_core.evaluate import Evaluation, evaluate
from lora_core.lab.combine import PLAIN, CombinationMap, ScoreColumn, combination_map
from lora_core.lab.strength import StrengthCurve, strength_curve
from lora_core.lab.tasks import Task, parse_task, task_of, task_test_set
from lora_core.lab.truncation import TruncationCurve, truncation_curve
from lora_core.lora import LoraModel
from lora_core.lora.nf4 import LevelHistogram, level_histogram
from lora_core.numbers import digits_named
from lora_core.store.artifacts import (
    ADAPTER_CONFIG,
    ADAPTER_METRICS,
    ADAPTER_WEIGHTS,
    AdapterRecord,
    ArtifactStore,
    BaseModelRecord,
)
from lora_core.store.bases import separate_base_label, separate_bases
from lora_core.store.paths import default_artifacts_dir, default_data_dir

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


def base_status(where: ArtifactStore | None = None) -> BaseStatus:
    """Read model.json (cheap) and return the cached base model for its fingerprint."""
    s = where or store()
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


def base_evaluation(base: BaseModelRecord, where: ArtifactStore | None = None) -> Evaluation:
    return _base_evaluation(str((where or store()).root), base.fingerprint)


def _adapter_stamp(record: AdapterRecord) -> str:
    """A digest of the adapter's weights, config and metrics (which name a QLoRA adapter's NF4 base): changes
    whenever the adapter is saved again."""
    digest = hashlib.sha256()
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG, ADAPTER_METRICS):
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


def adapter_evaluation(base: BaseModelRecord, record: AdapterRecord, where: ArtifactStore | None = None) -> Evaluation:
    """Live evaluation of a saved adapter on the test set (cached per saved version)."""
    return _adapter_evaluation(str((where or store()).root), base.fingerprint, record.name, _adapter_stamp(record))


@st.cache_resource(max_entries=8, show_spinner="Comparing W with NF4's levels...")
def _nf4_levels(_root: str, sha256: str, layer: str, block_size: int) -> LevelHistogram:
    return level_histogram(getattr(_load_base(_root, sha256).model, layer).weight, block_size)


def nf4_levels(
    base: BaseModelRecord, layer: str, block_size: int, where: ArtifactStore | None = None
) -> LevelHistogram:
    """How the base's `layer` falls against NF4's levels at `block_size` (cached per base)."""
    return _nf4_levels(str((where or store()).root), base.fingerprint, layer, block_size)


# --- an adapter's curves (lora_core.lab.strength and .truncation), each computed once in the background ------------
CURVES_KEPT = 16
Curve = TypeVar("Curve", StrengthCurve, TruncationCurve)


@st.cache_resource
def _curves() -> tuple[ThreadPoolExecutor, dict[tuple[str, ...], Future[Any]], threading.Lock]:
    """Server-wide: one worker thread, and each curve's future by (kind, folder, base, adapter, version, task), so
    that every session asks once and a page never waits for a curve to render."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="adapter-curve"), {}, threading.Lock()


def _compute_curve(
    compute: Callable[[LoraModel, str, torch.Tensor, torch.Tensor], Curve],
    root: str,
    base: BaseModelRecord,
    name: str,
    x: torch.Tensor,
    y: torch.Tensor,
) -> Curve:
    # runs in the pool's thread, outside any script run: it is handed everything Streamlit's caches hold
    model = LoraModel(copy.deepcopy(base.model))
    ArtifactStore(root).load_adapter(model, name, base.fingerprint)
    return compute(model, name, x, y)


def _adapter_curve(
    compute: Callable[[LoraModel, str, torch.Tensor, torch.Tensor], Curve],
    base: BaseModelRecord,
    record: AdapterRecord,
    task: Task | None,
    where: ArtifactStore | None,
) -> Future[Curve]:
    root = str((where or store()).root)
    spec = task.spec if task is not None else None
    key = (compute.__name__, root, base.fingerprint, record.name, _adapter_stamp(record), spec or "")
    # the test images are read here, in the script's own context (Streamlit's caches hold them)
    return _submitted_once(
        key,
        lambda: (compute, root, base, record.name, _test_x() if spec is None else _task_test_x(spec), _test_y()),
        _compute_curve,
    )


def _submitted_once(key: tuple[str, ...], arguments: Callable[[], tuple[Any, ...]], work: Callable[..., Any]) -> Future:
    """The future of `work(*arguments())` under `key`, submitted to the server-wide pool the first time any session
    asks; the oldest of more than CURVES_KEPT are forgotten."""
    pool, futures, lock = _curves()
    with lock:
        future = futures.get(key)
        if future is None:
            future = futures[key] = pool.submit(work, *arguments())
            while len(futures) > CURVES_KEPT:  # the oldest first (dicts keep their order)
                del futures[next(iter(futures))]
    return future


def adapter_strength_curve(
    base: BaseModelRecord, record: AdapterRecord, task: Task | None = None, where: ArtifactStore | None = None
) -> Future[StrengthCurve]:
    """The adapter at each strength on the MNIST test set, or on a domain task's own test set: a future that
    is done once the curve is computed (the error it holds if the adapter cannot be loaded)."""
    return _adapter_curve(strength_curve, base, record, task, where)


def adapter_truncation_curve(
    base: BaseModelRecord, record: AdapterRecord, task: Task | None = None, where: ArtifactStore | None = None
) -> Future[TruncationCurve]:
    """The adapter with each layer's update kept to its top k directions, for each k of its grid, on the MNIST
    test set or a domain task's own: a future, as adapter_strength_curve."""
    return _adapter_curve(truncation_curve, base, record, task, where)


def _compute_weight_map(
    root: str,
    base: BaseModelRecord,
    names: tuple[str, str],
    columns: tuple[ScoreColumn, ...],
    sets: dict[str, torch.Tensor],
    y: torch.Tensor,
) -> CombinationMap:
    model = LoraModel(copy.deepcopy(base.model))
    for name in names:
        ArtifactStore(root).load_adapter(model, name, base.fingerprint)
    model.check_same_base(names)
    return combination_map(model, names, columns, sets, y)


def combination_weight_map(
    base: BaseModelRecord,
    records: tuple[AdapterRecord, AdapterRecord],
    columns: Sequence[ScoreColumn],
    where: ArtifactStore | None = None,
) -> Future[CombinationMap]:
    """Two adapters acting at once, scored on every column at each pair of weights of a coarse grid: a future,
    computed once per pair (and per saved version of each) in the background, as the curves above."""
    root = str((where or store()).root)
    names = (records[0].name, records[1].name)
    key = ("map", root, base.fingerprint, *names, *map(_adapter_stamp, records), *(c.key for c in columns))

    def arguments() -> tuple[Any, ...]:
        sets = {c.key if c.task else PLAIN: _task_test_x(c.key) if c.task else _test_x() for c in columns}
        return root, base, names, tuple(columns), sets, _test_y()

    return _submitted_once(key, arguments, _compute_weight_map)


# --- a task adapter on its task's own test set (cached server-wide, like the evaluations above) ---------------
@st.cache_resource(max_entries=4, show_spinner="Transforming the 10,000 test digits for the task...")
def _task_test_x(spec: str) -> torch.Tensor:
    # keyed by the task's canonical spec: the same transform for every base and adapter
    x, _ = task_test_set(parse_task(spec), data())
    return x


@st.cache_resource(max_entries=8, show_spinner="Evaluating the base model on the task's test set...")
def _task_base_evaluation(_root: str, sha256: str, spec: str) -> Evaluation:
    return evaluate(_load_base(_root, sha256).model, _task_test_x(spec), _test_y())


@st.cache_resource(max_entries=16, show_spinner="Evaluating the adapter on the task's test set...")
def _task_adapter_evaluation(_root: str, sha256: str, _name: str, stamp: str, spec: str) -> Evaluation:
    base = _load_base(_root, sha256)
    model = LoraModel(copy.deepcopy(base.model))
    ArtifactStore(_root).load_adapter(model, _name, sha256)
    model.set_adapter(_name)
    return evaluate(model, _task_test_x(spec), _test_y())


def task_base_evaluation(base: BaseModelRecord, task: Task, where: ArtifactStore | None = None) -> Evaluation:
    """The base model on the task's own test set (the transformed MNIST test images)."""
    return _task_base_evaluation(str((where or store()).root), base.fingerprint, task.spec)


def task_adapter_evaluation(
    base: BaseModelRecord, record: AdapterRecord, task: Task, where: ArtifactStore | None = None
) -> Evaluation:
    """A saved adapter on the task's own test set (cached per saved version of the adapter)."""
    root = str((where or store()).root)
    return _task_adapter_evaluation(root, base.fingerprint, record.name, _adapter_stamp(record), task.spec)


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

    @property
    def task(self) -> Task | None:
        """The task an Experiments adapter was trained on (None for the study's and the Fine-tuning page's)."""
        return task_of(self.record.metrics)

    @property
    def rank_text(self) -> str:
        """The adapter's kind and rank as the sidebar lists it: "r=8", "DoRA r=8", "VeRA r=256", "QLoRA r=8" (on an NF4
        base), or PiSSA's trained rank beside the rank its converted file holds ("PiSSA r=8, saved r=16")."""
        cfg = self.record.config
        if cfg is None:
            return "r=?"
        pissa = (self.record.metrics or {}).get("pissa")
        if isinstance(pissa, dict) and "trained_rank" in pissa:
            return f"PiSSA r={pissa['trained_rank']}, saved r={cfg.r}"
        quantized = "quantized_base" in (self.record.metrics or {})
        kind = "VeRA " if cfg.use_vera else "DoRA " if cfg.use_dora else "QLoRA " if quantized else ""
        return f"{kind}r={cfg.r}"

    @property
    def on_nf4(self) -> bool:
        """A QLoRA adapter: it runs on a 4-bit NF4 copy of the base, which is what its strength 0 gives."""
        return "quantized_base" in (self.record.metrics or {})

    @property
    def is_dora(self) -> bool:
        """A DoRA adapter: it rescales W's rows, so it has no strength to scale and no rank to cut."""
        return self.record.config is not None and self.record.config.use_dora

    @property
    def domain_task(self) -> Task | None:
        """The task if it transforms the images (rotate, invert, thick, thin, shift), else None."""
        task = self.task
        return task if task is not None and task.is_domain else None

    @property
    def label(self) -> str:
        """What the adapter was trained for, in a few words: 'rotate 45°', 'inverted', 'digit 4'."""
        task = self.task
        if task is not None and task.kind != "weakest":
            return task.short_label
        targets = self.targets
        if not targets:
            return "digit ?"
        return digits_named(targets)


def adapters(base_sha: str | None, where: ArtifactStore | None = None) -> list[AdapterInfo]:
    """Every adapter folder (of the main folder, or of `where`), marked usable with its base, stale, or broken."""
    out = []
    for rec in (where or store()).list_adapters():
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


def usable_adapters(base_sha: str | None, where: ArtifactStore | None = None) -> list[AdapterInfo]:
    return [a for a in adapters(base_sha, where) if a.ok]


# --- which base the reading pages show ------------------------------------------------------------------
MAIN_BASE = "main"
BASE_VIEW_KEY = "base_view"


@dataclass(frozen=True)
class BaseView:
    """A base model the reading pages can show, with its own adapters: the main one or a separate one."""

    name: str  # MAIN_BASE or the folder name under <artifacts>/bases/
    store: ArtifactStore
    label: str

    @property
    def is_main(self) -> bool:
        return self.name == MAIN_BASE

    @property
    def where(self) -> ArtifactStore | None:
        """What to pass as `where` to the functions of this module (None: the main folder)."""
        return None if self.is_main else self.store


def base_views() -> list[BaseView]:
    """The main base, then each separate base saved under <artifacts>/bases/ (read only)."""
    main = store()
    views = [BaseView(MAIN_BASE, main, "main base model")]
    for name, sub in separate_bases(main).items():
        try:
            meta = sub.base_meta()
        except ArtifactError:
            meta = None
        views.append(BaseView(name, sub, separate_base_label(name, meta)))
    return views


def chosen_view() -> BaseView:
    """The base this session's reading pages show: the main one unless another was chosen (and still exists)."""
    name = st.session_state.get(BASE_VIEW_KEY, MAIN_BASE)
    views = base_views()
    return next((v for v in views if v.name == name), views[0])


def set_base_view(name: str) -> None:
    st.session_state[BASE_VIEW_KEY] = name


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


def session_lora(base: BaseModelRecord, where: ArtifactStore | None = None) -> LoraModel:
    """This session's own LoraModel on a deep copy of the cached base (rebuilt if the base changed)."""
    entry = st.session_state.get(LORA_KEY)
    root = str((where or store()).root)
    if entry is None or entry["sha"] != base.fingerprint or entry["root"] != root:
        entry = {"sha": base.fingerprint, "root": root, "model": LoraModel(copy.deepcopy(base.model)), "stamps": {}}
        st.session_state[LORA_KEY] = entry
    return entry["model"]


def load_into_session(base: BaseModelRecord, name: str, where: ArtifactStore | None = None) -> LoraModel:
    """Make sure adapter `name` (as saved now, in the main folder or `where`) is loaded in the session's
    LoraModel.

    Raises ArtifactError / StaleAdapterError / ConfigError for adapters that cannot be used.
    """
    source = where or store()
    model = session_lora(base, source)
    entry = st.session_state[LORA_KEY]
    record = source.read_adapter(name)
    stamp = _adapter_stamp(record)
    if name in model.adapters and entry["stamps"].get(name) == stamp:
        return model
    if name in model.adapters:
        model.delete_adapter(name)
    source.load_adapter(model, name, base.fingerprint)
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
