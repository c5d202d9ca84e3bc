"""Where data and saved work live. Both folders are configurable by environment variable."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the repository: lora_core/store/paths.py
DATA_ENV = "LORA_DATA_DIR"
ARTIFACTS_ENV = "LORA_ARTIFACTS_DIR"


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_ENV) or PROJECT_ROOT / "data")


def default_artifacts_dir() -> Path:
    return Path(os.environ.get(ARTIFACTS_ENV) or PROJECT_ROOT / "artifacts")
