"""`python -m lora_core analyze [similarity|amplification|directions|memory|all]`: the LoRA paper's analysis
(Hu et al. 2021, section 7) on this base model's adapters, and the memory training takes, as tables.

Its options, its command and its text are all here.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from typing import Any

from lora_core.cli.options import UsageError, float_arg, int_arg, precision_option, usage_error
from lora_core.cli.render import ProgressBar, human_bytes, say, table
from lora_core.data import load_mnist
from lora_core.errors import ConfigError
from lora_core.lab.analysis import (
    ADAPTER_PARTS,
    ADAPTERS_FILE,
    MEMORY_FILE,
    PARTS,
    AnalysisSettings,
    analysis_dir,
    run_analysis,
)
from lora_core.lab.analysis.intruders import FILE as INTRUDERS_FILE
from lora_core.lab.analysis.intruders import IntruderSettings, run_intruders, runs_of
from lora_core.lab.readings import read_intruders
from lora_core.numbers import pct
from lora_core.store.artifacts import ArtifactStore

CHOICES = ("similarity", "amplification", "directions", "memory", "all", "intruders")
ANALYZE_FLAGS: dict[str, tuple[str, ...]] = {
    "part": ("PART",),
    "small_rank": ("--small-rank",),
    "large_rank": ("--large-rank",),
    "seed": ("--seed",),
    "other_seed": ("--other-seed",),
    "steps": ("--steps",),
    "batch_size": ("--batch-size",),
    "lr": ("--lr",),
    "replay": ("--replay",),
    "memory_ranks": ("--memory-ranks",),
    "memory_steps": ("--memory-steps",),
    "directions": ("--directions",),
    "rank": ("--small-rank",),
    "ranks": ("--ranks",),
    "tasks": ("--tasks",),
}
BASIS_TITLES = {
    "A": "directions of A (the paper's definition)",
    "update": "input directions of the update scale·B·A",
}
SHADES = ((0.5, "#"), (0.2, "+"), (-0.2, " "), (-0.5, "-"))  # a direction's pixels, largest magnitude = 1


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    d = AnalysisSettings()
    p = sub.add_parser(
        "analyze",
        parents=[common],
        help="the LoRA paper's analysis on this base model's adapters, and the memory of training",
        description="similarity: how much the top directions of a rank-8 and a rank-64 adapter (and of two rank-8 "
        "seeds) overlap (the paper's figure 3); amplification: how the update relates to W (table 7); directions: "
        "linear1's top input directions as 28x28 pictures; memory: bytes of weights, gradients, Adam and "
        "activations of full fine-tuning and LoRA, exact, with the measured peak of a short run. The three "
        "adapters are trained on the weakest digit (or reused when saved with the same settings); the results "
        "also go to <artifacts>/analysis/ for the dashboard's Insight page. intruders (not part of all): LoRA at "
        "--ranks and full fine-tuning on each of --tasks; how many of each layer's top singular directions are new "
        "to W (Shuttleworth et al., 2024), beside what each run forgot.",
    )
    p.add_argument(
        "part", metavar="PART", nargs="?", choices=CHOICES, default="all", help=f"{' | '.join(CHOICES)} (default: all)"
    )
    p.add_argument("--small-rank", dest="small_rank", type=int_arg, default=d.small_rank)
    p.add_argument("--large-rank", dest="large_rank", type=int_arg, default=d.large_rank)
    p.add_argument("--seed", type=int_arg, default=d.seed, help="seed of both adapters compared across ranks")
    p.add_argument("--other-seed", dest="other_seed", type=int_arg, default=d.other_seed, help="the small rank's 2nd")
    p.add_argument("--steps", type=int_arg, default=d.steps, help="training steps of each analysis adapter")
    p.add_argument("--batch-size", dest="batch_size", type=int_arg, default=d.batch_size, help="also the memory batch")
    p.add_argument("--lr", type=float_arg, default=d.lr, help="LoRA's learning rate")
    p.add_argument("--replay", type=float_arg, default=d.replay, help="share of each batch from the other digits")
    p.add_argument(
        "--memory-ranks", dest="memory_ranks", type=int_arg, nargs="+", default=list(d.memory_ranks), help="LoRA ranks"
    )
    p.add_argument("--memory-steps", dest="memory_steps", type=int_arg, default=d.memory_steps, help="measured run")
    p.add_argument("--directions", type=int_arg, default=d.directions, help="linear1 directions to show")
    intruders = IntruderSettings()
    p.add_argument(
        "--ranks", type=int_arg, nargs="+", default=list(intruders.ranks), help="intruders: the LoRA ranks compared"
    )
    p.add_argument("--tasks", nargs="+", default=list(intruders.tasks), help="intruders: the tasks each run trains on")
    precision_option(p, d.precision)
    p.set_defaults(handler=cmd_analyze, flags=ANALYZE_FLAGS)


def cmd_analyze(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    if args.part == "intruders":
        return cmd_intruders(args, stop)
    settings = AnalysisSettings(
        small_rank=args.small_rank,
        large_rank=args.large_rank,
        seed=args.seed,
        other_seed=args.other_seed,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        replay=args.replay,
        precision=args.precision,
        device=args.device,
        memory_ranks=tuple(args.memory_ranks),
        memory_steps=args.memory_steps,
        directions=args.directions,
    )
    parts = PARTS if args.part == "all" else (args.part,)
    store = ArtifactStore(args.artifacts)
    result = _run_checked(args, settings, stop, lambda data, **live: run_analysis(store, data, settings, parts, **live))
    adapters = result.adapters
    if adapters is not None:
        for part in ADAPTER_PARTS:
            if part in parts:
                {"similarity": say_similarity, "amplification": say_amplification, "directions": say_directions}[part](
                    adapters
                )
    if result.memory is not None:
        say_memory(result.memory)
    files = {"adapters": ADAPTERS_FILE, "memory": MEMORY_FILE}
    say(f"\nSaved to {', '.join(str(analysis_dir(store) / files[key]) for key in result.to_dict())}")
    return {"artifacts": str(store.root), "part": args.part, **result.to_dict()}


def _run_checked(args: argparse.Namespace, settings: Any, stop: threading.Event, run: Callable[..., Any]) -> Any:
    """Check `settings` (an error names the option typed) and that there is a base model, before the writer lock
    (which would create the folder); then `run(data, progress=..., stop=..., log=...)` under a progress bar."""
    try:
        settings.validate()
    except ConfigError as exc:
        raise usage_error(exc, ANALYZE_FLAGS, args.argv) from exc
    store = ArtifactStore(args.artifacts)
    if not store.has_base():
        raise UsageError(f"no base model in {store.base_dir}; train one first (python -m lora_core train)")
    data = load_mnist(args.data, log=say)
    bar = ProgressBar()
    try:
        return run(data, progress=bar, stop=stop, log=lambda m: (bar.close(), say(m)))
    finally:
        bar.close()


def cmd_intruders(args: argparse.Namespace, stop: threading.Event) -> dict[str, Any]:
    settings = IntruderSettings(
        ranks=tuple(args.ranks),
        tasks=tuple(args.tasks),
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        lora_lr=args.lr,
        precision=args.precision,
        device=args.device,
    )
    store = ArtifactStore(args.artifacts)
    saved = _run_checked(args, settings, stop, lambda data, **live: run_intruders(store, data, settings, **live))
    say_intruders(saved)
    say(f"\nSaved to {analysis_dir(store) / INTRUDERS_FILE}")
    return {"artifacts": str(store.root), "part": "intruders", "intruders": saved}


def say_intruders(saved: dict[str, Any]) -> None:
    say(
        "\nIntruder dimensions (Shuttleworth et al., 2024): of each layer's top-k left singular vectors after "
        "training, those whose best |cosine| with any of W's is below eps."
    )
    for run_k in saved["ks"]:
        rows = []
        for run in runs_of(saved):
            rows.append(
                [
                    run.task,
                    run.label,
                    *(sum(run.counts[layer][str(run_k)][f"{e:g}"] for layer in run.counts) for e in saved["epsilons"]),
                    f"{run.forgot:+.2f} on {run.forgot_on}",
                ]
            )
        headers = ["task", "run", *(f"eps {e:g}" for e in saved["epsilons"]), "forgot (points)"]
        say(f"\nIntruders among the top {run_k} of every layer (linear3 has 10 directions):")
        say(table(headers, rows))
    say(read_intruders(saved))


# --- the text -------------------------------------------------------------------------------------------------------
def _sources(adapters: dict[str, Any]) -> str:
    return "; ".join(f"{s['key']}: {s['source']}" for s in adapters["adapters"])


def say_similarity(adapters: dict[str, Any]) -> None:
    say(
        "\nSubspace similarity φ(A1, A2, i, j) = ||U1[:, :i]ᵀ U2[:, :j]||²_F / min(i, j), U the right singular "
        "vectors of A (Hu et al. 2021, figure 3)."
    )
    say("1: the top-i directions of one adapter lie inside the top-j of the other; random subspaces: max(i, j)/in.")
    say(f"Digit {adapters['target_digits'][0]} adapters ({_sources(adapters)})")
    for basis, pair in ((b, p) for b in adapters["similarity"] for p in ("ranks", "seeds")):
        entries = adapters["similarity"][basis].get(pair) or []
        if not entries:
            continue
        a1, a2 = entries[0]["adapters"]
        k = entries[0]["k"]
        say(f"\n{a1} vs {a2} ({pair} compared), {BASIS_TITLES.get(basis, basis)}")
        with_init = all(e.get("init") for e in entries)
        rows = []
        for e in entries:
            r1, r2 = e["ranks"]
            init = [e["init"]["top1_in_all"], e["init"]["top_k"]] if with_init else []
            rows.append(
                [
                    e["layer"],
                    f"{r1} vs {r2}",
                    e["top1"],
                    e["top_k"],
                    e["top1_in_all"],
                    e["top_k_in_all"],
                    e["random_top1"],
                    e["random_top_k"],
                    *init,
                ]
            )
        headers = ["layer", "ranks", "φ(1,1)", f"φ({k},{k})", "φ(1,all)", f"φ({k},all)", "random φ(1,1)"]
        headers += [f"random φ({k},{k})"] + (["φ(1,all) at init", f"φ({k},{k}) at init"] if with_init else [])
        say(table(headers, rows))
    moved = adapters.get("a_moved") or {}
    if moved:
        say("\nHow far training moved each A from its random start, ||A - A0||_F / ||A0||_F:")
        layers = list(next(iter(moved.values())))
        say(table(["adapter", *layers], [[key, *(m.get(n) for n in layers)] for key, m in moved.items()]))


def say_amplification(adapters: dict[str, Any]) -> None:
    say(
        "\nHow ΔW relates to W (Hu et al. 2021, table 7): U, V the top-r singular directions of ΔW = scale·B·A; "
        "||UᵀWVᵀ||_F beside W's own top-r directions and random ones; factor = ||ΔW||_F / ||UᵀWVᵀ||_F."
    )
    for key, block in adapters["amplification"].items():
        say(f"\nAdapter {key}")
        say(
            table(
                ["layer", "r", "||ΔW||_F", "||UᵀWVᵀ||_F", "W's top r", "random", "factor", "reads as"],
                [
                    [
                        a["layer"],
                        a["rank"],
                        a["delta_norm"],
                        a["projected_norm"],
                        a["weight_top_norm"],
                        a["random_norm"],
                        a["factor"],
                        "-"
                        if a["emphasised"] is None
                        else "already emphasised"
                        if a["emphasised"]
                        else "barely used by W",
                    ]
                    for a in block["rows"]
                ],
            )
        )
        for a in block["rows"]:
            say(f"  {a['reading']}")
        say(f"  In short: {block['summary']}")


def ascii_direction(image: list[list[float]]) -> list[str]:
    """A 28x28 direction as text, each pixel by its sign and size relative to the largest one."""
    peak = max((abs(v) for row in image for v in row), default=0.0) or 1.0
    lines = []
    for row in image:
        chars = []
        for v in row:
            x = v / peak
            chars.append(next((c for limit, c in SHADES if x >= limit), "="))
        lines.append("".join(chars))
    return lines


def say_directions(adapters: dict[str, Any]) -> None:
    d = adapters.get("directions")
    if not d:
        say("\nThe adapter has no linear1 update: no input directions to show.")
        return
    sv = d["singular_values"]
    energy = sum(v * v for v in sv) or 1.0
    say(
        f"\nlinear1's top input directions of adapter {d['adapter']} (rows of Vᵀ of ΔW, 784 = 28x28 pixels of the "
        "normalised input): the input patterns the update reacts to."
    )
    say(
        table(
            ["direction", "singular value", "share of ||ΔW||²_F"],
            [[i + 1, sv[i], pct(sv[i] ** 2 / energy, 1)] for i in range(len(d["images"]))],
        )
    )
    shown = d["images"][:3]
    say("\nThe top ones as pictures: '#' and '+' strong and weak positive pixels, '=' and '-' negative ones.")
    pictures = [ascii_direction(img) for img in shown]
    say("   ".join(f"{i + 1:<28}" for i in range(len(pictures))))
    for lines in zip(*pictures):
        say("   ".join(lines))


def say_memory(memory: dict[str, Any]) -> None:
    rows = memory["rows"]
    batch = rows[0]["batch_size"] if rows else 0
    say(
        f"\nMemory of training (fp32, batch {batch}): exact bytes of the tensors after one real step, and the "
        "measured peak of a short real run"
    )
    say(
        table(
            ["method", "trainable", "weights", "gradients", "Adam", "activations", "total (exact)", "measured peak"],
            [
                [
                    r["label"],
                    r["trainable_params"],
                    human_bytes(r["weights_bytes"]),
                    human_bytes(r["gradient_bytes"]),
                    human_bytes(r["adam_bytes"] + r["adam_step_bytes"]),
                    human_bytes(r["activation_bytes"]),
                    human_bytes(r["total_bytes"]),
                    "-" if r["peak_bytes"] is None else human_bytes(r["peak_bytes"]),
                ]
                for r in rows
            ],
        )
    )
    if rows and rows[0].get("peak_measure"):
        say(f"Peak: {rows[0]['peak_measure']}.")
    ratio = memory.get("ratio")
    if ratio:
        peak = f", {ratio['peak']:.2f}x in the measured peak" if ratio.get("peak") else ""
        say(
            f"Full fine-tuning / LoRA r={ratio['rank']}: {ratio['total']:.2f}x the memory in all (exact), "
            f"{ratio['train_state']:.1f}x in gradients and Adam, {ratio['trainable_params']:.1f}x the trainable "
            f"parameters{peak}."
        )
