"""The LoRA paper's analysis (Hu et al. 2021, arXiv 2106.09685, section 7) on our adapters, and what training
costs in memory, measured from the tensors themselves.

    result = run_analysis(store, data, settings)    # trains (or reuses) the three adapters, computes, saves JSON
    saved = load_analysis(store)                    # what was saved, for the CLI and the dashboard

The paper's math is in .subspace (similarity, amplification, input directions), the memory table in .memory;
this module runs them on the analysis adapters and saves what they give.

Where things go:
    <artifacts>/analysis/adapters.json    similarity, amplification and directions (ADAPTERS_FORMAT)
    <artifacts>/analysis/memory.json      the memory table (MEMORY_FORMAT)
Both are written atomically under the artifacts folder's writer lock; readers (load_analysis) only read.

The analysis adapters are the study's task (the base model's weakest digit, with replay), ranks 8 and 64 with
seed 0 and rank 8 with seed 1, alpha = 2 x rank (scale 2 at every rank, as the sweeps). A saved adapter trained
with exactly those settings on this base model is loaded instead of training it again (read-only); the others
are trained in memory and not saved as adapters.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NotRequired

import torch
from torch import nn
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12 on

from lora_core.data import MnistData
from lora_core.errors import ArtifactError, ConfigError
from lora_core.evaluate import evaluate
from lora_core.lab.analysis.memory import MemoryRow, exact_step_memory, memory_ratios, memory_rows
from lora_core.lab.analysis.settings import AnalysisSettings
from lora_core.lab.analysis.subspace import (
    Amplification,
    LowRankUpdate,
    amplification,
    amplification_summary,
    input_directions,
    similarity_reading,
    similarity_summary,
    subspace_similarity,
    update_input_basis,
    update_svd,
)
from lora_core.lab.run import environment, named_progress
from lora_core.lab.study import load_base_for_lora
from lora_core.lora import LoraModel
from lora_core.model import LAYER_NAMES, MLP
from lora_core.numbers import Number
from lora_core.store.artifacts import ArtifactStore, BaseModelRecord
from lora_core.store.results import Environment, read_saved, write_saved
from lora_core.train import FinetuneConfig, ProgressCallback, finetune, resolve_device

ADAPTERS_FORMAT = "lora_core.analysis.adapters.v1"
MEMORY_FORMAT = "lora_core.analysis.memory.v1"
ANALYSIS_DIR = "analysis"
ADAPTERS_FILE = "adapters.json"
MEMORY_FILE = "memory.json"
PARTS = ("similarity", "amplification", "directions", "memory")
ADAPTER_PARTS = ("similarity", "amplification", "directions")
RATIO_RANK = 8  # the rank the memory ratio full / LoRA is stated at (the first rank measured if 8 is not)


# --- the result ----------------------------------------------------------------------------------------------------
@dataclass
class AnalysisResult:
    """The analysis groups, each the JSON document saved for it: adapters (similarity, amplification and
    directions; ADAPTERS_FORMAT) and memory (MEMORY_FORMAT); None where the group was not run."""

    adapters: dict[str, Any] | None = None
    memory: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The groups that ran, by name ("adapters", "memory")."""
        return {name: doc for name, doc in (("adapters", self.adapters), ("memory", self.memory)) if doc is not None}


# --- the settings and the whole run ----------------------------------------------------------------------------------
def find_saved_adapter(store: ArtifactStore, base_sha256: str, config: FinetuneConfig) -> str | None:
    """A saved adapter of this base trained with exactly `config` (device and precision aside), or None."""
    wanted = {k: v for k, v in config.to_dict().items() if k not in ("device", "precision")}
    for record in store.list_adapters():
        if record.error or record.base_sha256 != base_sha256:
            continue
        trained = (record.metrics or {}).get("finetune") or {}
        if all(trained.get(key) == value for key, value in wanted.items()):
            return record.name
    return None


