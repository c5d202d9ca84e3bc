"""A link for every view: the fine-tuning page's digit and rank, and the experiment's task and rank, travel in the
address; a link to what is not here says so and shows the default."""

from __future__ import annotations

from pathlib import Path

from conftest import assert_clean, opened_at


def _warnings(at) -> list[str]:  # noqa: ANN001 - AppTest
    return [str(w.value) for w in at.warning]


def test_a_link_opens_the_fine_tuning_page_on_its_digit_and_rank(trained_dir: Path) -> None:
    at = opened_at("finetune", digit="3", rank="4")
    assert_clean(at)
    assert at.selectbox(key="ft_digit").value == 3 and at.number_input(key="ft_rank").value == 4
    assert not _warnings(at)
    at.selectbox(key="ft_digit").set_value(7).run()
    at.number_input(key="ft_rank").set_value(2).run()
    assert at.query_params["digit"] == "7" and at.query_params["rank"] == "2"


def test_a_fine_tuning_link_to_what_is_not_here_shows_the_defaults(trained_dir: Path) -> None:
    at = opened_at("finetune", digit="12", rank="0")
    assert_clean(at)
    warnings = _warnings(at)
    assert any(w.startswith("The link asks for digit `12`, which is not here; showing `") for w in warnings), warnings
    assert "The link asks for rank `0`, which is not here; showing `8` instead." in warnings
    assert at.number_input(key="ft_rank").value == 8


def test_a_link_opens_the_experiment_on_its_task_and_rank(trained_dir: Path) -> None:
    at = opened_at("experiments", task="shift:2,1", rank="2")
    assert_clean(at)
    assert at.selectbox(key="exp_kind").value == "shift" and at.text_input(key="exp_param_shift").value == "2,1"
    assert at.number_input(key="exp_rank").value == 2
    assert at.query_params["task"] == "shift:2,1"
    at.selectbox(key="exp_kind").set_value("invert").run()
    assert at.query_params["task"] == "invert"


def test_an_experiment_link_to_a_task_that_cannot_be_read_shows_the_default(trained_dir: Path) -> None:
    at = opened_at("experiments", task="rotate:400")
    assert_clean(at)
    warnings = _warnings(at)
    assert any(w.startswith("The link asks for task `rotate:400`, which is not a task here (") for w in warnings)
    assert at.selectbox(key="exp_kind").value == "rotate" and at.text_input(key="exp_param_rotate").value == "45"
