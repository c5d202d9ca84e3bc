"""Checks that LoRA fine-tuning leaves the base weights alone, made so that they can fail.

Two kinds:
- Recorded: a fine-tune run hashes every base tensor (sha256 of its bytes) before its first step and
  after its last one and stores both in the adapter's metrics.json. `recorded_check` reads them back
  and ties them to the base model in use: per tensor, before == after and before == the loaded tensor.
- Live: `live_check` runs N real LoRA steps through `lora_core.train.finetune` on a throwaway adapter
  over a copy of the base, and compares every base tensor bit for bit. As the control, the same N
  steps (same batches, same seed, same loop) train the base tensors of another copy: W must move
  there, or the check shows nothing and says so.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from lora_core.data import MnistData
from lora_core.lab.run import finetune_config
from lora_core.lora import LoraModel, base_state_dict
from lora_core.lora.model import plain_copy
from lora_core.lora.nf4 import NF4
from lora_core.params import WeightCheck, weights_unchanged
from lora_core.store.artifacts import now_iso
from lora_core.threads import torch_threads
from lora_core.train import FinetuneConfig, adam, finetune, train_parameters

RECORDED_BY = "fine-tune run"


# --- hashes -----------------------------------------------------------------------------------------------
def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's bytes as float32 on the CPU (what the safetensors checkpoint holds)."""
    array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    return hashlib.sha256(memoryview(array).cast("B")).hexdigest()


def base_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base MLP's tensors under their own keys (linear1.weight, ...), whether `model` is an MLP, an
    MLP whose layers LoRA wrapped, or a LoraModel; adapter tensors are left out."""
    return base_state_dict(model.model if isinstance(model, LoraModel) else model)


def base_tensor_hashes(model: nn.Module) -> dict[str, str]:
    return {key: tensor_sha256(t) for key, t in base_tensors(model).items()}


def base_tensor_record(before: dict[str, str], after: dict[str, str]) -> dict[str, Any]:
    """What a fine-tune run stores in metrics.json under "base_tensors"."""
    return {"recorded_by": RECORDED_BY, "recorded": now_iso(), "before": before, "after": after}


def pissa_record(
    lora_model: LoraModel, name: str, trained_rank: int, residual_base: nn.Module, hashes_before: dict[str, str]
) -> dict[str, Any]:
    """What a PiSSA run stores in metrics.json under "pissa": the rank it trained and the rank saved, and the
    residual base it trained on (W - s B0 A0, in a copy) hashed against W: changed on every adapted layer's
    weight, by design. The "base_tensors" record beside it is of the base the adapter was saved for."""
    residual = base_tensors(residual_base)
    original = base_tensors(lora_model)
    return {
        "trained_rank": trained_rank,
        "saved_rank": lora_model.adapter_config(name).r,
        "residual_base": base_tensor_record(hashes_before, {k: tensor_sha256(t) for k, t in residual.items()}),
        "residual_max_abs_diff": {
            key: float((residual[key].float() - original[key].float()).abs().max()) for key in original
        },
    }


def pissa_sentence(record: dict[str, Any]) -> str:
    """One sentence on a PiSSA adapter's two bases, from its "pissa" record (true whatever the figures)."""
    residual = record["residual_base"]
    changed = sorted(k for k in residual["before"] if residual["before"][k] != residual["after"].get(k))
    largest = max(record["residual_max_abs_diff"].items(), key=lambda kv: kv[1])
    what = (
        f"its sha256 differs from W's on {', '.join(changed)} (by up to {largest[1]:.3g} on {largest[0]})"
        if changed
        else "its sha256 matched W's on every tensor"
    )
    return (
        f"Trained as PiSSA at rank {record['trained_rank']} on the residual base W - s B0 A0, a copy of the base: "
        f"{what}, as PiSSA intends; saved as plain LoRA of rank {record['saved_rank']} on the untouched W."
    )


def pissa_rows(record: dict[str, Any], digits: int = 12) -> list[dict[str, str]]:
    """Per base tensor: W's sha256, the residual base's, and their largest difference (a PiSSA record)."""
    residual = record["residual_base"]
    return [
        {
            "base tensor": key,
            "sha256 of W": before[:digits],
            "sha256 of the residual PiSSA trained on": residual["after"].get(key, "")[:digits],
            "max |W_res - W|": f"{record['residual_max_abs_diff'].get(key, 0.0):.3g}",
            "same": "yes" if residual["after"].get(key) == before else "no (by design)",
        }
        for key, before in residual["before"].items()
    ]


