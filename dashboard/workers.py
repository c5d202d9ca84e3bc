"""Where the background runs' worker processes come from (dashboard.jobs starts them from CONTEXT).

Light on purpose (no torch, no Streamlit): the entry file calls warm() before it imports the rest of the app,
so the forkserver imports PyTorch on the other core while the server imports it for the first page.
"""

from __future__ import annotations

import multiprocessing
import threading
from multiprocessing.context import BaseContext

# what the forkserver imports once, so that every run forks with them in memory
PRELOAD = ["__main__", "dashboard.jobs", "torch._dynamo"]


def _context() -> BaseContext:
    """ "forkserver": each run forks from a small process that started clean and imported PRELOAD once, so every
    run starts in a fraction of a second instead of the 3-4 s a fresh interpreter takes to import them (and to
    import torch._dynamo lazily on its first optimizer step). "spawn" where the platform has no forkserver
    (Windows). Never "fork": it would copy the server's threads and locks into the child."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


CONTEXT = _context()
_warming = threading.Lock()
_warmed = False


def warm() -> None:
    """Start the forkserver and its imports now, in the background, once per server. The first run would
    otherwise wait for them: a study clicked on a fresh server took 8.9 s against 6.3 s for the next ones.
    Returns at once; nothing to do under "spawn"."""
    global _warmed
    with _warming:
        if _warmed or CONTEXT.get_start_method() != "forkserver":
            return
        _warmed = True
    from multiprocessing import forkserver

    threading.Thread(target=forkserver.ensure_running, name="warm-workers", daemon=True).start()
