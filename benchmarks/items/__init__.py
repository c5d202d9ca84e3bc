"""The items of `python -m benchmarks`, one module each (items 1 and 2 share one measurement, the
training epochs): each module has one function that measures (its raw figures go to the JSON as they
are) and one small function per item that turns those figures into table rows, judged against the
targets in report.TARGETS. What several items share is in common.py.

Every "ours" figure goes through lora_core's own code: train_base for training (fp32, bf16 and the
default precision, set through TrainConfig as the CLI sets it), LoraModel and lora_core.precision's
autocast for the LoRA step (checked against lora_core.train.finetune itself), lora_core.preprocess
for the canvas, and `python -m lora_core study` / `train` as whole processes.

To add an item: a number and title in report.ITEMS, its targets in report.TARGETS, a module here with a
measure function and a rows function, and one entry in MEASUREMENTS below.
"""

from __future__ import annotations

from collections.abc import Callable

from ..context import Context
from ..page import measure_page_vs_cli
from ..report import Row
from .cli_train import measure_cli_train, rows_8
from .common import Raw
from .dashboard_pages import measure_dashboard_pages, rows_10
from .draw_latency import measure_draw_latency, rows_5
from .inference import measure_inference, rows_4
from .lora_steps import measure_lora_steps, rows_3
from .page_study import rows_9
from .qlora import measure_qlora, rows_11
from .scaling import measure_scaling, rows_7
from .study import measure_study, rows_6
from .training import measure_training, rows_1, rows_2

Measure = Callable[[Context], Raw]
RowsOf = Callable[[Context, Raw], list[Row]]

# Each measurement (its key names it in the JSON and for --only) and the row functions of its items.
MEASUREMENTS: dict[str, tuple[Measure, tuple[RowsOf, ...]]] = {
    "1-2": (measure_training, (rows_1, rows_2)),
    "3": (measure_lora_steps, (rows_3,)),
    "4": (measure_inference, (rows_4,)),
    "5": (measure_draw_latency, (rows_5,)),
    "6": (measure_study, (rows_6,)),
    "7": (measure_scaling, (rows_7,)),
    "8": (measure_cli_train, (rows_8,)),
    "9": (measure_page_vs_cli, (rows_9,)),
    "10": (measure_dashboard_pages, (rows_10,)),
    "11": (measure_qlora, (rows_11,)),
}
