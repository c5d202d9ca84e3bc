"""Small helpers shared by the lora_core tests (imported as a plain module from tests/core)."""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import pytest
import torch

from lora_core.data import MnistData
from lora_core.lora import LoraModel
from lora_core.model import MLP


def random_mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP()


def randomize_b(lora_model: LoraModel, name: str, seed: int = 1, std: float = 0.05) -> None:
    """Give adapter `name` non-zero B matrices (a fresh adapter's B is all zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_model.lora_layers().values():
            if name in layer.lora_B:
                w = layer.lora_B[name].weight
                w.copy_(torch.randn(w.shape, generator=gen) * std)


def file_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path -> content), hidden ones included."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def manual_forward(
    base: MLP, x: torch.Tensor, deltas: dict[str, tuple[torch.Tensor, torch.Tensor, float]] | None = None
) -> torch.Tensor:
    """The MLP's logits computed by hand: per layer x W^T + b, plus (x A^T) B^T * scale where adapted."""
    deltas = deltas or {}
    h = x.reshape(-1, 784)
    for i, name in enumerate(("linear1", "linear2", "linear3")):
        layer = getattr(base, name)
        linear = layer.base_layer if hasattr(layer, "base_layer") else layer
        out = h @ linear.weight.T + linear.bias
        if name in deltas:
            a, b, scale = deltas[name]
            out = out + (h @ a.T) @ b.T * scale
        h = torch.relu(out) if i < 2 else out
    return h


def adapter_deltas(lora_model: LoraModel, name: str) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """Adapter `name`'s (A, B, scale) per adapted layer, detached."""
    return {
        layer_name: (
            layer.lora_A[name].weight.detach().clone(),
            layer.lora_B[name].weight.detach().clone(),
            layer.scaling[name],
        )
        for layer_name, layer in lora_model.lora_layers().items()
        if name in layer.lora_A
    }


def import_peft() -> ModuleType:
    """PEFT itself must read our adapters for the format to be proven: under CI=true a missing PEFT fails
    the run; elsewhere (a venv set up by `make run` only) these tests are skipped with the reason."""
    reason = "the PEFT interoperability tests need peft (pip install -r requirements-test.txt)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        try:
            return importlib.import_module("peft")
        except ImportError as exc:
            pytest.fail(f"{reason}; CI=true: .ci/run must install it ({exc})", pytrace=False)
    return pytest.importorskip("peft", reason=reason)


def first_test_images(data: MnistData, n: int = 2000) -> MnistData:
    """`data` with only its first `n` test images (for tests that evaluate many times). The training images
    stay as stored, uint8 pixels: dataclasses.replace alone would pass train_x, the whole float copy."""
    return dataclasses.replace(data, train_x=data.train_images, test_x=data.test_x[:n], test_y=data.test_y[:n])


REPO = Path(__file__).resolve().parents[2]


def run_cli_jobs(
    jobs: dict[str, list[str]], env: dict[str, str], workers: int, timeout: float
) -> dict[str, subprocess.CompletedProcess[str]]:
    """`python -m lora_core ARGS` for every job (name: ARGS) from the repository root, `workers` at a time."""

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lora_core", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(run, args) for name, args in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def run_cli_in_process(capsys: pytest.CaptureFixture[str], args: list[str]) -> subprocess.CompletedProcess[str]:
    """`python -m lora_core ARGS` as lora_core.cli.main in this process (no interpreter start, no torch import),
    its exit status and output in the shape run_cli_jobs gives them."""
    from lora_core.cli import main

    capsys.readouterr()  # drop what the test printed before
    status = main(args)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["python", "-m", "lora_core", *args], status, out, err)


def assert_one_line_error(result: subprocess.CompletedProcess[str], words: Iterable[str]) -> str:
    """A refusal: exit status 2, no traceback, one line `error: ...` on stderr holding every word; returns it."""
    detail = f"stdout={result.stdout[-2000:]!r} stderr={result.stderr[-2000:]!r}"
    assert result.returncode == 2, detail
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, detail
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), detail  # one style for every mistake
    for word in words:
        assert word in lines[0], detail
    return lines[0]


def assert_refused_writing_nothing(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    trained_artifacts: Path | None,
    args: list[str],
    words: Iterable[str],
) -> None:
    """`python -m lora_core ARGS --artifacts FOLDER`, run in this process, is refused with one line holding
    `words`, and writes nothing: not into FOLDER (a copy of `trained_artifacts`, or an empty folder where that
    is None), nor into the default artifacts folder."""
    default = tmp_path / "default-artifacts-must-not-be-used"
    monkeypatch.setenv("LORA_ARTIFACTS_DIR", str(default))
    folder = tmp_path / "refused"
    if trained_artifacts is None:
        folder.mkdir()
    else:
        shutil.copytree(trained_artifacts, folder)
    assert_one_line_error(run_cli_in_process(capsys, [*args, "--artifacts", str(folder)]), words)
    if trained_artifacts is None:
        assert list(folder.iterdir()) == []
    else:
        assert file_bytes(folder) == file_bytes(trained_artifacts)
    assert not default.exists()
