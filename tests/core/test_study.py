"""The one honest full-size run: `python -m lora_core study` with its defaults on the whole of MNIST."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_full_study_end_to_end(full_study):
    proc, artifacts, tmp_path = full_study, full_study.artifacts, full_study.artifacts.parent
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    data = full_study.result

    for key in ("base", "adapted"):
        ev = data[key]
        assert 0 < ev["accuracy"] <= 1
        assert len(ev["per_digit_accuracy"]) == 10 and all(isinstance(a, float) for a in ev["per_digit_accuracy"])
        assert len(ev["wrong_counts"]) == 10 and all(isinstance(w, int) for w in ev["wrong_counts"])
        assert sum(ev["wrong_counts"]) == round((1 - ev["accuracy"]) * 10000)
    digit = data["target_digit"]
    assert isinstance(digit, int) and 0 <= digit <= 9
    base, adapted = data["base"], data["adapted"]
    assert base["per_digit_accuracy"][digit] == min(base["per_digit_accuracy"])  # the weakest digit

    adapter = data["adapter"]
    for key in ("name", "rank", "alpha", "targets", "trainable_params", "path"):
        assert key in adapter, key
    assert adapter["name"] == f"digit-{digit}"
    assert adapter["trainable_params"] == adapter["rank"] * 6794  # defaults: all three layers
    assert adapter["targets"] == ["linear1", "linear2", "linear3"]
    folder = Path(adapter["path"])
    assert folder == artifacts / "adapters" / adapter["name"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "metrics.json",
    ]
    assert (artifacts / "base" / "model.safetensors").is_file()
    assert data["artifacts"] == str(artifacts)
    assert not (tmp_path / "default-artifacts-must-not-be-used").exists()

    assert data["base_params"] == 2_807_010
    assert data["base_weights_unchanged"] is True
    assert data["disabled_adapter_equals_base"] is True
    assert all(p["identical"] for p in data["weights_proof"]) and len(data["weights_proof"]) == 6
    recorded = data["recorded_check"]  # the hashes the fine-tune run recorded, against the checkpoint
    assert recorded["status"] == "unchanged" and recorded["passed"] is True and len(recorded["tensors"]) == 6
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["base_tensors"]["before"] == metrics["base_tensors"]["after"]
    for phase in ("train", "evaluate_base", "finetune", "verify", "total"):
        assert data["seconds"][phase] >= 0, phase
    assert data["seconds"]["train"] > 0

    # the claims of the study
    assert base["accuracy"] >= 0.97
    assert adapted["per_digit_accuracy"][digit] >= base["per_digit_accuracy"][digit] + 0.02
    assert adapted["accuracy"] >= base["accuracy"]
    assert "UNCHANGED" in proc.stdout
