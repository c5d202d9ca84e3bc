"""Your own handwriting: a collection of labelled drawings and a personal adapter fine-tuned on them.

    <artifacts>/mydigits/labels.json         {"version": 1, "digits": [{"id", "label", "created", "source", "writer"?}]}
    <artifacts>/mydigits/images/<id>.png     28x28 gray, white ink on black: what the model sees (prepare_digit)
    <artifacts>/mydigits/originals/<id>.png  the drawing as drawn (RGBA or gray, at most MAX_ORIGINAL_SIDE a side)
    <artifacts>/mydigits/result.json         the last personal adapter's evaluation (PersonalResult)

labels.json is the collection: a picture counts only once labels.json lists it. Every file is written
atomically and labels.json last, under the artifacts folder's writer lock, so a failed write leaves the
collection as it was (at worst a picture nobody lists, removed by the next writer). Reading never unpickles:
PNG through Pillow, JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import re
import secrets
import stat
import threading
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lora_core.data import MEAN, STD, MnistData, as_inputs
from lora_core.errors import ArtifactError, ConfigError, ImageError, LoraCoreError
from lora_core.evaluate import evaluate, predict
from lora_core.lab.proof import base_tensor_hashes, base_tensor_record
from lora_core.lora import LoraConfig, LoraModel
from lora_core.model import LAYER_NAMES
from lora_core.precision import resolve_precision
from lora_core.store.artifacts import ArtifactStore
from lora_core.store.fileio import atomic_write_bytes, atomic_write_json
from lora_core.store.results import read_saved, write_saved
from lora_core.train import ProgressCallback, adam, check_int, optimise, resolve_device

MIN_PER_DIGIT = 3  # at least one held out and two to train on, for every digit
PERSONAL_ADAPTER = "personal"
FOLDER = "mydigits"
LABELS = "labels.json"
RESULT = "result.json"
IMAGES = "images"
ORIGINALS = "originals"
FORMAT_VERSION = 1
SOURCES = ("draw", "guided", "import", "cli")
SIZE = 28

MAX_DIGITS = 2000  # the most drawings a collection (and an imported zip) holds
MAX_ORIGINAL_SIDE = 1024  # originals larger than this are scaled down on add, refused on import
MAX_PNG_BYTES = 4 * 2**20  # one picture in a zip
MAX_LABELS_BYTES = 2 * 2**20
MAX_ZIP_BYTES = 64 * 2**20  # all of a zip's files together, uncompressed
MAX_ZIP_ENTRIES = 2 * MAX_DIGITS + 3  # each drawing's two pictures, labels.json, the two folder entries
MAX_WRITER_CHARS = 64
ID_PATTERN = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,79}")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class MyDigitsImportError(LoraCoreError):
    """A zip offered for import was refused; nothing was changed."""


class NotEnoughDigitsError(LoraCoreError):
    """Too few drawings of some digits to train and evaluate a personal adapter; `missing`: digit -> how many more."""

    def __init__(self, missing: dict[int, int]) -> None:
        self.missing = dict(sorted(missing.items()))
        super().__init__(f"not enough drawings to train a personal adapter: {describe_missing(self.missing)}")


def describe_missing(missing: dict[int, int]) -> str:
    """{4: 2, 7: 1} -> 'draw 2 more 4s and 1 more 7'."""
    parts = [f"{n} more {d}{'s' if n > 1 else ''}" for d, n in sorted(missing.items()) if n > 0]
    if not parts:
        return "nothing more is needed"
    return "draw " + (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0])


@dataclass(frozen=True)
class MyDigit:
    id: str  # safe file stem, e.g. "4-20261129T142233Z-ab12cd"
    label: int  # 0..9
    created: str  # ISO time, UTC
    source: str  # "draw", "guided", "import", "cli"
    writer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "label": self.label, "created": self.created, "source": self.source}
        if self.writer is not None:
            d["writer"] = self.writer
        return d


def _check_label(label: Any) -> int:
    if isinstance(label, bool) or not isinstance(label, int | np.integer) or not 0 <= int(label) <= 9:
        raise ConfigError("label", f"must be a digit from 0 to 9, got {label!r}")
    return int(label)


def _entry_from(raw: Any, where: str) -> MyDigit:
    """One labels.json entry, checked field by field; ValueError says what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: each entry must be an object, found {type(raw).__name__}")
    digit_id, label = raw.get("id"), raw.get("label")
    if not isinstance(digit_id, str) or not ID_PATTERN.fullmatch(digit_id):
        raise ValueError(f"{where}: id {digit_id!r} is not a plain name (letters, digits, '-', '_'; at most 80)")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
        raise ValueError(f"{where}: {digit_id}: label must be a digit from 0 to 9, got {label!r}")
    created, source, writer = raw.get("created"), raw.get("source"), raw.get("writer")
    if not isinstance(created, str) or len(created) > 64:
        raise ValueError(f"{where}: {digit_id}: 'created' must be a time such as 2026-11-29T14:22:33+00:00")
    if source not in SOURCES:
        raise ValueError(f"{where}: {digit_id}: source must be one of {', '.join(SOURCES)}, got {source!r}")
    if writer is not None and (not isinstance(writer, str) or len(writer) > MAX_WRITER_CHARS):
        raise ValueError(f"{where}: {digit_id}: writer must be a name of at most {MAX_WRITER_CHARS} characters")
    return MyDigit(digit_id, label, created, source, writer)


