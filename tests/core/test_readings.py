"""The readings: sentences written from measured figures, checked against the figures they read."""

from __future__ import annotations

import subprocess
import sys

from lora_core.lab import readings


def test_the_methods_reading_is_computed_from_the_numbers() -> None:
    text = readings.read_methods(
        0.468,
        {"lora": 0.971, "full": 0.977, "head": 0.938},
        {"lora": 0.95, "full": 0.537, "head": 0.8},
        {"lora": 53_000, "full": 2_807_010, "head": 20_010},
        lora_off_plain=0.9763,
        plain_what="upright digits",
    )
    share = (0.971 - 0.468) / (0.977 - 0.468)
    assert f"LoRA recovered {100 * share:.1f}% of full fine-tuning's gain" in text
    assert f"{53_000 / 2_807_010:.1%} of its trainable parameters" in text
    assert "the last layer alone reached 93.80%" in text
    assert "with the adapter off the base still reads 97.63% of upright digits" in text
    assert "the fully fine-tuned copy reads 53.70%" in text
    other = readings.read_methods(0.5, {"lora": 0.6}, {"lora": 0.9}, {"lora": 10}, 0.97)
    assert other.startswith("LoRA took the task from 50.00% to 60.00%") and "recovered" not in other
    plus = readings.read_methods(0.5, {"lora": 0.6, "loraplus": 0.585}, {}, {"lora": 10, "loraplus": 10})
    assert plus == "LoRA took the task from 50.00% to 60.00%; LoRA+ reached 58.50% (-1.50 points against LoRA)."
    alone = readings.read_methods(0.5, {"loraplus": 0.7}, {}, {"loraplus": 10})
    assert alone == "LoRA+ took the task from 50.00% to 70.00%."


def test_the_learned_vs_forgot_reading_names_who_learned_and_who_forgot() -> None:
    points = {"lora": (0.971, 0.95), "full": (0.977, 0.537), "head": (0.938, 0.80)}
    text = readings.read_learned_vs_forgot((0.468, 0.976), points, "plain MNIST")
    assert text.startswith("Full fine-tuning learned the most (task 46.80% → 97.70%)")
    assert "LoRA forgot the least (plain MNIST 97.60% → 95.00%)" in text
    assert "full fine-tuning forgot the most (plain MNIST 97.60% → 53.70%)" in text
    alone = readings.read_learned_vs_forgot((0.5, 0.9), {"lora": (0.8, 0.89)}, "the other digits")
    assert (
        alone == "LoRA learned the most (task 50.00% → 80.00%) and forgot the least (the other digits 90.00% → 89.00%)."
    )


def test_the_learned_vs_forgot_reading_with_no_method_says_so() -> None:
    assert readings.read_learned_vs_forgot((0.5, 0.9), {}, "plain MNIST") == "No method was run."


def test_the_cost_sentence_reads_the_measured_times_and_sizes() -> None:
    sentence = readings.read_rank_cost([1, 4, 16], [0.9, 1.4, 1.2], [28_200, 55_400, 387_700])
    assert sentence == (
        "Training took from 0.9 s (rank 1) to 1.4 s (rank 4); the adapter file grows from 28.2 KB at rank 1 "
        "to 387.7 KB at rank 16 (13.7x)."
    )
    one = readings.read_rank_cost([64], [2.0], [1_600_000])
    assert one == "Rank 64 trained in 2.0 s and its adapter file holds 1.60 MB."
    assert readings.read_rank_cost([], [], []) == "No rank was measured."


def test_the_readings_need_neither_streamlit_nor_plotly() -> None:
    code = "import sys, lora_core.lab.readings; print(sorted({'streamlit', 'plotly'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_times_from_a_busy_machine_are_flagged_with_the_load() -> None:
    from lora_core.lab.readings import read_machine_load

    said = read_machine_load({"loadavg": [3.4, 2.0, 1.0], "cpus": 2})
    assert said is not None and said.startswith("Measured while the machine was busy (load average 3.4 on 2 CPUs")
    assert read_machine_load({"loadavg": [3.0, 2.0, 1.0], "cpus": 2}) is None  # the run's own threads and one more
    for quiet in ({"loadavg": [0.5, 0.5, 0.5], "cpus": 2}, {"loadavg": None, "cpus": 2}, {}, None, {"loadavg": [9]}):
        assert read_machine_load(quiet) is None


def test_the_pareto_front_keeps_what_nothing_beats_and_its_reading_says_what_each_step_buys() -> None:
    points = {
        "lora": (54_352, 0.9704),
        "loraplus": (54_352, 0.9692),  # as many parameters as LoRA, less accuracy
        "dora": (57_362, 0.9697),  # more parameters than LoRA, less accuracy
        "full": (2_807_010, 0.9770),
        "head": (20_010, 0.9380),
    }
    assert readings.pareto_front(points) == ["head", "lora", "full"]
    assert readings.read_pareto(points) == (
        "On the front, from fewest trainable parameters: last layer only, LoRA, full fine-tuning; LoRA adds 3.24 "
        "points for 2.7× the parameters of last layer only; full fine-tuning adds 0.66 points for 51.6× the "
        "parameters of LoRA; LoRA+, DoRA lie off the front: another method does at least as well with no more "
        "trainable parameters."
    )
    tie = {"lora": (10, 0.9), "loraplus": (10, 0.9)}
    assert readings.pareto_front(tie) == ["lora", "loraplus"]
    assert readings.pareto_front({"lora": (10, 0.9)}) == ["lora"]
    assert readings.read_pareto({"lora": (10, 0.9)}).startswith("LoRA is the best buy")


def test_curves_are_read_by_when_each_method_reached_most_of_its_own_gain():
    curves = {
        "lora": [[0, 0.5], [100, 0.80], [200, 0.90], [300, 0.92]],  # 90% of +0.42 is 0.878: step 200
        "pissa": [[0, 0.5], [100, 0.89], [200, 0.91], [300, 0.91]],  # 90% of +0.41 is 0.869: step 100
        "head": [[0, 0.5], [100, 0.49], [200, 0.48], [300, 0.5]],  # no gain at all
    }
    sentence = readings.read_curves(0.5, curves)
    assert sentence == (
        "Each method's first checkpoint at 90% of its own final gain: PiSSA by step 100 (ending at 91.00%); "
        "LoRA by step 200 (ending at 92.00%). Last layer only ended no better than the base's 50.00%."
    )
    assert (
        readings.read_curves(0.5, {"head": curves["head"]}) == "Last layer only ended no better than the base's 50.00%."
    )
