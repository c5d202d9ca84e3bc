"""The references lora_core is measured against, written the way the popular LoRA-on-MNIST tutorials
write them (not tuned): torchvision's MNIST dataset with per-sample transforms fed through a
DataLoader of batch 10, and LoRA through torch.nn.utils.parametrize, which rebuilds W + B A on every
forward pass."""

from __future__ import annotations

import gzip
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.utils.parametrize as parametrize
from torch import nn

from lora_core.data import MNIST_MD5, ensure_mnist_files, raw_dir
from lora_core.model import MLP


def torchvision_root(data_dir: Path) -> tuple[Path, Callable[[], None]]:
    """A folder torchvision's MNIST(root=..., download=False) reads, and a cleanup function.

    lora_core's data folder already has torchvision's layout (MNIST/raw/<idx files>); where the
    files are only gzipped, they are unpacked into a temporary folder of the same layout."""
    paths, _ = ensure_mnist_files(data_dir)
    if all(p.suffix != ".gz" for p in paths.values()):
        return data_dir, lambda: None
    tmp = Path(tempfile.mkdtemp(prefix="bench-mnist-"))
    folder = raw_dir(tmp)
    folder.mkdir(parents=True)
    for name in MNIST_MD5:
        src = paths[name]
        if src.suffix == ".gz":
            with gzip.open(src, "rb") as fin, open(folder / name, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            shutil.copyfile(src, folder / name)
    return tmp, lambda: shutil.rmtree(tmp, ignore_errors=True)


def tutorial_train(root: Path, max_steps: int | None = None, seed: int = 0) -> tuple[MLP, dict[str, float | int]]:
    """Train the same MLP the tutorials' way; stop after `max_steps` batches (None: one epoch).

    Returns the model and {'samples', 'steps', 'seconds', 'samples_per_s'}; the clock covers the
    whole loop, DataLoader start included, as a user running the tutorial would see it."""
    import torchvision
    from torch.utils.data import DataLoader
    from torchvision import transforms

    torch.manual_seed(seed)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    mnist_trainset = torchvision.datasets.MNIST(root=str(root), train=True, download=False, transform=transform)
    train_loader = DataLoader(mnist_trainset, batch_size=10, shuffle=True)
    net = MLP()
    cross_el = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.001)
    net.train()
    samples = steps = 0
    loss_sum = 0.0
    start = time.perf_counter()
    for x, y in train_loader:
        optimizer.zero_grad()
        output = net(x.view(-1, 28 * 28))
        loss = cross_el(output, y)
        loss_sum += loss.item()
        loss.backward()
        optimizer.step()
        samples += y.shape[0]
        steps += 1
        if max_steps is not None and steps >= max_steps:
            break
    seconds = time.perf_counter() - start
    net.eval()
    return net, {
        "samples": samples,
        "steps": steps,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
        "mean_loss": loss_sum / max(1, steps),
    }


class LoRAParametrization(nn.Module):
    """The tutorials' LoRA: a parametrization that returns W + (B A) * scale, recomputed on every
    access of layer.weight, i.e. on every forward pass."""

    def __init__(self, features_in: int, features_out: int, rank: int = 1, alpha: float = 1.0) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.zeros((rank, features_out)))
        self.lora_B = nn.Parameter(torch.zeros((features_in, rank)))
        nn.init.normal_(self.lora_A, mean=0, std=1)
        self.scale = alpha / rank
        self.enabled = True

    def forward(self, original_weights: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            return original_weights + torch.matmul(self.lora_B, self.lora_A).view(original_weights.shape) * self.scale
        return original_weights


def parametrized_lora(base: MLP, rank: int, alpha: float, targets: tuple[str, ...]) -> tuple[MLP, list[nn.Parameter]]:
    """A copy of `base` with tutorial-style LoRA on `targets`; returns it and the A, B parameters."""
    model = MLP(*base.hidden)
    model.load_state_dict(base.state_dict())
    for name in targets:
        layer = getattr(model, name)
        features_out, features_in = layer.weight.shape  # the tutorials' naming: B is (out x r)
        parametrize.register_parametrization(
            layer, "weight", LoRAParametrization(features_out, features_in, rank=rank, alpha=alpha)
        )
    params = []
    for name, p in model.named_parameters():
        trainable = "lora_" in name
        p.requires_grad_(trainable)
        if trainable:
            params.append(p)
    return model, params
