"""Argument validation: every value is either accepted or refused with ConfigError, never a crash."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from lora_core.errors import ConfigError
from lora_core.lora import LoraConfig, validate_adapter_name
from lora_core.model import MLP
from lora_core.train import FinetuneConfig, TrainConfig

MODEL = MLP(16, 32)  # small layers: linear1 784->16, linear2 16->32, linear3 32->10
numbers = st.one_of(st.integers(-(10**6), 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans())


def _whole(v, lo, hi):
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _real(v):
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@settings(max_examples=300, deadline=None)
@given(
    rank=numbers,
    alpha=numbers,
    lr=numbers,
    replay=numbers,
    steps=numbers,
    batch=numbers,
    digit=numbers,
    targets=st.lists(st.sampled_from(["linear1", "linear2", "linear3", "relu", "linear4"]), max_size=4),
)
def test_finetune_config_accepts_exactly_the_valid_values(rank, alpha, lr, replay, steps, batch, digit, targets):
    cfg = FinetuneConfig(
        digits=(digit,),
        rank=rank,
        alpha=alpha,
        lr=lr,
        replay=replay,
        steps=steps,
        batch_size=batch,
        targets=tuple(targets),
    )

    limits = {"linear1": 16, "linear2": 16, "linear3": 10}
    valid = (
        _whole(digit, 0, 9)
        and _whole(steps, 1, 1_000_000)
        and _whole(batch, 1, 60_000)
        and _real(lr)
        and 0 < lr <= 1
        and _real(replay)
        and 0 <= replay <= 1
        and _whole(rank, 1, 10**9)
        and _real(alpha)
        and alpha > 0
        and len(targets) > 0
        and len(set(targets)) == len(targets)
        and all(t in limits for t in targets)
        and all(rank <= limits[t] for t in targets)
    )
    try:
        cfg.validate(MODEL)
    except ConfigError as exc:
        assert not valid, f"valid config refused: {exc}"
        assert str(exc) and exc.field
    else:
        assert valid, f"invalid config accepted: {cfg}"


VALID_TRAIN = {
    "epochs": st.integers(1, 1000),
    "batch_size": st.integers(1, 60_000),
    "lr": st.floats(0, 1, exclude_min=True) | st.just(1),
    "lr_schedule": st.sampled_from(["linear", "constant"]),
    "seed": st.integers(0, 2**63 - 1),
    "device": st.sampled_from(["auto", "cpu"]),
    "hidden": st.tuples(st.integers(1, 16_384), st.integers(1, 16_384)),
}
ANY_TRAIN = {
    "epochs": numbers,
    "batch_size": numbers,
    "lr": numbers | st.sampled_from([0, 0.0, 1.0000001, -1e-9]),
    "lr_schedule": st.sampled_from(["linear", "constant", "cosine", ""]),
    "seed": numbers,
    "device": st.sampled_from(["auto", "cpu", "gpu", ""]),
    "hidden": st.lists(numbers | st.integers(1, 16_384), max_size=3).map(tuple),
}
# A valid configuration with at most two fields replaced by anything: each check is exercised on its own
# (with every field arbitrary, nearly every example would be wrong in several fields at once).
train_configs = st.fixed_dictionaries(VALID_TRAIN).flatmap(
    lambda valid: st.lists(st.sampled_from(sorted(ANY_TRAIN)), max_size=2, unique=True).flatmap(
        lambda fields: st.fixed_dictionaries({f: ANY_TRAIN[f] for f in fields}).map(lambda bad: {**valid, **bad})
    )
)


@settings(max_examples=400, deadline=None)
@given(values=train_configs)
def test_train_config_accepts_exactly_the_valid_values(values):
    cfg = TrainConfig(**values)
    epochs, batch, lr, seed, hidden = (values[k] for k in ("epochs", "batch_size", "lr", "seed", "hidden"))
    # which fields are invalid, decided here independently of the library's checks
    invalid = {
        "epochs": not _whole(epochs, 1, 1000),
        "batch_size": not _whole(batch, 1, 60_000),
        "lr": not (_real(lr) and 0 < lr <= 1),
        "lr_schedule": values["lr_schedule"] not in ("linear", "constant"),
        "seed": not _whole(seed, 0, 2**63 - 1),
        "device": values["device"] not in ("auto", "cpu"),
        "hidden": len(hidden) != 2 or not all(_whole(h, 1, 16_384) for h in hidden),
    }
    try:
        cfg.validate()
    except ConfigError as exc:
        assert any(invalid.values()), f"valid config refused: {exc}"
        assert invalid.get(exc.field), f"refused for {exc.field!r}, which is valid; invalid: {invalid}"
        assert str(exc)
    else:
        assert not any(invalid.values()), f"invalid config accepted: {cfg}"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_adapter_names_are_safe_folder_names(name: str) -> None:
    try:
        validate_adapter_name(name)
    except ConfigError:
        return
    assert name and "/" not in name and "\\" not in name and ".." not in name and not name.startswith(".")
    assert len(name) <= 64 and name.isascii()


def test_lora_config_limits() -> None:
    LoraConfig(r=10, target_modules=("linear3",)).validate(MODEL)
    for bad in (
        LoraConfig(r=0),
        LoraConfig(r=11, target_modules=("linear3",), rank_pattern={"linear3": 11}),  # plain r=11 is capped
        LoraConfig(alpha=0),
        LoraConfig(alpha=float("nan")),
        LoraConfig(target_modules=()),
        LoraConfig(dropout=1.0),
    ):
        try:
            bad.validate(MODEL)
        except ConfigError:
            continue
        raise AssertionError(f"accepted {bad}")
