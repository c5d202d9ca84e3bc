"""Entry point of the benchmark: `python -m benchmarks [--quick] [--json PATH] [--markdown PATH]`.

See benchmarks/__init__.py for what it measures; benchmarks/RESULTS.md for the latest full run.
"""

from __future__ import annotations

import sys

from .run import main

sys.exit(main())
