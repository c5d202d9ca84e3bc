"""Helpers for the dashboard tests: an AppTest on a private artifacts folder, and waiting for runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from dashboard.ui import PAGES as dashboard_pages

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
PAGES = list(dashboard_pages)  # every page the app registers, so a new page is covered without listing it here


def new_app() -> AppTest:
    """A fresh browser session, already run once (the home page), so that pages can be switched."""
    return AppTest.from_file(APP, default_timeout=120).run()


def visit(at: AppTest, page: str) -> AppTest:
    return at.switch_page(f"views/{page}.py").run()


def opened_at(page: str, **params: str) -> AppTest:
    """A fresh session opening the page's address with these query parameters (a shared link)."""
    at = AppTest.from_file(APP, default_timeout=120)
    for name, value in params.items():
        at.query_params[name] = value
    return at.switch_page(f"views/{page}.py").run()


def app_with_active(adapter: str) -> AppTest:
    """A fresh session with `adapter` active (as a finished run leaves it), already run once."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["active_adapter"] = adapter
    return at.run()


def wait_for_job(at: AppTest, timeout: float = 120) -> object:
    """Join the session's background run, then rerun the page so it shows the outcome."""
    job = at.session_state["job"]
    job.join(timeout)
    assert not job.running, "the background run did not finish in time"
    at.run()
    return job


def assert_clean(at: AppTest) -> None:
    """No exception element on the page (a traceback would be one)."""
    assert not at.exception, [e.value for e in at.exception]


def click(at: AppTest, label: str) -> AppTest:
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; buttons: {[b.label for b in at.button]}"
    return matches[0].click().run()


def vega_charts(at: AppTest) -> list[tuple[dict, pd.DataFrame]]:
    """Each Vega-Lite chart on the page (charts.per_digit_bars, ...) as drawn: its spec, and the rows Streamlit
    took out of the spec to send them as Arrow."""
    charts = []
    for chart in at.get("vega_lite_chart"):
        rows = convert_arrow_bytes_to_pandas_df(chart.proto.data.data) if chart.proto.data.data else pd.DataFrame()
        charts.append((json.loads(chart.proto.spec), rows))
    return charts


def chart_title(spec: dict) -> str:
    """A Vega-Lite spec's title ('' for a chart without one, such as the weight maps)."""
    title = spec.get("title") or ""
    return title if isinstance(title, str) else title.get("text", "")


def texts(at: AppTest) -> str:
    """All visible text-ish elements joined, for simple `in` checks."""
    parts: list[str] = []
    for group in (
        at.title,
        at.header,
        at.subheader,
        at.markdown,
        at.caption,
        at.info,
        at.success,
        at.warning,
        at.error,
    ):
        parts += [str(e.value) for e in group]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    return "\n".join(parts)


@pytest.fixture
def fresh_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "artifacts"
    root.mkdir()
    monkeypatch.setenv("LORA_ARTIFACTS_DIR", str(root))
    return root


def private_copy(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of an artifacts folder that the app under test reads and writes ($LORA_ARTIFACTS_DIR)."""
    root = tmp_path / "artifacts"
    shutil.copytree(source, root)
    monkeypatch.setenv("LORA_ARTIFACTS_DIR", str(root))
    return root


@pytest.fixture
def trained_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trained_artifacts: Path) -> Path:
    return private_copy(trained_artifacts, tmp_path, monkeypatch)


@pytest.fixture
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, saved_results: Path) -> Path:
    """A private copy of the saved experiment, sweep and analysis results (with the rotate-45 adapter)."""
    return private_copy(saved_results, tmp_path, monkeypatch)
