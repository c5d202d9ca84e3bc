"""PyTorch's thread count is one setting for the whole process: change it only here, one change at a time."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_LOCK = threading.RLock()  # two changes at once would restore each other's values


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with `count` PyTorch threads (None: as they are), then restore the previous count."""
    with _LOCK:
        previous = torch.get_num_threads()
        if count is not None:
            torch.set_num_threads(count)
        try:
            yield
        finally:
            torch.set_num_threads(previous)
