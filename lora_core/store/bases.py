"""Separate base models: <artifacts>/bases/<name>/, each an artifacts folder of its own.

    <artifacts>/bases/unseen-8-9/base/        the base trained without digits 8 and 9
    <artifacts>/bases/unseen-8-9/adapters/    its adapters

Each has its own base/ and adapters/ and its own writer lock (taken inside the main folder's, always in that
order), so all the storage code works on it as is. The main base model is never touched by them.
"""

from __future__ import annotations

from typing import Any

from lora_core.store.artifacts import ArtifactStore

BASES_DIR = "bases"


def base_store(store: ArtifactStore, name: str) -> ArtifactStore:
    """The artifacts folder of a separate base model `name`: <artifacts>/bases/<name>."""
    return ArtifactStore(store.root / BASES_DIR / name)


def separate_bases(store: ArtifactStore) -> dict[str, ArtifactStore]:
    """The separate base models saved under <artifacts>/bases/ (unseen-8-9, ...), by name: only folders
    holding a base model. Reads only; a base still being trained for the first time is not listed yet."""
    folder = store.root / BASES_DIR
    if not folder.is_dir():
        return {}
    found = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.name.startswith("."):
            sub = base_store(store, entry.name)
            if sub.has_base():
                found[entry.name] = sub
    return found


def separate_base_label(name: str, meta: dict[str, Any] | None) -> str:
    """A separate base for people: 'base without digits 8, 9' from its model.json, else its folder name."""
    left_out = (meta or {}).get("left_out_digits")
    if isinstance(left_out, list) and left_out:
        return f"base without digits {', '.join(map(str, left_out))}"
    return f"base {name}"
