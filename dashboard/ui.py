"""Streamlit pieces shared by the pages: the sidebar, the live job panel, "needs a base model" offers,
and errors shown next to the field they are about."""

from __future__ import annotations

from datetime import datetime

import streamlit as st

from dashboard import charts, jobs, state
from lora_core.errors import ConfigError
from lora_core.storage import BaseModelRecord
from lora_core.train import FinetuneConfig, TrainConfig

PAGES = {
    "home": "views/home.py",
    "training": "views/training.py",
    "evaluation": "views/evaluation.py",
    "parameters": "views/parameters.py",
    "finetune": "views/finetune.py",
    "draw": "views/draw.py",
}
TRAIN_LABEL = "Train the base model (1 epoch, about 15 s)"
FINETUNE_LABEL = "Fine-tune the weakest digit with LoRA (about 10 s)"


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def when(iso: str | None) -> str:
    if not iso:
        return "unknown time"
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return iso


# --- jobs ----------------------------------------------------------------------------------------------
def current_job() -> jobs.Job | None:
    return st.session_state.get(jobs.JOB_KEY)


def set_job(job: jobs.Job | None) -> None:
    st.session_state[jobs.JOB_KEY] = job


def busy() -> bool:
    job = current_job()
    return job is not None and job.running


def finish_jobs() -> None:
    """After a run ends: make a freshly saved adapter the session's active one (once)."""
    job = current_job()
    if job is None or job.running or job.extra.get("finished_handled"):
        return
    job.extra["finished_handled"] = True
    if job.status != jobs.DONE:
        return
    if job.kind == "finetune":
        state.set_active_adapter(job.result.outcome.name)
    elif job.kind == "study":
        state.set_active_adapter(job.result["adapter"]["name"])


def job_panel(kinds: tuple[str, ...] | None = None) -> jobs.Job | None:
    """Show the session's run (if any, and of one of `kinds`): live while it runs, then its outcome."""
    job = current_job()
    if job is None or (kinds is not None and job.kind not in kinds):
        return None
    st.fragment(run_every=0.5 if job.running else None)(_job_view)(job)
    return job


def _job_view(job: jobs.Job) -> None:
    with st.container(border=True):
        st.markdown(f"**{job.title}**")
        p = job.progress
        if job.running:
            if p is None:
                st.progress(0.0)
                st.caption(f"Starting... ({job.seconds:.0f} s; the very first steps also warm up PyTorch)")
            else:
                st.progress(min(1.0, p.fraction))
                st.caption(
                    f"{p.phase}: step {p.step:,} of {p.total_steps:,} · {p.samples_per_s:,.0f} samples/s · "
                    f"ETA {p.eta_s:.0f} s · loss {p.loss:.4f}"
                )
            if st.button("Stop", key=f"stop-{id(job)}", type="secondary"):
                job.stop()
                st.info("Stopping after the current step...")
        losses, phases = job.history()
        if losses:
            st.plotly_chart(charts.loss_curve(losses, phases, title="Loss (live)"), width="stretch")
        if job.running:
            return
        if not job.announced:  # the run just ended: refresh the whole page once
            job.announced = True
            st.rerun()
        if job.status == jobs.DONE:
            st.success(f"Finished in {job.seconds:.1f} s; the result is saved in the artifacts folder.")
        elif job.status == jobs.STOPPED:
            st.warning(f"Stopped: {str(job.error).rstrip('.')}. The previously saved work is untouched.")
        else:
            st.error(f"The run failed and saved nothing: {job.error}")
            if job.extra.get("traceback"):
                with st.expander("Details"):
                    st.code(job.extra["traceback"])
        if st.button("Dismiss", key=f"dismiss-{id(job)}"):
            set_job(None)
            st.rerun()


def busy_note() -> None:
    job = current_job()
    if job is not None and job.running:
        st.info(f"{job.title} is running; start another run when it has finished (or stop it).")


# --- needs a base model / an adapter ----------------------------------------------------------------
def require_base(purpose: str) -> BaseModelRecord:
    """Return the saved base model, or explain what is missing, offer to train it, and stop the page."""
    status = state.base_status()
    if status.record is not None:
        return status.record
    if status.error:
        st.error(f"The saved base model cannot be loaded: {status.error}")
        st.write("Train a new one to replace it:")
    else:
        st.warning(f"There is no base model yet. {purpose} needs one.")
    offer_training()
    st.stop()
    raise AssertionError("unreachable")