def quantized_sentence(record: dict[str, Any]) -> str:
    """One sentence on a QLoRA adapter's NF4 base, from its "quantized_base" record (true whatever the figures):
    which layers are 4-bit and their bytes against float32's, whether the codes and scales stayed bit-identical
    through training, and the NF4 base's own accuracy where recorded."""
    layers = record["layers"]
    nf4_bytes = sum(layer["bytes"] for layer in layers.values())
    fp32_bytes = sum(layer["fp32_bytes"] for layer in layers.values())
    codes = record["codes_sha256"]
    changed = sorted(k for k in codes["before"] if codes["before"][k] != codes["after"].get(k))
    kept = (
        f"its {len(codes['before'])} code and scale tensors are bit-identical after training (sha256)"
        if not changed and codes["before"]
        else f"its codes or scales CHANGED during training: {', '.join(changed) or 'none recorded'}"
    )
    left = "; ".join(f"{layer} stays float32 ({why})" for layer, why in record.get("fp32_layers", {}).items())
    accuracy = record.get("base_accuracy")
    alone = f"; the NF4 base alone reads {accuracy['accuracy']:.2%} of the test set" if accuracy else ""
    made = f"block {record['block_size']}" + (f", {record['implementation']}" if record.get("implementation") else "")
    if record.get("sha256"):
        made += f", sha256 {record['sha256'][:12]}"
    return (
        f"Trained on a 4-bit NF4 copy of the base ({made}): {', '.join(layers)} hold {nf4_bytes / 1e6:.2f} MB against "
        f"{fp32_bytes / 1e6:.2f} MB in float32 ({nf4_bytes / fp32_bytes:.1%}); {kept}{alone}"
        + (f"; {left}" if left else "")
        + "."
    )


def quantized_rows(record: dict[str, Any], digits: int = 12) -> list[dict[str, str]]:
    """Per stored NF4 tensor: its sha256 when the adapter was added and after training (a QLoRA record)."""
    codes = record["codes_sha256"]
    return [
        {
            "NF4 tensor": key,
            "sha256 before": before[:digits],
            "sha256 after": codes["after"].get(key, "")[:digits],
            "same": "yes" if codes["after"].get(key) == before else "NO",
        }
        for key, before in codes["before"].items()
    ]


@dataclass
class RecordedTensor:
    tensor: str
    before: str | None  # sha256 before the first fine-tuning step
    after: str | None  # sha256 after the last one
    loaded: str | None  # sha256 of this tensor in the base model in use

    @property
    def unchanged(self) -> bool:
        return self.before is not None and self.before == self.after

    @property
    def matches_loaded(self) -> bool:
        return self.before is not None and self.before == self.loaded


@dataclass
class RecordedCheck:
    """The recorded hashes of one adapter, checked against the base model in use."""

    status: str  # "unchanged", "changed", "different base" or "not recorded"
    recorded_by: str | None = None
    recorded: str | None = None  # ISO time of the after-hash
    tensors: list[RecordedTensor] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "unchanged"

    @property
    def source(self) -> str:
        if self.status == "not recorded":
            return "not recorded: this adapter was saved before fine-tune runs recorded base-tensor hashes"
        return f"recorded by the {self.recorded_by} on {_readable_time(self.recorded)}"

    @property
    def summary(self) -> str:
        n = len(self.tensors)
        if self.status == "unchanged":
            return (
                f"Base weights unchanged: all {n} base tensors hash the same before and after fine-tuning, "
                f"and match the base model in use ({self.source})."
            )
        if self.status == "changed":
            changed = ", ".join(t.tensor for t in self.tensors if not t.unchanged)
            return f"Base weights CHANGED during fine-tuning: {changed} ({self.source})."
        if self.status == "different base":
            other = ", ".join(t.tensor for t in self.tensors if not t.matches_loaded)
            return (
                f"The recorded hashes do not match the base model in use ({other}): the adapter was fine-tuned "
                f"on other weights ({self.source})."
            )
        return f"Base-tensor hashes {self.source}; fine-tune the adapter again to record them."

    def rows(self, digits: int = 12) -> list[dict[str, str]]:
        """Per tensor, for tables: the first `digits` hex digits of each hash and the two verdicts."""
        return [
            {
                "base tensor": t.tensor,
                "sha256 before": (t.before or "-")[:digits],
                "sha256 after": (t.after or "-")[:digits],
                "loaded base": (t.loaded or "-")[:digits],
                "during fine-tuning": "unchanged" if t.unchanged else "CHANGED",
                "matches the loaded base": "yes" if t.matches_loaded else "NO",
            }
            for t in self.tensors
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "passed": self.passed,
            "source": self.source,
            "recorded_by": self.recorded_by,
            "recorded": self.recorded,
            "tensors": [
                {**asdict(t), "unchanged": t.unchanged, "matches_loaded": t.matches_loaded} for t in self.tensors
            ],
        }


