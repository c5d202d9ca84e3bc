"""Argument validation: every value is either accepted or refused with ConfigError, never a crash."""

from __future__ import annotations

import contextlib
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from lora_core.errors import ConfigError
from lora_core.lora import LoraConfig, validate_adapter_name
from lora_core.model import MLP
from lora_core.train import FinetuneConfig, TrainConfig

MODEL = MLP(16, 32)  # small layers: linear1 784->16, linear2 16->32, linear3 32->10
numbers = st.one_of(st.integers(-(10**6), 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans())


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

    def whole(v, lo, hi):
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    def real(v):
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    limits = {"linear1": 16, "linear2": 16, "linear3": 10}
    valid = (
        whole(digit, 0, 9)
        and whole(steps, 1, 1_000_000)
        and whole(batch, 1, 60_000)
        and real(lr)
        and 0 < lr <= 1
        and real(replay)
        and 0 <= replay <= 1
        and whole(rank, 1, 10**9)
        and real(alpha)
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


@settings(max_examples=200, deadline=None)
@given(epochs=numbers, batch=numbers, lr=numbers, seed=numbers)
def test_train_config_never_crashes(epochs, batch, lr, seed):
    with contextlib.suppress(ConfigError):
        TrainConfig(epochs=epochs, batch_size=batch, lr=lr, seed=seed, device="cpu").validate()


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
        LoraConfig(r=11, target_modules=("linear3",)),
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
