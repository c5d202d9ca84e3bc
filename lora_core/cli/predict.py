"""`python -m lora_core predict`: read digit pictures (PNG, JPEG) with the base model and an adapter."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Any

from lora_core.cli.common import choose_adapter, store_of
from lora_core.cli.options import ADAPTER_FLAGS, adapter_choice
from lora_core.cli.render import say, warn
from lora_core.errors import ImageError
from lora_core.lab.study import load_base_for_lora
from lora_core.preprocess import load_image, predict_probabilities, prepare_digit

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "predict",
        parents=[common],
        help="read digit pictures (PNG, JPEG) with base and adapter",
        description="Read each picture with the base model and an adapter. A picture that cannot be read is "
        "reported and skipped (in --json too, with its error); the command fails only when none can be read.",
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="picture files, or folders of pictures")
    adapter_choice(p, "compare with the base")
    p.add_argument(
        "--invert",
        choices=("auto", "yes", "no"),
        default="auto",
        help="dark ink on light paper: auto-detected from the border by default",
    )
    p.set_defaults(handler=cmd_predict, flags=ADAPTER_FLAGS)


def image_paths(paths: list[Path]) -> list[Path]:
    """Files as given; a folder stands for its PNG and JPEG pictures, in name order."""
    out: list[Path] = []
    for path in paths:
        if not path.is_dir():
            out.append(path)
            continue
        found = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise ImageError(f"{path} is a folder without PNG or JPEG pictures (.png, .jpg, .jpeg)")
        say(f"{path}: {len(found)} picture{'s' if len(found) > 1 else ''}")
        out += found
    return out


def cmd_predict(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    paths = image_paths(args.images)
    store = store_of(args)
    base, lora_model = load_base_for_lora(store, args.device)
    name = choose_adapter(args, store, base)
    if name is not None:
        store.load_adapter(lora_model, name, base.fingerprint)
    invert = {"auto": None, "yes": True, "no": False}[args.invert]
    results: list[dict[str, Any]] = []
    failed: list[str] = []
    for path in paths:
        try:
            prepared = prepare_digit(load_image(path), invert)
        except ImageError as exc:  # one bad picture among many: say so and read the others
            if len(paths) == 1:
                raise
            warn(f"{exc}; skipped")
            failed.append(str(exc))
            results.append({"image": str(path), "error": str(exc)})
            continue
        if prepared is None:
            say(f"{path}: no digit found (the picture is empty or has almost no ink)")
            results.append({"image": str(path), "digit_found": False})
            continue
        lora_model.set_adapter(None)
        base_p = predict_probabilities(lora_model, prepared)
        entry: dict[str, Any] = {
            "image": str(path),
            "digit_found": True,
            "inverted": prepared.inverted,
            "base": {"prediction": int(base_p.argmax()), "probabilities": base_p.tolist()},
        }
        line = f"{path}: base {int(base_p.argmax())} ({base_p.max():.1%})"
        if name is not None:
            lora_model.set_adapter(name)
            ad_p = predict_probabilities(lora_model, prepared)
            entry["adapted"] = {"prediction": int(ad_p.argmax()), "probabilities": ad_p.tolist()}
            line += f", adapter {name!r} {int(ad_p.argmax())} ({ad_p.max():.1%})"
            if ad_p.argmax() != base_p.argmax():
                line += "  <- they disagree"
        say(line)
        results.append(entry)
    if len(failed) == len(paths):
        raise ImageError(f"none of the {len(paths)} pictures could be read; the first: {failed[0]}")
    return {"artifacts": str(store.root), "adapter": name, "predictions": results}