def _obtain_adapters(
    store: ArtifactStore,
    base: BaseModelRecord,
    lora_model: LoraModel,
    data: MnistData,
    digits: tuple[int, ...],
    settings: AnalysisSettings,
    progress: ProgressCallback | None,
    stop: threading.Event | None,
    log: Callable[[str], None],
    initial: dict[str, dict[str, torch.Tensor]],
) -> list[dict[str, Any]]:
    """Load or train the three analysis adapters into `lora_model` under their keys; say where each came from.
    `initial` receives each one's A before training (initial_a), by key and layer."""
    sources = []
    for key, rank, seed in settings.adapter_specs():
        config = settings.finetune_config(rank, seed, digits)
        initial[key] = initial_a(lora_model.model, config)
        saved = find_saved_adapter(store, base.fingerprint, config)
        if saved is not None:
            log(f"{key}: reusing the saved adapter {saved!r} (trained with these settings on this base)")
            store.load_adapter(lora_model, saved, base.fingerprint, as_name=key)
            sources.append({"key": key, "rank": rank, "seed": seed, "source": f"saved adapter {saved!r}"})
            continue
        log(f"{key}: training rank {rank}, seed {seed}, {settings.steps} steps (kept in memory, not saved)")
        named = named_progress(progress, f"rank {rank}, seed {seed}")
        run = finetune(lora_model, key, data, config, progress=named, stop=stop)
        sources.append(
            {
                "key": key,
                "rank": rank,
                "seed": seed,
                "source": "trained for the analysis",
                "seconds": run.seconds,
                # "auto" picks bf16 or fp32 by a timing probe: the figures depend on which (record it)
                "precision_used": run.precision.used if run.precision else None,
            }
        )
    return sources


def initial_a(model: nn.Module, config: FinetuneConfig) -> dict[str, torch.Tensor]:
    """Each layer's A as `finetune` initialises it for `config` on `model`'s device, before any step: the seed
    draws the layers' A in order, so the same seed at two ranks starts linear1 with the same first rows."""
    device = next(model.parameters()).device
    hidden = getattr(model, "hidden", None)
    if hidden is None:
        raise ConfigError("model", "expected the study's MLP (its hidden sizes)")
    scratch = LoraModel(MLP(*hidden).to(device))
    scratch.add_adapter("init", config.lora_config(), seed=config.seed)
    return {name: layer.lora_A["init"].weight.detach().clone() for name, layer in scratch.lora_layers().items()}