def recorded_check(metrics: dict[str, Any] | None, base_model: nn.Module) -> RecordedCheck:
    """Read an adapter's recorded base-tensor hashes and check them against `base_model`'s tensors."""
    record = (metrics or {}).get("base_tensors")
    if not isinstance(record, dict) or not isinstance(record.get("before"), dict):
        return RecordedCheck("not recorded")
    before, after = record["before"], record.get("after") or {}
    loaded = base_tensor_hashes(base_model)
    keys = list(dict.fromkeys([*loaded, *before]))
    rows = [RecordedTensor(k, before.get(k), after.get(k), loaded.get(k)) for k in keys]
    if not all(r.unchanged for r in rows):
        status = "changed"
    elif not all(r.matches_loaded for r in rows):
        status = "different base"
    else:
        status = "unchanged"
    return RecordedCheck(status, str(record.get("recorded_by") or "unknown"), record.get("recorded"), rows)


def _readable_time(iso: str | None) -> str:
    if not iso:
        return "an unknown date"
    return iso.replace("T", " ").replace("+00:00", " UTC")


# --- the live check ---------------------------------------------------------------------------------------
PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"
LIVE_ADAPTER = "live-check"


@dataclass
class AdapterNorms:
    layer: str
    a_before: float
    a_after: float
    b_before: float
    b_after: float
    a_changed: bool
    b_changed: bool


