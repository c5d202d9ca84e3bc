"""What the dashboard needs to show a task adapter as a normal adapter: its task read back from metrics.json,
a short label, the task's own test set, and the separate bases an experiment saved beside the main one."""

from __future__ import annotations

import pytest
import torch

from lora_core.data import MnistData
from lora_core.lab.tasks import parse_task, task_of, task_test_set
from lora_core.store.artifacts import ArtifactStore
from lora_core.store.bases import base_store, separate_base_label, separate_bases


@pytest.mark.parametrize(
    ("spec", "label"),
    [
        ("rotate:45", "rotate 45°"),
        ("rotate:-30", "rotate -30°"),
        ("invert", "inverted"),
        ("thick", "thick strokes"),
        ("thin", "thin strokes"),
        ("shift:3", "shift +3 px"),
        ("shift:-2,1", "shift -2,+1 px"),
        ("digits:3,5", "digits 3, 5"),
        ("unseen:8,9", "digits 8, 9 (unseen)"),
        ("weakest", "weakest digit"),
    ],
)
def test_short_labels(spec: str, label: str) -> None:
    assert parse_task(spec).short_label == label


def test_task_of_reads_the_task_an_experiment_recorded() -> None:
    task = parse_task("rotate:45")
    assert task_of({"task": task.describe()}) == task
    assert task_of({"task": {"spec": "unseen:8,9"}}) == parse_task("unseen:8,9")
    # the study's adapters record none; an unreadable task is no task rather than an error
    for metrics in (None, {}, {"task": None}, {"task": "rotate:45"}, {"task": {"spec": "spin:3"}}, {"task": {}}):
        assert task_of(metrics) is None, metrics


def test_task_test_set_transforms_the_test_images_only(mnist: MnistData) -> None:
    x, y = task_test_set(parse_task("rotate:45"), mnist)
    assert x.shape == mnist.test_x.shape and torch.equal(y, mnist.test_y)
    assert not torch.allclose(x, mnist.test_x)
    assert torch.equal(x[:5], parse_task("rotate:45").transform_normalized(mnist.test_x[:5]))
    plain_x, plain_y = task_test_set(parse_task("digits:3"), mnist)
    assert plain_x is mnist.test_x and plain_y is mnist.test_y


def test_separate_bases_lists_only_folders_holding_a_base(artifacts_copy) -> None:  # noqa: ANN001 - fixture path
    store = ArtifactStore(artifacts_copy)
    assert separate_bases(store) == {}
    (artifacts_copy / "bases" / "empty").mkdir(parents=True)  # a base being trained for the first time
    main = store.load_base("cpu")
    sub = base_store(store, "unseen-8-9")
    sub.save_base(main.model, {"left_out_digits": [8, 9]})
    found = separate_bases(store)
    assert list(found) == ["unseen-8-9"] and found["unseen-8-9"].root == sub.root
    assert separate_base_label("unseen-8-9", sub.base_meta()) == "base without digits 8, 9"
    assert separate_base_label("other", None) == "base other"