def analyze_adapters(
    lora_model: LoraModel,
    settings: AnalysisSettings,
    keys: Sequence[str] | None = None,
    initial: dict[str, dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Similarity (small vs large rank, and small rank's two seeds), amplification (both seed-0 adapters) and
    linear1's input directions (the small-rank seed-0 adapter) of adapters already in `lora_model`. With
    `initial` (each adapter's A before training, by key and layer), the similarity of the initial A's beside
    the trained ones, and how far training moved each A (||A - A0||_F / ||A0||_F)."""
    small, large, other = keys or [k for k, _, _ in settings.adapter_specs()]
    layers = {name: layer for name, layer in lora_model.lora_layers().items() if small in layer.lora_A}
    pairs = {"ranks": (small, large), "seeds": (small, other)}

    # "A": the paper's definition, the right singular vectors of A. "update": those of the update scale·B·A,
    # whose row space lies inside A's; they leave out what A still holds of its random initialisation that B
    # does not use (in linear1, e.g., the border pixels MNIST never inks, whose A columns never get a gradient).
    def update(layer: Any, key: str) -> LowRankUpdate:
        return LowRankUpdate(layer.lora_B[key].weight, layer.lora_A[key].weight, layer.scaling[key])

    bases: dict[str, Callable[[Any, str], torch.Tensor]] = {
        "A": lambda layer, key: layer.lora_A[key].weight,
        "update": lambda layer, key: update_input_basis(update(layer, key), layer.lora_A[key].weight.shape[0]),
    }
    similarity: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for basis, matrix in bases.items():
        similarity[basis] = {}
        for pair, (k1, k2) in pairs.items():
            entries = []
            for name, layer in layers.items():
                phi = subspace_similarity(matrix(layer, k1), matrix(layer, k2))
                summary = similarity_summary(phi, layer.in_features)
                init = None
                if initial is not None and basis == "A" and k1 in initial and k2 in initial:
                    init_phi = subspace_similarity(initial[k1][name], initial[k2][name])
                    init = {
                        key: value
                        for key, value in similarity_summary(init_phi, layer.in_features).items()
                        if key in ("top1", "top_k", "top1_in_all", "top_k_in_all")
                    }
                entries.append(
                    {
                        "layer": name,
                        "adapters": [k1, k2],
                        "ranks": list(phi.shape),
                        "phi": phi.tolist(),
                        **summary,
                        "init": init,
                        "reading": similarity_reading(name, (k1, k2), summary, init),
                    }
                )
            similarity[basis][pair] = entries
    amplifications: dict[str, dict[str, Any]] = {}
    weight_sv = {
        name: torch.linalg.svdvals(layer.base_layer.weight.detach().to("cpu", torch.float64))
        for name, layer in layers.items()
    }
    for key in (small, large):
        rows = [
            amplification(
                layer.base_layer.weight,
                update(layer, key),
                layer.lora_A[key].weight.shape[0],
                name,
                draws=settings.random_draws,
                seed=settings.seed,
                weight_singular_values=weight_sv[name],
            )
            for name, layer in layers.items()
        ]
        amplifications[key] = {"rows": [a.to_dict() for a in rows], "summary": amplification_summary(rows)}
    directions: dict[str, Any] | None = None
    first = layers.get(LAYER_NAMES[0])
    if first is not None:
        count = min(settings.directions, first.lora_A[small].weight.shape[0])
        images, sv = input_directions(update(first, small), count)
        directions = {
            "layer": LAYER_NAMES[0],
            "adapter": small,
            "images": images.tolist(),
            "singular_values": sv[: first.lora_A[small].weight.shape[0]].tolist(),
        }
    moved = {
        key: {
            name: float(
                torch.linalg.matrix_norm(layer.lora_A[key].weight.detach().cpu().double() - a0[name].cpu().double())
                / torch.linalg.matrix_norm(a0[name].cpu().double())
            )
            for name, layer in layers.items()
            if name in a0 and key in layer.lora_A
        }
        for key, a0 in (initial or {}).items()
    }
    return {
        "similarity": similarity,
        "amplification": amplifications,
        "directions": directions,
        "a_moved": moved,
    }


def _header(fmt: str, base: BaseModelRecord, settings: AnalysisSettings, device: torch.device) -> dict[str, Any]:
    return {
        "format": fmt,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_sha256": base.fingerprint,
        "settings": settings.to_dict(),
        "environment": environment(device),
    }


def analysis_dir(store: ArtifactStore) -> Path:
    return store.root / ANALYSIS_DIR


def run_analysis(
    store: ArtifactStore,
    data: MnistData,
    settings: AnalysisSettings | None = None,
    parts: Sequence[str] = PARTS,
    *,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    save: bool = True,
) -> AnalysisResult:
    """The analysis parts asked for, under the artifacts folder's writer lock; saved to <artifacts>/analysis/
    (adapters.json for similarity, amplification and directions, memory.json for memory) unless save=False,
    once all have run (a stop raises RunStopped and saves nothing). Returns the groups that ran."""
    settings = settings or AnalysisSettings()
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ConfigError(
            "part", f"choose from {', '.join(PARTS)} (or all), got {', '.join(map(str, parts)) or 'none'}"
        )
    settings.validate()
    device = resolve_device(settings.device)
    out: dict[str, Any] = {}
    with store.writing("running the analysis (adapters' subspaces, memory)"):
        base, lora_model = load_base_for_lora(store, settings.device)
        settings.validate(lora_model.model)
        before = evaluate(base.model, data.test_x, data.test_y)
        digits = (before.weakest_digit,)
        log(
            f"Task: the base model's weakest digit {digits[0]} "
            f"({before.per_digit_accuracy[digits[0]]:.2%}), with replay"
        )
        if any(p in ADAPTER_PARTS for p in parts):
            initial: dict[str, dict[str, torch.Tensor]] = {}
            sources = _obtain_adapters(store, base, lora_model, data, digits, settings, progress, stop, log, initial)
            result = {
                **_header(ADAPTERS_FORMAT, base, settings, device),
                "target_digits": list(digits),
                "adapters": sources,
                **analyze_adapters(lora_model, settings, initial=initial),
            }
            out["adapters"] = result
        if "memory" in parts:
            log(f"Memory: full fine-tuning and LoRA at ranks {', '.join(map(str, settings.memory_ranks))}")
            rows = memory_rows(base.model, data, digits, settings, progress=progress, stop=stop)
            result = {
                **_header(MEMORY_FORMAT, base, settings, device),
                "target_digits": list(digits),
                "rows": [r.to_dict() for r in rows],
                "ratio": memory_ratios(
                    rows, RATIO_RANK if RATIO_RANK in settings.memory_ranks else settings.memory_ranks[0]
                ),
            }
            out["memory"] = result
        if save:  # only once every part asked for has run: a stopped or failed run saves nothing
            files = {"adapters": ADAPTERS_FILE, "memory": MEMORY_FILE}
            for group, result in out.items():
                write_saved(analysis_dir(store) / files[group], result)
    return AnalysisResult(out.get("adapters"), out.get("memory"))


# --- the saved files' schemas (checked on reading) -------------------------------------------------------------------
class _SettingsRecord(TypedDict):
    small_rank: int
    large_rank: int
    seed: int
    other_seed: int
    steps: int
    batch_size: int
    lr: Number
    replay: Number
    precision: str
    device: str
    memory_ranks: list[int]
    memory_steps: int
    directions: int
    random_draws: NotRequired[int]


class _Header(TypedDict):
    format: str
    created: str
    base_sha256: str
    settings: _SettingsRecord
    environment: Environment
    target_digits: list[int]


class _AdapterSource(TypedDict):
    key: str
    rank: int
    seed: int
    source: str
    seconds: NotRequired[Number]
    precision_used: NotRequired[str | None]


class _InitialSimilarity(TypedDict):
    top1: Number
    top_k: Number
    top1_in_all: Number
    top_k_in_all: Number


class _Similarity(_InitialSimilarity):
    layer: str
    adapters: list[str]
    ranks: list[int]
    phi: list[list[Number]]
    k: int
    random_top1: NotRequired[Number]
    random_top_k: NotRequired[Number]
    random_top1_in_all: NotRequired[Number]
    random_top_k_in_all: NotRequired[Number]
    init: _InitialSimilarity | None
    reading: str


class _AmplificationRow(TypedDict):
    layer: str
    rank: int
    delta_norm: Number
    projected_norm: Number
    weight_top_norm: Number
    random_norm: NotRequired[Number]
    weight_norm: Number
    factor: Number | None
    position: Number | None
    emphasised: bool | None
    reading: str


class _Amplification(TypedDict):
    rows: list[_AmplificationRow]
    summary: str


class _Directions(TypedDict):
    layer: str
    adapter: str
    images: list[list[list[Number]]]
    singular_values: list[Number]


class AdaptersRecord(_Header):
    """analysis/adapters.json: the adapters' subspaces (similarity, amplification, linear1's directions)."""

    adapters: list[_AdapterSource]
    similarity: dict[str, dict[str, list[_Similarity]]]  # basis ("A", "update") -> pair ("ranks", "seeds")
    amplification: dict[str, _Amplification]  # adapter key -> its rows
    directions: _Directions | None
    a_moved: dict[str, dict[str, Number]]  # adapter key -> layer -> how far A moved from its start


class _MemoryRow(TypedDict):
    method: str
    rank: int | None
    trainable_params: int
    weights_bytes: int
    gradient_bytes: int
    adam_bytes: int
    adam_step_bytes: int
    activation_bytes: int
    batch_size: int
    peak_bytes: int | None
    peak_measure: str
    label: str
    total_bytes: int
    train_state_bytes: int


class _MemoryRatio(TypedDict):
    rank: int
    total: Number
    train_state: Number
    trainable_params: Number
    peak: Number | None


class MemoryRecord(_Header):
    """analysis/memory.json: the exact and measured memory of full fine-tuning and LoRA."""

    rows: list[_MemoryRow]
    ratio: _MemoryRatio | None


# --- reading what was saved ------------------------------------------------------------------------------------------
@dataclass
class SavedAnalysis(AnalysisResult):
    """The saved groups (None where a group was never run or cannot be read), and why any could not be read."""

    errors: list[str] = field(default_factory=list)


def _read_saved(path: Path, fmt: str, schema: type) -> dict[str, Any] | None:
    """The saved group's document; None where it was never saved."""
    if not path.is_file():
        return None
    try:
        return read_saved(path, "analysis result", fmt, schema)
    except FileNotFoundError:  # removed since the check
        return None


def load_analysis(store: ArtifactStore) -> SavedAnalysis:
    """The saved analysis results (None where a part was never run), and why any could not be read. Reads only."""
    folder = analysis_dir(store)
    found: dict[str, dict[str, Any] | None] = {}
    errors = []
    groups = (
        ("adapters", ADAPTERS_FILE, ADAPTERS_FORMAT, AdaptersRecord),
        ("memory", MEMORY_FILE, MEMORY_FORMAT, MemoryRecord),
    )
    for name, file, fmt, schema in groups:
        try:
            found[name] = _read_saved(folder / file, fmt, schema)
        except ArtifactError as exc:
            found[name] = None
            errors.append(str(exc))
    return SavedAnalysis(found["adapters"], found["memory"], errors)


__all__ = [
    "ADAPTER_PARTS",
    "PARTS",
    "Amplification",
    "LowRankUpdate",
    "AnalysisResult",
    "AnalysisSettings",
    "MemoryRow",
    "SavedAnalysis",
    "amplification",
    "amplification_summary",
    "analyze_adapters",
    "exact_step_memory",
    "find_saved_adapter",
    "initial_a",
    "input_directions",
    "load_analysis",
    "memory_ratios",
    "memory_rows",
    "run_analysis",
    "similarity_reading",
    "similarity_summary",
    "update_input_basis",
    "subspace_similarity",
    "update_svd",
]
