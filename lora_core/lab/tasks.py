"""Tasks: what an adapter is trained on and what it is judged on, parsed from one short string.

    weakest          the base model's weakest digit, with replay of the others (the study)
    digits:3,5       chosen digits, with replay of the others
    rotate:45        every digit rotated 45 degrees counter-clockwise (train and test alike)
    invert           dark ink on white paper
    thick, thin      strokes dilated / eroded by one pixel
    shift:3          digits moved 3 pixels right (shift:DX,DY also moves them DY pixels down)
    unseen:8,9       a base model trained without 8 and 9, then an adapter that teaches them

A domain task (rotate, invert, thick, thin, shift) transforms the training and test images once, whole
tensors at a time, and hands back a new MnistData; the digit tasks use MNIST as it is. The transforms work
on pixels in [0, 1] (background 0), so a rotation or a shift fills with background, and then go back to
the network's normalised scale.

Morphology (no package of ours offers grey-level morphology on tensors; max_pool2d is the usual way):
- thick: 3x3 square dilation, max_pool2d(x, 3, stride 1, padding 1). It doubles the ink of a digit.
- thin: erosion by a 3x3 *cross* (the pixel and its four neighbours): the minimum of a 1x3 and a 3x1
  erosion, each -max_pool2d(-x). A 3x3 square erosion was measured to leave 71% of MNIST training digits
  with under a fifth of their ink (MNIST strokes are 2-3 pixels wide), i.e. mostly unreadable; the cross
  keeps about a third of the ink on average and leaves 2% of digits nearly empty.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12 on

from lora_core.data import MEAN, STD, MnistData
from lora_core.errors import ConfigError
from lora_core.model import SIDE
from lora_core.numbers import digits_named

DIGIT_KINDS = ("weakest", "digits", "unseen")
DOMAIN_KINDS = ("rotate", "invert", "thick", "thin", "shift")
KINDS = DIGIT_KINDS + DOMAIN_KINDS
TASK_FORMS = "weakest, digits:D,..., rotate:DEG, invert, thick, thin, shift:PX (or shift:DX,DY), unseen:D,..."
MAX_SHIFT = 10  # pixels; MNIST digits sit in a 20x20 box inside 28x28, so beyond this little ink is left
TRANSFORM_CHUNK = 8192  # images per vectorised call: bounds the temporaries (rotation builds a sampling grid)


@dataclass(frozen=True)
class Task:
    """One task. Build it with parse_task; `spec` gives the canonical string back."""

    kind: str
    digits: tuple[int, ...] = ()  # digits: the target digits; unseen: the digits the base never sees
    degrees: float = 0.0  # rotate
    offset: tuple[int, int] = (0, 0)  # shift: (right, down) in pixels

    # --- names -------------------------------------------------------------------------------------
    @property
    def spec(self) -> str:
        """The canonical task string: parse_task(task.spec) == task."""
        if self.kind in ("digits", "unseen"):
            return f"{self.kind}:{','.join(map(str, self.digits))}"
        if self.kind == "rotate":
            return f"rotate:{self.degrees:g}"
        if self.kind == "shift":
            dx, dy = self.offset
            return f"shift:{dx}" if dy == 0 else f"shift:{dx},{dy}"
        return self.kind

    @property
    def slug(self) -> str:
        """The spec as a file and adapter name: rotate:45 -> rotate-45, shift:-3 -> shift-m3."""
        return self.spec.replace(":", "-").replace(",", "-").replace("--", "-m")

    @property
    def label(self) -> str:
        """One line for people."""
        if self.kind == "weakest":
            return "the base model's weakest digit, with replay of the other digits"
        if self.kind == "digits":
            return f"digit{'s' if len(self.digits) > 1 else ''} {_digit_list(self.digits)}, with replay of the others"
        if self.kind == "unseen":
            return (
                f"digit{'s' if len(self.digits) > 1 else ''} {_digit_list(self.digits)}, unseen by a base model "
                "trained without them, taught with replay of the seen digits"
            )
        if self.kind == "rotate":
            turn = "counter-clockwise" if self.degrees > 0 else "clockwise"
            return f"digits rotated {abs(self.degrees):g} degrees {turn}"
        if self.kind == "shift":
            dx, dy = self.offset
            moves = [f"{abs(dx)} px {'right' if dx > 0 else 'left'}"] if dx else []
            moves += [f"{abs(dy)} px {'down' if dy > 0 else 'up'}"] if dy else []
            return f"digits moved {' and '.join(moves)}"
        return {
            "invert": "inverted digits: dark ink on white paper",
            "thick": "thick strokes (3x3 dilation)",
            "thin": "thin strokes (erosion by a 3x3 cross)",
        }[self.kind]

    @property
    def short_label(self) -> str:
        """A few words for lists of adapters: 'rotate 45°', 'inverted', 'digits 8, 9 (unseen)'."""
        if self.kind == "weakest":
            return "weakest digit"
        if self.kind in ("digits", "unseen"):
            words = digits_named(self.digits)
            return f"{words} (unseen)" if self.kind == "unseen" else words
        if self.kind == "rotate":
            return f"rotate {self.degrees:g}°"
        if self.kind == "shift":
            dx, dy = self.offset
            return f"shift {dx:+d} px" if dy == 0 else f"shift {dx:+d},{dy:+d} px"
        return {"invert": "inverted", "thick": "thick strokes", "thin": "thin strokes"}[self.kind]

    def adapter_name(self, target_digits: Sequence[int]) -> str:
        """The default name of the task's adapter: digit-9 for digit tasks (as the study names them),
        else the slug (rotate-45, unseen-8-9)."""
        if self.kind in ("weakest", "digits"):
            return "digit-" + "-".join(map(str, target_digits))
        return self.slug

    @property
    def is_domain(self) -> bool:
        """True for the tasks that transform the images (train and test alike)."""
        return self.kind in DOMAIN_KINDS

    @property
    def replays(self) -> bool:
        """Whether training on this task replays other digits: a digit task does; a domain task trains on every
        digit, so it has none to replay and a replay share would change nothing."""
        return not self.is_domain

    def check_replay(self, field: str = "replay") -> None:
        """Refuse a replay setting on a task that has nothing to replay (ConfigError on `field`)."""
        if not self.replays:
            raise ConfigError(
                field,
                f"applies to digit tasks (weakest, digits:D,..., unseen:D,...); {self.spec} trains on every digit, "
                "so there is nothing to replay",
            )

    @property
    def base_name(self) -> str | None:
        """The name of the separate base model this task needs (unseen:8,9 -> 'unseen-8-9'), else None."""
        return self.slug if self.kind == "unseen" else None

    def target_digits(self, weakest: int | None = None) -> tuple[int, ...]:
        """The digits the adapter is trained on and judged on; every digit for a domain task."""
        if self.kind == "weakest":
            if weakest is None:
                raise ValueError("the weakest task needs the base model's weakest digit")
            return (weakest,)
        if self.kind in ("digits", "unseen"):
            return self.digits
        return tuple(range(10))

    def describe(self, weakest: int | None = None) -> dict[str, Any]:
        """The task for JSON files (TaskRecord)."""
        targets = self.target_digits(weakest) if self.kind != "weakest" or weakest is not None else None
        return {
            "spec": self.spec,
            "kind": self.kind,
            "label": self.label,
            "domain": self.is_domain,
            "target_digits": list(targets) if targets is not None else None,
            "base": self.base_name,
        }

    # --- data ------------------------------------------------------------------------------------
    def transform_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """The task's transform of images with pixels in [0, 1] (background 0), shaped (N, 28, 28) or
        (N, 1, 28, 28); returns the same shape. Digit tasks return the images unchanged. For previews and
        drawings; whole data sets go through `apply`."""
        if not self.is_domain:
            return pixels
        shape = pixels.shape
        batch = pixels.reshape(-1, 1, SIDE, SIDE).to(torch.float32)
        out = torch.empty_like(batch)
        for start in range(0, batch.shape[0], TRANSFORM_CHUNK):
            out[start : start + TRANSFORM_CHUNK] = self._transform(batch[start : start + TRANSFORM_CHUNK])
        return out.reshape(shape)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        if self.kind == "rotate":  # about the image centre; corners fill with background
            return TF.rotate(x, self.degrees, interpolation=InterpolationMode.BILINEAR, fill=0.0)
        if self.kind == "shift":  # whole pixels: nearest-neighbour moves them exactly
            dx, dy = self.offset
            return TF.affine(
                x,
                angle=0.0,
                translate=[dx, dy],
                scale=1.0,
                shear=[0.0, 0.0],
                interpolation=InterpolationMode.NEAREST,
                fill=0.0,
            )
        if self.kind == "invert":
            return 1.0 - x
        if self.kind == "thick":
            return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        if self.kind == "thin":
            across = -F.max_pool2d(-x, kernel_size=(1, 3), stride=1, padding=(0, 1))
            down = -F.max_pool2d(-x, kernel_size=(3, 1), stride=1, padding=(1, 0))
            return torch.minimum(across, down)
        raise AssertionError(self.kind)

    def transform_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """The transform of rows in the network's input scale (N, 784), back in that scale."""
        pixels = (x.reshape(-1, SIDE, SIDE) * STD + MEAN).clamp_(0.0, 1.0)
        out = self.transform_pixels(pixels)
        return out.sub_(MEAN).div_(STD).reshape(x.shape)

    def apply(self, data: MnistData) -> MnistData:
        """The task's training and test sets: transformed copies for a domain task, else `data` itself."""
        if not self.is_domain:
            return data
        return dataclasses.replace(
            data,
            train_x=self.transform_normalized(data.train_x),
            test_x=self.transform_normalized(data.test_x),
            source=f"{data.source}, {self.label}",
        )