def _parse_labels(data: bytes, where: str) -> list[MyDigit]:
    """labels.json's entries; ValueError with a specific message when the file is broken."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("digits"), list):
        raise ValueError(f"{where} must be an object with a list 'digits'")
    if doc.get("version") != FORMAT_VERSION:
        raise ValueError(f"{where}: version is {doc.get('version')!r}, this program reads version {FORMAT_VERSION}")
    if len(doc["digits"]) > MAX_DIGITS:
        raise ValueError(f"{where} lists {len(doc['digits'])} drawings, more than the {MAX_DIGITS} allowed")
    digits = [_entry_from(raw, where) for raw in doc["digits"]]
    seen: set[str] = set()
    for d in digits:
        if d.id in seen:
            raise ValueError(f"{where} lists {d.id} twice")
        seen.add(d.id)
    return digits


def _sorted(digits: Iterable[MyDigit]) -> list[MyDigit]:
    return sorted(digits, key=lambda d: (d.label, d.created, d.id))


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _as_uint8(drawing: np.ndarray) -> np.ndarray:
    """The drawing as uint8 (floats in 0..1 scaled up), HxW or HxWx3/4, at most MAX_ORIGINAL_SIDE a side."""
    from PIL import Image

    a = np.asarray(drawing)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.dtype != np.uint8:
        a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if a.max(initial=0.0) <= 1.0:
            a = a * 255.0
        a = np.rint(a.clip(0.0, 255.0)).astype(np.uint8)
    if max(a.shape[:2]) > MAX_ORIGINAL_SIDE:
        img = Image.fromarray(a)
        img.thumbnail((MAX_ORIGINAL_SIDE, MAX_ORIGINAL_SIDE))
        a = np.asarray(img)
    return np.ascontiguousarray(a)


def _decode_png(data: bytes, where: str, *, prepared: bool) -> np.ndarray:
    """A PNG's pixels; ValueError when it is no PNG, too large, or (prepared) not 28x28 gray."""
    from PIL import Image, UnidentifiedImageError

    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{where} is not a PNG picture")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            if prepared and (img.size != (SIZE, SIZE) or img.mode != "L"):
                raise ValueError(f"{where} must be a {SIZE}x{SIZE} gray picture, found {img.size} {img.mode}")
            if max(img.size) > MAX_ORIGINAL_SIDE:
                raise ValueError(
                    f"{where} is {img.size[0]}x{img.size[1]}, larger than {MAX_ORIGINAL_SIDE}x{MAX_ORIGINAL_SIDE}"
                )
            if img.mode not in ("L", "LA", "RGB", "RGBA"):
                raise ValueError(f"{where} has colour mode {img.mode}; expected gray, RGB or RGBA")
            img.load()
            return np.asarray(img).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{where} is not a readable PNG picture ({exc})") from None


