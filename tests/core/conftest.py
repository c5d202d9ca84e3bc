"""Fixtures for the lora_core tests, built on the shared ones in tests/conftest.py."""

from __future__ import annotations

import copy
import dataclasses
import shutil
from pathlib import Path
from types import ModuleType

import pytest
from core_helpers import import_peft

from lora_core.data import MnistData
from lora_core.model import MLP
from lora_core.store.artifacts import ArtifactStore, BaseModelRecord


@pytest.fixture(scope="session")
def peft() -> ModuleType:
    """Hugging Face PEFT, imported by the tests that need it (it imports transformers: seconds, paid only by
    the worker that runs them, not at every worker's collection)."""
    return import_peft()


@pytest.fixture(scope="session")
def small_base_record(trained_artifacts: Path) -> BaseModelRecord:
    """The small base model of `trained_artifacts` (trained on small_mnist). Do not modify it."""
    return ArtifactStore(trained_artifacts).load_base("cpu")


@pytest.fixture
def small_base(small_base_record: BaseModelRecord) -> MLP:
    """A private copy of the small base model, free to wrap and fine-tune."""
    return copy.deepcopy(small_base_record.model)


@pytest.fixture
def artifacts_copy(trained_artifacts: Path, tmp_path: Path) -> Path:
    """A writable copy of `trained_artifacts`."""
    dest = tmp_path / "artifacts"
    shutil.copytree(trained_artifacts, dest)
    return dest


@pytest.fixture(scope="session")
def tiny_mnist(mnist: MnistData) -> MnistData:
    """The first 2,000 training images (all ten digits) and the full test set."""
    return dataclasses.replace(mnist, train_x=mnist.train_images[:2000], train_y=mnist.train_y[:2000])
