"""One run per server, seen by every tab: AppTest runs in-process, so its sessions share the server-wide
job registry exactly like tabs of one `streamlit run` server."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from conftest import assert_clean, click, new_app, texts, visit, wait_for_job

from dashboard import jobs, ui
from lora_core.store.artifacts import ArtifactStore
from lora_core.train import TrainConfig

LONG_TRAINING = TrainConfig(hidden=(64, 64), batch_size=512, epochs=200)  # stopped long before it ends


def start_long_training(at) -> jobs.Job:  # noqa: ANN001 - AppTest
    """Start a training from `at`'s Training page that runs until stopped; wait for its first progress."""
    visit(at, "training")
    at.number_input(key="train_h1").set_value(64)
    at.number_input(key="train_h2").set_value(64)
    at.number_input(key="train_batch").set_value(512)
    at.number_input(key="train_epochs").set_value(200)
    click(at, "Train the base model")
    job = at.session_state["job"]
    assert job is not None and job.running, job and job.error
    deadline = time.monotonic() + 90
    while job.progress is None and job.running and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job.running and job.progress is not None, job.error
    return job


def sidebar_text(at) -> str:  # noqa: ANN001 - AppTest
    return "\n".join(str(e.value) for e in at.sidebar.info)


def test_a_second_tab_sees_the_run_and_cannot_start_another(trained_dir: Path) -> None:
    before = (trained_dir / "base" / "model.safetensors").read_bytes()
    first = new_app()
    job = start_long_training(first)
    try:
        second = visit(new_app(), "finetune")
        assert_clean(second)
        # the second tab sees the first tab's run: its title, its live progress, what it is and since when
        assert job.title in sidebar_text(second) and "another tab" in sidebar_text(second)
        assert "train: step" in sidebar_text(second)
        note = f"{job.title} is running, started at {job.since} in another tab"
        assert any(note in str(i.value) for i in second.info), [i.value for i in second.info]
        assert second.button(key="ft_start").disabled
        assert second.button(key="manage_rename").disabled
        for page, key in (("home", "run_study"), ("training", None)):
            visit(second, page)
            assert note in texts(second)
            if key:
                assert second.button(key=key).disabled
            else:
                submits = second.get("form_submit_button")
                assert submits, "the Training page shows no start button"
                assert all(b.disabled for b in submits), [(b.label, b.disabled) for b in submits]
        # even past the disabled buttons, the registry refuses a second run of the same folder
        try:
            jobs.start_training(ArtifactStore(trained_dir), TrainConfig(hidden=(32, 32)))
        except jobs.RunInProgress as exc:
            assert exc.job is job
        else:
            raise AssertionError("a second run started while the first one was running")
        # the first tab sees its own run as its own
        visit(first, "finetune")
        assert f"{job.title} is running, started at {job.since} in this tab" in texts(first)
        # the second tab stops it from the sidebar
        stop = [b for b in second.sidebar.button if b.label == "Stop this run"]
        assert stop, [b.label for b in second.button]
        stop[0].click().run()
        job.join(60)
        assert job.status == jobs.STOPPED
    finally:
        job.stop()
        job.join(60)
    visit(second, "home")
    assert_clean(second)
    assert not second.button(key="run_study").disabled  # the folder is free again
    assert (trained_dir / "base" / "model.safetensors").read_bytes() == before


def test_the_sidebar_and_the_panel_show_the_same_progress(fresh_dir: Path) -> None:
    at = new_app()
    job = start_long_training(at)
    try:
        os.kill(job.process.pid, signal.SIGSTOP)  # freeze the worker so both displays read one state
        time.sleep(1.5)  # the server's listener has moved every message already sent into the Job
        visit(at, "evaluation")  # no base model yet: the page offers training and shows its panel
        panel = [str(c.value) for c in at.caption if "step" in str(c.value)]
        assert panel and panel[0].startswith(job.step_text()), (panel, job.step_text())
        assert f"{job.step_text()}, {100 * job.fraction():.0f}%" in sidebar_text(at)
        assert job.progress.phase == "train" and 0 < job.fraction() < 1
    finally:
        os.kill(job.process.pid, signal.SIGCONT)
        job.stop()
        job.join(60)
    assert job.status == jobs.STOPPED


