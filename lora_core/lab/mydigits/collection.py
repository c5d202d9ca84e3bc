"""Your own handwriting: the collection of labelled drawings, and its zip export and import.

    <artifacts>/mydigits/labels.json         {"version": 1, "digits": [{"id", "label", "created", "source", "writer"?}]}
    <artifacts>/mydigits/images/<id>.png     28x28 (SIDE) gray, white ink on black: what the model sees (prepare_digit)
    <artifacts>/mydigits/originals/<id>.png  the drawing as drawn (RGBA or gray, at most MAX_ORIGINAL_SIDE a side)

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
import re
import secrets
import stat
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from lora_core.errors import ArtifactError, ConfigError, ImageError, LoraCoreError
from lora_core.model import SIDE
from lora_core.store.artifacts import ArtifactStore
from lora_core.store.fileio import atomic_write_bytes, atomic_write_json, parse_json
from lora_core.train import check_int

MIN_PER_DIGIT = 3  # at least one held out and two to train on, for every digit
FOLDER = "mydigits"
LABELS = "labels.json"
IMAGES = "images"
ORIGINALS = "originals"
FORMAT_VERSION = 1
SOURCES = ("draw", "guided", "import", "cli")

MAX_DIGITS = 2000  # the most drawings a collection (and an imported zip) holds
MAX_ORIGINAL_SIDE = 1024  # originals larger than this are scaled down on add, refused on import
MAX_PNG_BYTES = 4 * 2**20  # one picture in a zip
MAX_LABELS_BYTES = 2 * 2**20
MAX_ZIP_BYTES = 64 * 2**20  # all of a zip's files together, uncompressed
MAX_ZIP_ENTRIES = 2 * MAX_DIGITS + 3  # each drawing's two pictures, labels.json, the two folder entries
MAX_WRITER_CHARS = 64
ID_PATTERN = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,79}")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# every way reading a damaged zip entry fails (zlib.error: a garbled deflate stream)
UNREADABLE_ENTRY = (zipfile.BadZipFile, zlib.error, OSError, ValueError, NotImplementedError, RuntimeError, EOFError)


class MyDigitsImportError(LoraCoreError):
    """A zip offered for import was refused; nothing was changed."""


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


@dataclass(frozen=True)
class ZipExport:
    """A zip of the collection (MyDigits.export_zip): its bytes, the drawings in it, and those left out with why."""

    data: bytes
    exported: list[MyDigit]
    skipped: list[tuple[MyDigit, str]]


def _writer_problem(writer: Any) -> str | None:
    """Why `writer` is not a writer's name (None if it is one): a name is shown on pages and in tables, so it
    holds no line breaks, control or direction-changing characters (str.isprintable)."""
    if not isinstance(writer, str) or not 0 < len(writer) <= MAX_WRITER_CHARS:
        return f"writer must be a name of 1 to {MAX_WRITER_CHARS} characters"
    if not writer.isprintable():
        bad = next(c for c in writer if not c.isprintable())
        return f"writer must be printable text, found the control character U+{ord(bad):04X}"
    return None


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
    if writer is not None and (problem := _writer_problem(writer)):
        raise ValueError(f"{where}: {digit_id}: {problem}")
    return MyDigit(digit_id, label, created, source, writer)


def _parse_labels(data: bytes, where: str) -> list[MyDigit]:
    """labels.json's entries; ValueError with a specific message when the file is broken."""
    try:
        doc = parse_json(data, where)
    except ArtifactError as exc:
        raise ValueError(str(exc)) from None
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
            if prepared and (img.size != (SIDE, SIDE) or img.mode != "L"):
                raise ValueError(f"{where} must be a {SIDE}x{SIDE} gray picture, found {img.size} {img.mode}")
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
        # only a plain name becomes a file name (no path tricks); checked without reading labels.json, which a
        # page showing every drawing would otherwise parse once per drawing
        if not isinstance(digit_id, str) or not ID_PATTERN.fullmatch(digit_id):
            raise ArtifactError(f"no drawing {digit_id!r} in {self.folder}")
        path = self.folder / sub / f"{digit_id}.png"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.get(digit_id)  # an unknown drawing is named as such
            raise ArtifactError(f"{path} is missing") from None
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

    @contextmanager
    def _writing(self, what: str) -> Iterator[list[MyDigit]]:
        """The artifacts folder's writer lock, with the collection as it is now; every writer first removes what
        a killed writer left (pictures labels.json does not list, temporary files)."""
        with self.store.writing(what):
            current = self.list()
            self._drop_unlisted({d.id for d in current})
            yield current

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
        if writer is not None and (problem := _writer_problem(writer)):
            raise ConfigError("writer", problem.removeprefix("writer "))
        prepared = prepare_digit(drawing)
        if prepared is None:
            raise ImageError("nothing is drawn: the picture is empty or has almost no ink")
        pixels = np.rint(prepared.pixels * 255.0).clip(0, 255).astype(np.uint8)
        original = _as_uint8(drawing)
        digit = MyDigit(_new_id(label), label, datetime.now(UTC).isoformat(timespec="seconds"), source, writer)
        with self._writing("adding to my digits") as current:
            known = {d.id for d in current}
            while digit.id in known:  # never write over another drawing's files
                digit = dataclasses.replace(digit, id=_new_id(label))
            if len(current) >= MAX_DIGITS:
                raise ConfigError("mydigits", f"the collection holds {MAX_DIGITS} drawings already; delete some first")
            try:
                atomic_write_bytes(self.folder / IMAGES / f"{digit.id}.png", _png_bytes(pixels))
                atomic_write_bytes(self.folder / ORIGINALS / f"{digit.id}.png", _png_bytes(original))
                self._write_labels([*current, digit])
            except BaseException:
                self._drop_unlisted(known)  # a refused add leaves the collection as it was (a full disk, say)
                raise
        return digit

    def delete(self, digit_id: str) -> None:
        with self._writing("deleting from my digits") as current:
            if not any(d.id == digit_id for d in current):
                raise ArtifactError(f"no drawing {digit_id!r} in {self.folder}")
            kept = [d for d in current if d.id != digit_id]
            self._write_labels(kept)  # the drawing is gone from here on; its files follow
            for sub in (IMAGES, ORIGINALS):
                (self.folder / sub / f"{digit_id}.png").unlink(missing_ok=True)

    # --- zip ------------------------------------------------------------------------------------
    def export_zip(self) -> ZipExport:
        """labels.json, images/<id>.png and originals/<id>.png of every drawing whose two pictures read as
        import_zip will check them, as a zip archive; a drawing with a missing, truncated or garbled picture is
        left out (and named in `skipped`), so that the zip is always one its own import accepts."""
        exported: list[MyDigit] = []
        skipped: list[tuple[MyDigit, str]] = []
        pictures: dict[str, bytes] = {}
        for d in self.list():
            try:
                for sub in (IMAGES, ORIGINALS):
                    path = self.folder / sub / f"{d.id}.png"
                    try:
                        data = path.read_bytes()
                    except OSError as exc:
                        raise ValueError(f"{path} cannot be read ({exc.strerror or exc})") from None
                    _decode_png(data, str(path), prepared=sub == IMAGES)
                    pictures[f"{sub}/{d.id}.png"] = data
            except ValueError as exc:
                skipped.append((d, str(exc)))
                continue
            exported.append(d)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(
                LABELS, json.dumps({"version": FORMAT_VERSION, "digits": [d.to_dict() for d in exported]}, indent=2)
            )
            for d in exported:
                for sub in (IMAGES, ORIGINALS):
                    zf.writestr(f"{sub}/{d.id}.png", pictures[f"{sub}/{d.id}.png"])
        return ZipExport(buffer.getvalue(), exported, skipped)

    def import_zip(self, data: bytes) -> list[MyDigit]:
        """Add the drawings of an exported zip. Every entry is checked first; on any problem
        MyDigitsImportError says what is wrong and nothing is changed. Drawings already in the
        collection (same id) are skipped; the others are returned."""
        entries, files = _read_zip(data)
        with self._writing("importing my digits") as current:
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
            except UNREADABLE_ENTRY as exc:
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