def _new_id(label: int) -> str:
    return f"{label}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


class MyDigits:
    """The labelled drawings of one artifacts folder. Writes hold the folder's writer lock."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self.folder = store.root / FOLDER

    # --- reading ---------------------------------------------------------------------------------
    def list(self) -> list[MyDigit]:
        """Every drawing, sorted by label, then by when it was added."""
        path = self.folder / LABELS
        try:
            with path.open("rb") as fh:
                data = fh.read(MAX_LABELS_BYTES + 1)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ArtifactError(f"{path} cannot be read ({exc})") from exc
        if len(data) > MAX_LABELS_BYTES:
            raise ArtifactError(f"{path} is larger than {MAX_LABELS_BYTES // 2**20} MiB")
        try:
            return _sorted(_parse_labels(data, str(path)))
        except ValueError as exc:
            raise ArtifactError(f"{exc}; fix or delete the file to start a new collection") from None

    def counts(self) -> dict[int, int]:
        counts = dict.fromkeys(range(10), 0)
        for d in self.list():
            counts[d.label] += 1
        return counts

    def get(self, digit_id: str) -> MyDigit:
        for d in self.list():
            if d.id == digit_id:
                return d
        raise ArtifactError(f"no drawing {digit_id!r} in {self.folder} (python -m lora_core mydigits list shows them)")

    def _read_png(self, digit_id: str, sub: str, prepared: bool) -> np.ndarray:
        self.get(digit_id)  # an unknown id (or a path trick) never becomes a file name
        path = self.folder / sub / f"{digit_id}.png"
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ArtifactError(f"{path} cannot be read ({exc})") from exc
        try:
            return _decode_png(data, str(path), prepared=prepared)
        except ValueError as exc:
            raise ArtifactError(str(exc)) from None

    def pixels(self, digit_id: str) -> np.ndarray:
        """The (28, 28) uint8 picture the model sees."""
        return self._read_png(digit_id, IMAGES, prepared=True)

    def original(self, digit_id: str) -> np.ndarray:
        """The drawing as it was drawn (HxW gray or HxWx3/4)."""
        return self._read_png(digit_id, ORIGINALS, prepared=False)

    # --- writing ---------------------------------------------------------------------------------
    def _write_labels(self, digits: Iterable[MyDigit]) -> None:
        doc = {"version": FORMAT_VERSION, "digits": [d.to_dict() for d in _sorted(digits)]}
        atomic_write_json(self.folder / LABELS, doc)

    def _drop_unlisted(self, keep: set[str]) -> None:
        """Under the lock: remove pictures no entry lists (left by a write that failed before labels.json)
        and temporary files of a killed writer."""
        for leftover in self.folder.glob(".*.tmp"):  # labels.json or result.json half written
            leftover.unlink(missing_ok=True)
        for sub in (IMAGES, ORIGINALS):
            folder = self.folder / sub
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.name.startswith(".") or (path.suffix == ".png" and path.stem not in keep):
                    path.unlink(missing_ok=True)

    def add(self, drawing: np.ndarray, label: int, source: str = "draw", writer: str | None = None) -> MyDigit:
        """Prepare the drawing like MNIST (preprocess.prepare_digit) and add it with its label."""
        from lora_core.preprocess import prepare_digit

        label = _check_label(label)
        if source not in SOURCES:
            raise ConfigError("source", f"must be one of {', '.join(SOURCES)}, got {source!r}")
        if writer is not None and (not isinstance(writer, str) or len(writer) > MAX_WRITER_CHARS):
            raise ConfigError("writer", f"must be a name of at most {MAX_WRITER_CHARS} characters")
        prepared = prepare_digit(drawing)
        if prepared is None:
            raise ImageError("nothing is drawn: the picture is empty or has almost no ink")
        pixels = np.rint(prepared.pixels * 255.0).clip(0, 255).astype(np.uint8)
        original = _as_uint8(drawing)
        digit = MyDigit(_new_id(label), label, datetime.now(UTC).isoformat(timespec="seconds"), source, writer)
        with self.store.writing("adding to my digits"):
            current = self.list()
            known = {d.id for d in current}
            self._drop_unlisted(known)
            while digit.id in known:  # never write over another drawing's files
                digit = dataclasses.replace(digit, id=_new_id(label))
            if len(current) >= MAX_DIGITS:
                raise ConfigError("mydigits", f"the collection holds {MAX_DIGITS} drawings already; delete some first")
            atomic_write_bytes(self.folder / IMAGES / f"{digit.id}.png", _png_bytes(pixels))
            atomic_write_bytes(self.folder / ORIGINALS / f"{digit.id}.png", _png_bytes(original))
            self._write_labels([*current, digit])
        return digit

    def delete(self, digit_id: str) -> None:
        with self.store.writing("deleting from my digits"):
            current = self.list()
            if not any(d.id == digit_id for d in current):
                raise ArtifactError(f"no drawing {digit_id!r} in {self.folder}")
            kept = [d for d in current if d.id != digit_id]
            self._write_labels(kept)  # the drawing is gone from here on; its files follow
            for sub in (IMAGES, ORIGINALS):
                (self.folder / sub / f"{digit_id}.png").unlink(missing_ok=True)

    # --- zip ------------------------------------------------------------------------------------
    def export_zip(self) -> bytes:
        """labels.json, images/<id>.png and originals/<id>.png of every drawing, as a zip archive."""
        digits = self.list()
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(
                LABELS, json.dumps({"version": FORMAT_VERSION, "digits": [d.to_dict() for d in digits]}, indent=2)
            )
            for d in digits:
                for sub in (IMAGES, ORIGINALS):
                    path = self.folder / sub / f"{d.id}.png"
                    try:
                        zf.writestr(f"{sub}/{d.id}.png", path.read_bytes())
                    except OSError as exc:
                        raise ArtifactError(f"{path} cannot be read ({exc})") from exc
        return buffer.getvalue()

    def import_zip(self, data: bytes) -> list[MyDigit]:
        """Add the drawings of an exported zip. Every entry is checked first; on any problem
        MyDigitsImportError says what is wrong and nothing is changed. Drawings already in the
        collection (same id) are skipped; the others are returned."""
        entries, files = _read_zip(data)
        with self.store.writing("importing my digits"):
            current = self.list()
            known = {d.id for d in current}
            new = [dataclasses.replace(d, source="import") for d in entries if d.id not in known]
            if len(current) + len(new) > MAX_DIGITS:
                raise MyDigitsImportError(
                    f"the collection holds {len(current)} drawings and the zip adds {len(new)}: more than the "
                    f"{MAX_DIGITS} allowed; delete some first"
                )
            try:
                for d in new:
                    for sub in (IMAGES, ORIGINALS):
                        atomic_write_bytes(self.folder / sub / f"{d.id}.png", files[f"{sub}/{d.id}.png"])
                self._write_labels([*current, *new])
            except BaseException:
                self._drop_unlisted(known)  # the pictures written so far: labels.json still lists none of them
                raise
        return _sorted(new)


def _read_zip(data: bytes) -> tuple[list[MyDigit], dict[str, bytes]]:
    """Check an exported zip completely: its names, sizes, counts, labels.json and every picture."""
    if not isinstance(data, bytes | bytearray) or len(data) == 0:
        raise MyDigitsImportError("the file is empty; choose a zip exported from my digits")
    if len(data) > MAX_ZIP_BYTES:
        raise MyDigitsImportError(f"the zip is {len(data) / 2**20:.1f} MiB, more than {MAX_ZIP_BYTES // 2**20} MiB")
    try:
        zf = zipfile.ZipFile(io.BytesIO(bytes(data)))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise MyDigitsImportError(f"not a zip archive ({exc})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            raise MyDigitsImportError(f"the zip holds {len(infos)} entries, more than the {MAX_ZIP_ENTRIES} allowed")
        names: set[str] = set()
        total = 0
        for info in infos:
            name = info.filename
            if name in names:
                raise MyDigitsImportError(f"the zip holds {name!r} twice")
            names.add(name)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise MyDigitsImportError(f"{name!r} is a symbolic link; only pictures and labels.json are allowed")
            if info.flag_bits & 0x1:
                raise MyDigitsImportError(f"{name!r} is encrypted")
            if info.is_dir():
                if name not in (f"{IMAGES}/", f"{ORIGINALS}/"):
                    raise MyDigitsImportError(f"unexpected folder {name!r}; the zip holds only images/ and originals/")
                continue
            if name != LABELS and not _picture_name(name):
                raise MyDigitsImportError(
                    f"unexpected entry {name!r}: the zip may hold only labels.json, images/<id>.png and "
                    "originals/<id>.png (plain names, no folders above, no '..')"
                )
            limit = MAX_LABELS_BYTES if name == LABELS else MAX_PNG_BYTES
            if info.file_size > limit:
                raise MyDigitsImportError(f"{name!r} is {info.file_size:,} bytes, more than the {limit:,} allowed")
            total += info.file_size
            if total > MAX_ZIP_BYTES:
                raise MyDigitsImportError(f"the zip's files add up to more than {MAX_ZIP_BYTES // 2**20} MiB")
        if LABELS not in names:
            raise MyDigitsImportError("the zip has no labels.json; choose a zip exported from my digits")
        files: dict[str, bytes] = {}
        for info in infos:
            if info.is_dir():
                continue
            limit = MAX_LABELS_BYTES if info.filename == LABELS else MAX_PNG_BYTES
            try:
                with zf.open(info) as fh:
                    content = fh.read(limit + 1)  # the declared size may lie: never read past the limit
            except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, RuntimeError, EOFError) as exc:
                raise MyDigitsImportError(f"{info.filename!r} cannot be read from the zip ({exc})") from None
            if len(content) > limit:
                raise MyDigitsImportError(f"{info.filename!r} is larger than the {limit:,} bytes allowed")
            files[info.filename] = content
    try:
        entries = _parse_labels(files[LABELS], "labels.json")
    except ValueError as exc:
        raise MyDigitsImportError(str(exc)) from None
    listed = {f"{sub}/{d.id}.png" for d in entries for sub in (IMAGES, ORIGINALS)}
    pictures = set(files) - {LABELS}
    if pictures - listed:
        extra = sorted(pictures - listed)
        raise MyDigitsImportError(f"{extra[0]!r} is not listed in labels.json ({len(extra)} such pictures)")
    if listed - pictures:
        lacking = sorted(listed - pictures)
        raise MyDigitsImportError(f"labels.json lists {lacking[0]!r}, which the zip lacks ({len(lacking)} missing)")
    for name in sorted(pictures):
        try:
            _decode_png(files[name], name, prepared=name.startswith(IMAGES + "/"))
        except ValueError as exc:
            raise MyDigitsImportError(str(exc)) from None
    return entries, files


def _picture_name(name: str) -> bool:
    folder, _, file_name = name.partition("/")
    stem = file_name.removesuffix(".png")
    return folder in (IMAGES, ORIGINALS) and file_name.endswith(".png") and bool(ID_PATTERN.fullmatch(stem))


# --- the held-out split ------------------------------------------------------------------------------
def split(digits: list[MyDigit], seed: int = 0, holdout_every: int = 5) -> tuple[list[MyDigit], list[MyDigit]]:
    """(train, held out): per digit, one in `holdout_every` held out (at least one where there are two or
    more), chosen by a hash of the seed and each drawing's id, so the same drawing stays on the same side
    whatever order the collection is listed in."""
    check_int("holdout_every", holdout_every, 2, 1000)
    train: list[MyDigit] = []
    heldout: list[MyDigit] = []
    for label in range(10):
        group = [d for d in digits if d.label == label]
        group.sort(key=lambda d: hashlib.sha256(f"{seed}:{d.id}".encode()).hexdigest())
        n_out = max(1, len(group) // holdout_every) if len(group) >= 2 else 0
        heldout += group[:n_out]
        train += group[n_out:]
    return _sorted(train), _sorted(heldout)


def missing(counts: dict[int, int], min_per_digit: int = MIN_PER_DIGIT) -> dict[int, int]:
    """Digit -> how many more drawings it needs (only the digits that need some)."""
    return {d: min_per_digit - counts.get(d, 0) for d in range(10) if counts.get(d, 0) < min_per_digit}


# --- the personal adapter --------------------------------------------------------------------------
@dataclass
class PersonalResult:
    adapter: str
    trained: int
    heldout: int
    heldout_rows: list[dict[str, Any]]  # {"id", "label", "base": prediction, "personal": prediction}
    base_heldout_accuracy: float
    personal_heldout_accuracy: float
    base_errors: int
    personal_errors: int
    mnist_before: float  # MNIST test accuracy of the base model
    mnist_after: float  # ... with the personal adapter applied
    seconds: float  # the training loop
    config: dict[str, Any] = field(default_factory=dict)
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PersonalResult:
        names = {f.name for f in dataclasses.fields(cls)}
        missing_keys = sorted(n for n in names - set(data) if n not in ("config", "created"))
        if missing_keys:
            raise ValueError(f"missing {', '.join(missing_keys)}")
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class PersonalSettings:
    """How the personal adapter is trained. Each batch: `batch_size * (1 - replay)` of your drawings, each
    moved a little at random (augment), and the rest real MNIST training digits, so it learns your hand
    without forgetting MNIST. Measured with benchmarks/personal.py (3 synthetic writers the base misreads,
    10 drawings of each digit; MNIST change in points / mistakes on 100 fresh drawings of the writer):
    150 steps, lr 3e-3, replay 0.5: -0.30 to -0.45 / 0; 80 steps: -0.6 to -0.7 (more steps let the replay
    repair MNIST); replay 0.75: -0.2 to -0.35; rank 4 or distilling the base's outputs on the replay: no
    better; 300 steps, lr 2e-3, replay 0.875: +0.01 to +0.09 / 0. Without augmentation MNIST suffers less
    at replay 0.5, but real hands vary more than one synthetic writer, so it stays on."""

    rank: int = 8
    alpha: float = 16.0
    steps: int = 300
    batch_size: int = 128
    lr: float = 2e-3
    replay: float = 0.875
    augment: bool = True
    seed: int = 0
    holdout_every: int = 5
    min_per_digit: int = MIN_PER_DIGIT
    device: str = "auto"
    precision: str = "auto"

    def validate(self) -> None:
        from lora_core.train import FinetuneConfig

        check_int("holdout_every", self.holdout_every, 2, 1000)
        check_int("min_per_digit", self.min_per_digit, 2, MAX_DIGITS)
        FinetuneConfig(
            digits=tuple(range(10)),
            rank=self.rank,
            alpha=self.alpha,
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            replay=self.replay,
            seed=self.seed,
            device=self.device,
            precision=self.precision,
        ).validate()
        if self.replay >= 1.0:
            raise ConfigError("replay", "must be below 1: some of each batch must be your own drawings")

    def lora_config(self) -> LoraConfig:
        return LoraConfig(r=self.rank, alpha=self.alpha, target_modules=LAYER_NAMES)


def augment_pixels(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A small random affine move per picture ((N, 28, 28) floats in 0..1): rotation up to 12 degrees,
    scale 0.9-1.1, shear up to 0.15, shift up to 2 pixels. One batched affine_grid/grid_sample instead of
    a transform per picture: a few dozen pictures every step would otherwise cost more than the step."""
    n = pixels.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (high - low) + low

    angle = uniform(-12.0, 12.0) * math.pi / 180.0
    scale = uniform(0.9, 1.1)
    shear = uniform(-0.15, 0.15)
    shift = uniform(-2.0, 2.0) * 2.0 / SIZE, uniform(-2.0, 2.0) * 2.0 / SIZE
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin + shear * cos, shift[0]], 1), torch.stack([sin, cos + shear * sin, shift[1]], 1)], 1
    )
    grid = F.affine_grid(theta.to(pixels.device), [n, 1, SIZE, SIZE], align_corners=False)
    return F.grid_sample(pixels[:, None], grid, align_corners=False, padding_mode="zeros")[:, 0]