@dataclass
class LiveCheck:
    """The outcome of `live_check`: what the LoRA run and the control did to the base tensors."""

    steps: int
    batch_size: int
    lr: float
    rank: int
    seed: int
    lora: list[WeightCheck]  # base tensors after the LoRA steps against the snapshot
    control: list[WeightCheck]  # base tensors after the same steps of full fine-tuning
    adapter: list[AdapterNorms]
    seconds: dict[str, float]
    # the same steps as PiSSA: the base its adapter is saved for, and the residual base W - s B0 A0 it trained on
    pissa_base: list[WeightCheck] = field(default_factory=list)
    pissa_residual: list[WeightCheck] = field(default_factory=list)
    # the same steps as QLoRA: W, and the sha256 of the NF4 base's codes and scales before the first step and after
    qlora_base: list[WeightCheck] = field(default_factory=list)
    qlora_codes: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def qlora_summary(self) -> str:
        """The NF4 base through QLoRA's steps in one sentence (empty when the check ran without it)."""
        if not self.qlora_base:
            return ""
        kept = all(d.identical for d in self.qlora_base)
        before, after = self.qlora_codes.get("before", {}), self.qlora_codes.get("after", {})
        changed = sorted(k for k in before if before[k] != after.get(k))
        codes = (
            f"its NF4 base's {len(before)} code and scale tensors are bit-identical (sha256)"
            if before and not changed
            else f"its NF4 base's codes or scales CHANGED ({', '.join(changed) or 'none recorded'})"
        )
        base = "W stays bit-identical" if kept else "W CHANGED"
        return f"QLoRA, the same {self.steps} steps on a 4-bit NF4 copy of W: {base}, and {codes}."

    @property
    def pissa_summary(self) -> str:
        """PiSSA's two bases in one sentence (empty when the check ran without it)."""
        if not self.pissa_base:
            return ""
        kept = all(d.identical for d in self.pissa_base)
        moved = [d.key for d in self.pissa_residual if not d.identical]
        residual = (
            f"the residual base it trained on differs from W on {', '.join(moved)}, as PiSSA intends (W - s B0 A0)"
            if moved
            else "the residual base it trained on did not differ from W, which PiSSA should not give"
        )
        base = "W stays bit-identical" if kept else "W CHANGED"
        return f"PiSSA, the same {self.steps} steps: {base} (its adapter is saved converted onto W); {residual}."

    @property
    def base_identical(self) -> bool:
        return bool(self.lora) and all(d.identical for d in self.lora)

    @property
    def adapter_changed(self) -> bool:
        return bool(self.adapter) and all(n.a_changed and n.b_changed for n in self.adapter)

    @property
    def control_changed(self) -> bool:
        return bool(self.control) and all(not d.identical and d.max_abs_diff > 0 for d in self.control)

    @property
    def verdict(self) -> str:
        if not self.base_identical:
            return FAIL
        return PASS if self.adapter_changed and self.control_changed else INCONCLUSIVE

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    @property
    def summary(self) -> str:
        steps = f"{self.steps} steps of batch {self.batch_size}"
        if self.verdict == FAIL:
            moved = ", ".join(d.key for d in self.lora if not d.identical)
            return f"FAIL: LoRA training changed base tensors ({moved}) in {steps}."
        if self.verdict == INCONCLUSIVE:
            why = []
            if not self.adapter_changed:
                why.append("the adapter's A and B did not change")
            if not self.control_changed:
                why.append("full fine-tuning (the control) did not change every base tensor")
            return f"INCONCLUSIVE: {' and '.join(why)}, so the unchanged base shows nothing ({steps})."
        return (
            f"PASS: after {steps}, every base tensor is bit-identical while the adapter's A and B changed; "
            f"the same steps as full fine-tuning changed every base tensor."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "passed": self.passed,
            "summary": self.summary,
            "base_identical": self.base_identical,
            "adapter_changed": self.adapter_changed,
            "control_changed": self.control_changed,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "rank": self.rank,
            "seed": self.seed,
            "lora_run": [
                {"tensor": d.key, "max_abs_diff": d.max_abs_diff, "identical": d.identical} for d in self.lora
            ],
            "control_run": [
                {"tensor": d.key, "max_abs_diff": d.max_abs_diff, "changed": not d.identical} for d in self.control
            ],
            "adapter": [asdict(n) for n in self.adapter],
            "seconds": self.seconds,
            "pissa_summary": self.pissa_summary,
            "pissa_base": [
                {"tensor": d.key, "max_abs_diff": d.max_abs_diff, "identical": d.identical} for d in self.pissa_base
            ],
            "pissa_residual": [
                {"tensor": d.key, "max_abs_diff": d.max_abs_diff, "changed": not d.identical}
                for d in self.pissa_residual
            ],
            "qlora_summary": self.qlora_summary,
            "qlora_base": [
                {"tensor": d.key, "max_abs_diff": d.max_abs_diff, "identical": d.identical} for d in self.qlora_base
            ],
            "qlora_codes": self.qlora_codes,
        }


def _mark_only_base_trainable(lora_model: LoraModel) -> list[nn.Parameter]:
    """Freeze every adapter and make the base tensors trainable; return those tensors."""
    for p in lora_model.parameters():
        p.requires_grad_(False)
    base = [p for n, p in lora_model.model.named_parameters() if ".lora_" not in n]
    for p in base:
        p.requires_grad_(True)
    return base


def _full_finetune(lora_model: LoraModel, name: str, data: MnistData, config: FinetuneConfig) -> None:
    """The control: finetune's own steps (the same seeding, a fresh adapter `name`, the same loop and
    batches), but the optimizer gets the base tensors instead of A and B (the adapter stays at B = 0).
    Only the choice of trainable tensors differs from a LoRA run, so the control shows that this loop,
    these batches and this learning rate do move W when W is trainable."""
    torch.manual_seed(config.seed)  # as finetune does: dropout masks come from the global generator
    lora_model.add_adapter(name, config.lora_config(), seed=config.seed)
    train_parameters(lora_model, _mark_only_base_trainable(lora_model), data, config, phase="finetune")


