import atexit
import contextlib
import os
import sys

from lora_core.cli import main

status = main()
# Skip the interpreter's teardown of the ~2,000 modules torch and torch.optim import: measured at 1-3 s
# of a command's wall time on 2 busy cores (about 1 s of CPU), more than loading MNIST and saving the
# model together, and the CUDA libraries' destructors page in another ~110 MB at exit. Nothing is left
# to clean up: every file was written atomically and closed, and the artifacts lock goes with the process.
# The output is flushed and the atexit handlers run, as a normal exit would.
for stream in (sys.stdout, sys.stderr):
    with contextlib.suppress(OSError, ValueError):  # a closed pipe: the interpreter's own exit ignores it too
        stream.flush()
atexit._run_exitfuncs()
os._exit(status)