def offer_training() -> None:
    """One click to train the default base model right here, or a link to the Training page."""
    job = job_panel(("train", "study"))
    if job is None or not job.running:
        if st.button(TRAIN_LABEL, type="primary", disabled=busy(), key="offer-train"):
            set_job(jobs.start_training(state.store(), TrainConfig()))
            st.rerun()
        busy_note()
    st.page_link(
        PAGES["training"], label="Choose the training settings on the Training page", icon=":material/model_training:"
    )


def offer_finetune(base: BaseModelRecord) -> None:
    """One click to fine-tune the default adapter on the weakest digit, or a link to the page."""
    job = job_panel(("finetune", "study"))
    if job is None or not job.running:
        if st.button(FINETUNE_LABEL, type="primary", disabled=busy(), key="offer-finetune"):
            evaluation = state.base_evaluation(base)
            digit = evaluation.weakest_digit
            name = f"digit-{digit}"
            existing = {a.name for a in state.adapters(base.fingerprint)}
            config = FinetuneConfig(digits=(digit,))
            set_job(jobs.start_finetune(state.store(), base, config, name, name in existing, evaluation))
            st.rerun()
        busy_note()
    st.page_link(PAGES["finetune"], label="Choose the LoRA settings on the Fine-tuning page", icon=":material/tune:")


def counts(*columns: str) -> dict[str, object]:
    """column_config that shows these integer columns with thousands separators."""
    return {c: st.column_config.NumberColumn(c, format="localized") for c in columns}


# --- errors next to fields ---------------------------------------------------------------------------
class FieldSlots:
    """Placeholders right under form fields, so a ConfigError appears beside the field it names."""

    def __init__(self) -> None:
        self.slots: dict[str, st.delta_generator.DeltaGenerator] = {}

    def add(self, *fields: str) -> None:
        slot = st.empty()
        for f in fields:
            self.slots[f] = slot

    def show(self, exc: ConfigError, label: str | None = None) -> None:
        text = f"**{label or exc.field}**: {exc.reason}. Change it and try again; nothing was saved."
        slot = self.slots.get(exc.field)
        (slot if slot is not None else st).error(text)


# --- sidebar -------------------------------------------------------------------------------------------
def sidebar() -> None:
    """What exists: the base model, the adapters, which one is active, and any running job."""
    with st.sidebar:
        st.subheader("Saved work")
        status = state.base_status()
        if status.record is not None and status.meta is not None:
            meta = status.meta
            acc = meta.get("metrics", {}).get("accuracy")
            hidden = meta.get("architecture", {}).get("hidden", [])
            st.markdown(
                f"**Base model** · {pct(acc) if acc is not None else '?'} test accuracy  \n"
                f"784-{'-'.join(map(str, hidden))}-10 · trained {when(meta.get('created'))}"
            )
        elif status.error:
            st.error(f"Base model unreadable: {status.error}")
        else:
            st.markdown("**Base model** · none yet")
        infos = state.adapters(status.sha)
        active = state.active_adapter(status.sha)
        if not infos:
            st.markdown("**Adapters** · none yet")
        else:
            st.markdown("**Adapters**")
            lines = []
            for a in infos:
                cfg = a.record.config
                if a.status == "broken":
                    lines.append(f"- :material/warning: `{a.name}` · broken")
                    continue
                target = ", ".join(map(str, a.targets)) or "?"
                mark = " · **active**" if a.name == active else ""
                stale = " · stale (other base)" if a.status == "stale" else ""
                lines.append(f"- `{a.name}` · digit {target} · r={cfg.r if cfg else '?'}{mark}{stale}")
            st.markdown("\n".join(lines))
        if active:
            enabled = "enabled" if state.adapters_enabled() else "disabled"
            st.caption(f"Active adapter: {active} ({enabled})")
        else:
            st.caption("Active adapter: none (the plain base model)")
        job = current_job()
        if job is not None and job.running:
            frac = job.progress.fraction if job.progress else 0.0
            st.info(f"{job.title}: {100 * frac:.0f}%")
        st.caption(f"Artifacts: {state.store().root}")