def parse_task(text: Any) -> Task:
    """'rotate:45' -> Task; anything else raises ConfigError('task', ...) saying what is accepted."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("task", f"give a task, one of: {TASK_FORMS}")
    spec = text.strip().lower()
    kind, sep, value = spec.partition(":")
    kind, value = kind.strip(), value.strip()
    if kind not in KINDS:
        raise ConfigError("task", f"unknown task {text.strip()!r}; choose one of: {TASK_FORMS}")
    if kind in ("weakest", "invert", "thick", "thin"):
        if sep:
            raise ConfigError("task", f"{kind} takes no value; write just {kind!r}, not {text.strip()!r}")
        return Task(kind)
    example = {"digits": "digits:3,5", "unseen": "unseen:8,9", "rotate": "rotate:45", "shift": "shift:3"}[kind]
    if not value:
        what = {"digits": "one or more digits", "unseen": "the digits to leave out", "rotate": "an angle in degrees"}
        raise ConfigError("task", f"{kind} needs {what.get(kind, 'a number of pixels')}, e.g. {example}")
    if kind in ("digits", "unseen"):
        digits = _parse_digits(kind, value, example)
        if kind == "unseen" and len(digits) == 10:
            raise ConfigError("task", "unseen: leave out at most 9 digits; the base model must learn at least one")
        return Task(kind, digits=digits)
    if kind == "rotate":
        try:
            degrees = float(value)
        except ValueError:
            raise ConfigError(
                "task", f"rotate: the angle must be a number of degrees, e.g. {example}; got {value!r}"
            ) from None
        if not math.isfinite(degrees) or not -180 <= degrees <= 180 or degrees == 0:
            raise ConfigError("task", f"rotate: the angle must be from -180 to 180 degrees and not 0, got {value}")
        return Task(kind, degrees=degrees)
    parts = [p.strip() for p in value.split(",")]
    if len(parts) > 2:
        raise ConfigError("task", f"shift takes one or two whole numbers of pixels (DX or DX,DY), got {value!r}")
    offsets = []
    for part in parts:
        try:
            offsets.append(int(part))
        except ValueError:
            raise ConfigError(
                "task", f"shift: pixels must be whole numbers, e.g. {example} or shift:2,-1; got {part!r}"
            ) from None
    dx, dy = (offsets + [0])[:2]
    if not all(-MAX_SHIFT <= o <= MAX_SHIFT for o in (dx, dy)) or (dx, dy) == (0, 0):
        raise ConfigError(
            "task", f"shift: each offset must be from -{MAX_SHIFT} to {MAX_SHIFT} pixels and not both 0, got {value}"
        )
    return Task(kind, offset=(dx, dy))


def _parse_digits(kind: str, value: str, example: str) -> tuple[int, ...]:
    digits: list[int] = []
    for part in value.split(","):
        part = part.strip()
        if not (len(part) == 1 and part.isdigit()):
            raise ConfigError("task", f"{kind}: {part!r} is not a digit from 0 to 9 (write e.g. {example})")
        if int(part) in digits:
            raise ConfigError("task", f"{kind}: digit {part} is listed twice")
        digits.append(int(part))
    return tuple(sorted(digits))


def _digit_list(digits: Sequence[int]) -> str:
    return ", ".join(map(str, digits[:-1])) + (" and " if len(digits) > 1 else "") + str(digits[-1])


def without_digits(data: MnistData, digits: Sequence[int]) -> MnistData:
    """The training set without `digits` (for a base model that never sees them); the test set whole."""
    keep = ~torch.isin(data.train_y, torch.tensor(list(digits), dtype=data.train_y.dtype))
    return dataclasses.replace(
        data,
        train_x=data.train_images[keep],  # as stored (uint8): train_x would build the whole float copy
        train_y=data.train_y[keep],
        source=f"{data.source}, training set without digits {_digit_list(digits)}",
    )


class TaskRecord(TypedDict):
    """Task.describe as saved (the schema lora_core.store.results checks on reading)."""

    spec: str
    kind: str
    label: str
    domain: bool
    target_digits: list[int] | None
    base: str | None


def task_of(metrics: Mapping[str, Any] | None) -> Task | None:
    """The task an adapter was trained on, from the `task` its metrics.json records (lora_core.lab.experiments
    writes it); None for an adapter saved without one (the study, the Fine-tuning page) or whose task this
    version cannot read."""
    described = (metrics or {}).get("task")
    spec = described.get("spec") if isinstance(described, Mapping) else None
    if not isinstance(spec, str):
        return None
    try:
        return parse_task(spec)
    except ConfigError:
        return None


def task_test_set(task: Task, data: MnistData) -> tuple[torch.Tensor, torch.Tensor]:
    """The task's own test set: MNIST's test images through the task's transform (as they are for a digit
    task), with their labels. Only the test images are transformed, unlike `Task.apply`."""
    if not task.is_domain:
        return data.test_x, data.test_y
    return task.transform_normalized(data.test_x), data.test_y
