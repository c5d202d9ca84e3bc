"""LoRA on an MNIST network: the names a notebook needs.

    from lora_core import FinetuneConfig, LoraModel, TrainConfig, evaluate, finetune, load_mnist, train_base

The workflows the CLI and the dashboard share (the whole study, experiments, sweeps, the paper's
analysis) are in lora_core.lab; the command line is `python -m lora_core`.
"""

# Only core modules, none of which imports the package itself: no cycles. The names are bound here, so
# `lora_core.evaluate` is the function even after the `lora_core.evaluate` module has been imported.
from lora_core.data import MnistData, load_mnist
from lora_core.evaluate import Evaluation, evaluate
from lora_core.lora import LoraConfig, LoraModel
from lora_core.model import MLP
from lora_core.store.artifacts import ArtifactStore
from lora_core.train import FinetuneConfig, TrainConfig, finetune, train_base

__all__ = [
    "MLP",
    "ArtifactStore",
    "Evaluation",
    "FinetuneConfig",
    "LoraConfig",
    "LoraModel",
    "MnistData",
    "TrainConfig",
    "evaluate",
    "finetune",
    "load_mnist",
    "train_base",
]