def test_a_page_with_its_own_panel_keeps_one_live_refresh(fresh_dir: Path) -> None:
    """The Training page's panel shows the run live; its sidebar names the run and can stop it, but does not
    poll it a second time (each live fragment costs the browser a re-render every refresh)."""
    at = new_app()
    job = start_long_training(at)
    try:
        at.run()
        assert any(str(c.value).startswith("train: step") for c in at.caption)  # the panel: live
        assert "its progress is on this page" in sidebar_text(at)
        assert "train: step" not in sidebar_text(at)
        # the loss curve is drawn live only when asked for: each redraw costs the browser CPU
        assert not at.get("plotly_chart")
        at.toggle(key=ui.LIVE_CHART_KEY).set_value(True).run()
        assert at.get("plotly_chart"), "no live loss curve after switching it on"
        visit(at, "draw")  # a page without a panel for it: the sidebar is the live display
        assert "train: step" in sidebar_text(at)
        visit(at, "training")
        stop = [b for b in at.sidebar.button if b.label == "Stop this run"]
        assert stop, [b.label for b in at.sidebar.button]
        stop[0].click().run()
        job.join(60)
        assert job.status == jobs.STOPPED
    finally:
        job.stop()
        job.join(60)


def test_a_reloaded_tab_reattaches_to_the_run_and_can_stop_it(fresh_dir: Path) -> None:
    job = start_long_training(new_app())  # that tab is then closed or reloaded: its session is gone
    try:
        reloaded = visit(new_app(), "training")
        assert_clean(reloaded)
        assert reloaded.session_state["job"] is job
        assert any(job.title in str(m.value) for m in reloaded.markdown)
        assert any(str(c.value).startswith("train: step") for c in reloaded.caption)
        click(reloaded, "Stop")
        wait_for_job(reloaded, 60)
        assert job.status == jobs.STOPPED
        assert any("Stopped" in str(w.value) for w in reloaded.warning)  # it watched the run, so it sees the end
        # a tab opened after the run ended does not carry it around
        later = visit(new_app(), "training")
        assert later.session_state["job"] is None
        assert not any("Stopped" in str(w.value) for w in later.warning)
    finally:
        job.stop()
        job.join(60)
    assert not ArtifactStore(fresh_dir).has_base()


def test_the_one_click_fine_tune_never_replaces_a_saved_adapter(trained_dir: Path) -> None:
    """'small' (on the weakest digit D) is renamed digit-D and made stale: the offer saves digit-D-2."""
    metrics = json.loads((trained_dir / "adapters" / "small" / "metrics.json").read_text())
    digit = metrics["target_digits"][0]
    taken = trained_dir / "adapters" / f"digit-{digit}"
    (trained_dir / "adapters" / "small").rename(taken)
    before = {p.name: p.read_bytes() for p in taken.iterdir()}
    metrics["base_sha256"] = "0" * 64  # stale: not usable, so the pages offer the one-click fine-tune
    (taken / "metrics.json").write_text(json.dumps(metrics))
    before["metrics.json"] = (taken / "metrics.json").read_bytes()

    at = visit(new_app(), "evaluation")
    assert "never replaces a saved one" in texts(at)
    click(at, next(b.label for b in at.button if b.label.startswith("Fine-tune the weakest digit")))
    job = at.session_state["job"]
    # the name is chosen when the run starts (the default 600 steps are not needed to see it): stop it
    assert job.extra["name"] == f"digit-{digit}-2" and job.title == f"Fine-tuning adapter 'digit-{digit}-2'"
    job.stop()
    wait_for_job(at, 180)
    assert job.status == jobs.STOPPED, job.error
    assert {p.name: p.read_bytes() for p in taken.iterdir()} == before  # the saved one is untouched
    assert sorted(p.name for p in (trained_dir / "adapters").iterdir()) == [f"digit-{digit}"]
    assert_clean(at)


def test_the_whole_study_never_replaces_a_saved_adapter(trained_dir: Path) -> None:
    """With `digit-D` saved (D the base's weakest digit), "Run the whole study" saves `digit-D-2`."""
    metrics = json.loads((trained_dir / "adapters" / "small" / "metrics.json").read_text())
    digit = metrics["target_digits"][0]
    taken = trained_dir / "adapters" / f"digit-{digit}"
    (trained_dir / "adapters" / "small").rename(taken)
    before = {p.name: p.read_bytes() for p in taken.iterdir()}
    at = new_app()
    assert "never replaces a saved one" in texts(at)
    at.number_input(key="study_steps").set_value(20)
    click(at, "Run the whole study")
    job = wait_for_job(at, 180)
    assert job.status == jobs.DONE, job.error
    assert job.result["adapter"]["name"] == f"digit-{digit}-2"
    assert {p.name: p.read_bytes() for p in taken.iterdir()} == before
    assert at.session_state["active_adapter"] == f"digit-{digit}-2"
    assert any(f"digit-{digit}-2" in str(c.value) for c in at.caption)  # the headline names the new adapter
    assert_clean(at)