def _adapter_weights(lora_model: LoraModel, name: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {
        layer_name: (layer.lora_A[name].weight.detach().clone(), layer.lora_B[name].weight.detach().clone())
        for layer_name, layer in lora_model.lora_layers().items()
        if name in layer.lora_A
    }


def live_check(
    base_model: nn.Module,
    data: MnistData,
    steps: int = 20,
    batch_size: int = 64,
    lr: float = 3e-3,
    rank: int = 8,
    seed: int = 0,
    threads: int | None = 1,
) -> LiveCheck:
    """Run `steps` real LoRA steps on a copy of the base and compare every base tensor bit for bit;
    then the same steps as full fine-tuning on another copy (the control). See the module docstring.

    `threads`: PyTorch threads for the check (None: leave as is), restored afterwards. One by default:
    on 2 cores shared with other busy processes, batch-64 steps measured 1.3 s on one thread against
    6-11 s on two (threads waiting for each other); on an idle machine two took 0.45 s.
    """
    with torch_threads(threads):
        return _live_check(base_model, data, steps, batch_size, lr, rank, seed)


@functools.cache
def _warm_up_optimizer() -> None:
    """PyTorch's first optimizer step in a process imports torch._dynamo lazily (about 1.5 s here): do it
    before the clock starts, so the check's time is the check's (the dashboard does it at server start)."""
    p = nn.Parameter(torch.zeros(1))
    p.grad = torch.ones(1)
    adam([p], 1e-3, torch.device("cpu")).step()


def _live_check(
    base_model: nn.Module, data: MnistData, steps: int, batch_size: int, lr: float, rank: int, seed: int
) -> LiveCheck:
    _warm_up_optimizer()
    started = time.perf_counter()
    config = finetune_config(
        digits=tuple(range(10)),  # plain batches from the whole training set
        rank=rank,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        replay=0.0,
        seed=seed,
    )
    config.validate()
    seconds: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):  # finetune seeds torch's global generator; keep the caller's
        lora_model = LoraModel(plain_copy(base_model))
        snapshot = {k: v.detach().clone() for k, v in lora_model.base_state_dict().items()}
        initial: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        def before_first_step(module: nn.Module, args: Any) -> None:
            if not initial:  # the first forward pass comes before the first optimizer step
                initial.update(_adapter_weights(lora_model, LIVE_ADAPTER))

        hook = lora_model.register_forward_pre_hook(before_first_step)
        t = time.perf_counter()
        try:
            finetune(lora_model, LIVE_ADAPTER, data, config)
        finally:
            hook.remove()
        seconds["lora"] = time.perf_counter() - t
        lora_diffs = weights_unchanged(snapshot, lora_model.base_state_dict())
        final = _adapter_weights(lora_model, LIVE_ADAPTER)
        norms = [
            AdapterNorms(
                layer,
                float(initial[layer][0].norm()),
                float(a.norm()),
                float(initial[layer][1].norm()),
                float(b.norm()),
                not torch.equal(initial[layer][0], a),
                not torch.equal(initial[layer][1], b),
            )
            for layer, (a, b) in final.items()
        ]

        control_model = LoraModel(plain_copy(base_model))
        t = time.perf_counter()
        _full_finetune(control_model, LIVE_ADAPTER, data, config)
        seconds["control"] = time.perf_counter() - t
        control_diffs = weights_unchanged(snapshot, control_model.base_state_dict())

        pissa_model = LoraModel(plain_copy(base_model))
        t = time.perf_counter()
        pissa_run = finetune(pissa_model, LIVE_ADAPTER, data, dataclasses.replace(config, init="pissa"))
        seconds["pissa"] = time.perf_counter() - t
        pissa_base = weights_unchanged(snapshot, pissa_model.base_state_dict())
        assert pissa_run.residual_base is not None
        pissa_residual = weights_unchanged(snapshot, base_tensors(pissa_run.residual_base))

        qlora_model = LoraModel(plain_copy(base_model))
        t = time.perf_counter()
        finetune(qlora_model, LIVE_ADAPTER, data, dataclasses.replace(config, base_precision=NF4))
        seconds["qlora"] = time.perf_counter() - t
        qlora_base = weights_unchanged(snapshot, qlora_model.base_state_dict())
        record = qlora_model.quantized_record(LIVE_ADAPTER)
        qlora_codes = record["codes_sha256"] if record else {}
    seconds["total"] = time.perf_counter() - started
    return LiveCheck(
        steps,
        batch_size,
        lr,
        rank,
        seed,
        lora_diffs,
        control_diffs,
        norms,
        seconds,
        pissa_base,
        pissa_residual,
        qlora_base,
        qlora_codes,
    )