def _inputs(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 28, 28) floats in 0..1 -> the network's normalised (N, 784) inputs."""
    return (pixels.reshape(-1, SIZE * SIZE) - MEAN) / STD


_DEFAULTS = PersonalSettings()


def train_personal(
    store: ArtifactStore,
    data: MnistData,
    *,
    rank: int = _DEFAULTS.rank,
    alpha: float = _DEFAULTS.alpha,
    steps: int = _DEFAULTS.steps,
    batch_size: int = _DEFAULTS.batch_size,
    lr: float = _DEFAULTS.lr,
    replay: float = _DEFAULTS.replay,
    augment: bool = _DEFAULTS.augment,
    seed: int = _DEFAULTS.seed,
    holdout_every: int = _DEFAULTS.holdout_every,
    min_per_digit: int = _DEFAULTS.min_per_digit,
    device: str = _DEFAULTS.device,
    precision: str = _DEFAULTS.precision,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
) -> PersonalResult:
    """Fine-tune the personal adapter on the training split of my digits (with MNIST replay), evaluate
    base and adapter on the held-out drawings and on MNIST's test set, and save adapter and result.

    Raises NotEnoughDigitsError (and trains nothing) while some digit has fewer than min_per_digit drawings.
    """
    settings = PersonalSettings(
        rank, alpha, steps, batch_size, lr, replay, augment, seed, holdout_every, min_per_digit, device, precision
    )
    settings.validate()
    collection = MyDigits(store)
    digits = collection.list()
    counts = dict.fromkeys(range(10), 0)
    for d in digits:
        counts[d.label] += 1
    lacking = missing(counts, settings.min_per_digit)
    if lacking:
        raise NotEnoughDigitsError(lacking)
    check_personal_name_free(store)  # before training: the answer is known already
    train_set, heldout = split(digits, settings.seed, settings.holdout_every)
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    base = store.load_base(device)
    lora_model = LoraModel(base.model)

    def stack(items: list[MyDigit]) -> torch.Tensor:
        return torch.from_numpy(np.stack([collection.pixels(d.id) for d in items])).float().div_(255.0).to(device)

    train_pixels, heldout_pixels = stack(train_set), stack(heldout)
    train_labels = torch.tensor([d.label for d in train_set], device=device)
    heldout_labels = torch.tensor([d.label for d in heldout])
    with lora_model.adapters_disabled():
        base_heldout = predict(lora_model, _inputs(heldout_pixels)).argmax(1)
        mnist_before = evaluate(lora_model, data.test_x, data.test_y)

    torch.manual_seed(settings.seed)
    lora_model.add_adapter(PERSONAL_ADAPTER, settings.lora_config(), seed=settings.seed)
    hashes_before = base_tensor_hashes(lora_model)
    params = lora_model.mark_only_lora_trainable(PERSONAL_ADAPTER)
    optimizer = adam(params, settings.lr, device)
    generator = torch.Generator().manual_seed(settings.seed)
    mnist_images, mnist_y = data.train_images.to(device), data.train_y.to(device)
    n_replay = min(round(settings.batch_size * settings.replay), settings.batch_size - 1)  # >= 1 of yours
    n_own = settings.batch_size - n_replay

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        own = torch.randint(train_pixels.shape[0], (n_own,), generator=generator).to(device)
        own_pixels = train_pixels[own]
        if settings.augment:
            own_pixels = augment_pixels(own_pixels, generator)
        x, y = _inputs(own_pixels), train_labels[own]
        if n_replay:
            idx = torch.randint(mnist_images.shape[0], (n_replay,), generator=generator).to(device)
            x, y = torch.cat([x, as_inputs(mnist_images[idx])]), torch.cat([y, mnist_y[idx]])
        return x, y

    run = optimise(
        lora_model, params, next_batch, optimizer, "linear", settings.steps, precision, "personal", progress, stop
    )
    hashes_after = base_tensor_hashes(lora_model)
    personal_heldout = predict(lora_model, _inputs(heldout_pixels)).argmax(1)
    mnist_after = evaluate(lora_model, data.test_x, data.test_y)

    rows = [
        {"id": d.id, "label": d.label, "base": int(b), "personal": int(p)}
        for d, b, p in zip(heldout, base_heldout.tolist(), personal_heldout.tolist())
    ]
    base_errors = int((base_heldout != heldout_labels).sum())
    personal_errors = int((personal_heldout != heldout_labels).sum())
    config = {
        **dataclasses.asdict(settings),
        "precision_used": precision.used,
        "train_ids": [d.id for d in train_set],
    }
    result = PersonalResult(
        adapter=PERSONAL_ADAPTER,
        trained=len(train_set),
        heldout=len(heldout),
        heldout_rows=rows,
        base_heldout_accuracy=1.0 - base_errors / len(heldout),
        personal_heldout_accuracy=1.0 - personal_errors / len(heldout),
        base_errors=base_errors,
        personal_errors=personal_errors,
        mnist_before=mnist_before.accuracy,
        mnist_after=mnist_after.accuracy,
        seconds=run.seconds,
        config=config,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    metrics = {
        "target_digits": list(range(10)),
        "finetune": config,
        "seconds": run.seconds,
        "samples_per_s": run.samples_per_s,
        "final_loss": run.losses[-1] if run.losses else None,
        "trainable_params": sum(p.numel() for p in params),
        "before": mnist_before.summary(misclassified=False),
        "after": mnist_after.summary(misclassified=False),
        "base_tensors": base_tensor_record(hashes_before, hashes_after),
        "personal": {k: v for k, v in result.to_dict().items() if k not in ("config",)},
    }
    with store.writing("saving the personal adapter"):  # adapter and result.json change together
        check_personal_name_free(store)  # again under the lock: one may have been saved meanwhile
        store.save_adapter(lora_model, PERSONAL_ADAPTER, metrics, base.fingerprint, overwrite=True)
        write_saved(collection.folder / RESULT, result.to_dict())
    return result


def check_personal_name_free(store: ArtifactStore) -> None:
    """Refuse to replace an adapter called 'personal' that train_personal did not make (saved by finetune
    --name personal, say): replacing the previous personal adapter is expected, losing someone's own is not.
    A folder that cannot be read is no saved work and may be replaced."""
    if not store.adapter_exists(PERSONAL_ADAPTER):
        return
    try:
        metrics = store.read_adapter(PERSONAL_ADAPTER).metrics or {}
    except ArtifactError:
        return
    if "personal" not in metrics:
        raise ArtifactError(
            f"an adapter called {PERSONAL_ADAPTER!r} is saved in {store.adapters_dir} and was not trained on "
            "your drawings; the personal adapter would replace it: rename or delete that adapter first"
        )


def load_personal_result(store: ArtifactStore) -> PersonalResult | None:
    """The last personal adapter's result, or None before the first one is trained."""
    path = store.root / FOLDER / RESULT
    try:
        return PersonalResult.from_dict(read_saved(path, "personal adapter result"))
    except FileNotFoundError:
        return None
    except ArtifactError as exc:
        raise ArtifactError(f"{exc}; train the personal adapter again") from None
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"{path} cannot be read ({exc}); train the personal adapter again") from None
