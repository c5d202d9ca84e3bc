"""Adapter names with a dot (v1.2) or equal to a PyTorch attribute (train) work end to end: fine-tuned from
the command line, renamed in the library, loaded, evaluated and inspected."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lora_core.cli import main
from lora_core.evaluate import evaluate
from lora_core.lora import LoraModel
from lora_core.store.artifacts import ArtifactStore

SMALL_FT = ["--steps", "5", "--rank", "2", "--ft-batch-size", "32", "--device", "cpu"]


@pytest.fixture
def artifacts(trained_artifacts: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "artifacts"
    shutil.copytree(trained_artifacts, dest)
    return dest


def test_rename_to_a_dotted_name_then_load_and_use(artifacts, small_mnist):
    store = ArtifactStore(artifacts)
    base = store.load_base("cpu")
    reference = LoraModel(base.model)
    store.load_adapter(reference, "small", base.fingerprint)
    reference.set_adapter("small")
    expected = evaluate(reference, small_mnist.test_x, small_mnist.test_y)

    store.rename_adapter("small", "a.v2")
    assert store.adapter_names() == ["a.v2"]
    model = LoraModel(store.load_base("cpu").model)
    record = store.load_adapter(model, "a.v2", base.fingerprint)
    assert record.metrics["name"] == "a.v2"
    model.set_adapter("a.v2")
    renamed = evaluate(model, small_mnist.test_x, small_mnist.test_y)
    assert renamed.predictions == expected.predictions  # the same adapter under its new name
    for name, layer in model.lora_layers().items():
        assert torch.equal(layer.delta_weight("a.v2"), reference.lora_layers()[name].delta_weight("small"))


def test_cli_finetune_then_evaluate_and_inspect_a_dotted_name(artifacts, tmp_path, capsys):
    name = "v1.2"
    out = tmp_path / "ft.json"
    code = main(
        ["finetune", "--digit", "3", "--name", name, *SMALL_FT, "--artifacts", str(artifacts), "--json", str(out)]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    assert json.loads(out.read_text())["adapter"]["name"] == name
    assert (artifacts / "adapters" / name / "adapter_model.safetensors").is_file()

    for command in ("evaluate", "inspect"):
        report = tmp_path / f"{command}.json"
        code = main([command, "--adapter", name, "--artifacts", str(artifacts), "--json", str(report)])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert json.loads(report.read_text())["adapter"] == name
    assert json.loads((tmp_path / "inspect.json").read_text())["recorded_check"]["status"] == "unchanged"
