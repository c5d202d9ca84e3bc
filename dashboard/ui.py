"""Streamlit pieces shared by the pages: the sidebar, the live job panel, "needs a base model" offers,
and errors shown next to the field they are about."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import datetime
from typing import Any, TypeVar

import streamlit as st

from dashboard import charts, jobs, state
from lora_core.errors import ConfigError
from lora_core.lab.study import default_adapter_name
from lora_core.numbers import pct
from lora_core.precision import resolve_precision
from lora_core.store.artifacts import BaseModelRecord, describe_holder
from lora_core.train import FinetuneConfig, TrainConfig, resolve_device

PAGES = {
    "home": "views/home.py",
    "training": "views/training.py",
    "evaluation": "views/evaluation.py",
    "parameters": "views/parameters.py",
    "finetune": "views/finetune.py",
    "draw": "views/draw.py",
    "experiments": "views/experiments.py",
    "insight": "views/insight.py",
    "mydigits": "views/mydigits.py",
}
# No time in the labels: how long a run takes depends on the machine (see last_run_seconds)
TRAIN_LABEL = f"Train the base model ({TrainConfig().epochs} epoch of 60,000 images)"
FINETUNE_LABEL = f"Fine-tune the weakest digit with LoRA ({FinetuneConfig().steps} steps)"
NEW_NAME_NOTE = "A new adapter never replaces a saved one: if `digit-9` is taken, the new one is saved as `digit-9-2`."


def when(iso: str | None) -> str:
    if not iso:
        return "unknown time"
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return iso


# --- jobs ---------------------------------------------------------------------------------------------
# The run itself is server-wide (jobs.REGISTRY): every tab shows it while it runs and can stop it. What
# each tab remembers is only which ended runs to show: those it started or watched while they ran,
# until it dismisses them. The tab that started a run also gets its result (a new adapter made active).
# While a run goes on, every open tab re-runs its progress fragment on this period. Measured with the whole
# study started from the Home page in Chromium on 2 cores (benchmarks item 9): whatever the server
# and the browser spend on refreshing is taken from the training. Without a live chart, refreshing every
# 0.5 s left the page's study at 0.64x of the CLI's speed, 1 s at 0.71x, 2 s at 0.77x; redrawing the Plotly
# loss curve every 3 s cost the browser about 0.5 CPU-seconds each time, hence opt-in (LIVE_CHART_KEY).
PROGRESS_REFRESH_S = 1.0
CHART_REFRESH_S = 5.0
LIVE_CHART_KEY = "live_loss_curve"
LIVE_CHART_POINTS = 300  # per phase; the finished run's chart shows every step

# The kinds of run whose live panel each page shows (the pages pass these to job_panel). On such a page the
# sidebar names the run without refreshing it as well: one live fragment per tab, not two.
JOB_PANELS: dict[str, tuple[str, ...]] = {
    "home": ("study",),
    "training": tuple(jobs.KIND_TITLES),
    "finetune": ("finetune",),
    "experiments": ("experiment", "sweep"),
    "insight": ("analysis", "intruders"),
    "mydigits": ("personal",),
}

JOB_KEY = "job"  # the Job this tab shows now (None if none), kept for the pages and the tests
_SEEN_KEY = "_jobs_seen"
_ANNOUNCED_KEY = "_jobs_announced"
_HANDLED_KEY = "_jobs_handled"
_TAB_KEY = "_tab_id"


def tab_id() -> str:
    """An id for this browser tab (Streamlit session), to know which tab started a run."""
    if _TAB_KEY not in st.session_state:
        st.session_state[_TAB_KEY] = uuid.uuid4().hex
    return str(st.session_state[_TAB_KEY])


def _ids(key: str) -> set[str]:
    return st.session_state.setdefault(key, set())


def current_job() -> jobs.Job | None:
    """The run this tab shows: the one going on now (whichever tab started it), or the last one it saw."""
    job = jobs.REGISTRY.latest(state.store())
    if job is not None and job.running:
        _ids(_SEEN_KEY).add(job.id)
    elif job is not None and job.id not in _ids(_SEEN_KEY):
        job = None
    st.session_state[JOB_KEY] = job
    return job


def start_job(start: Callable[..., jobs.Job], *args: Any) -> None:
    """Start a run through jobs.REGISTRY, or say which run holds the folder; then refresh the page."""
    try:
        job = start(*args, owner=tab_id())
    except jobs.RunInProgress as exc:
        st.warning(f"Not started: {exc.job.title} started at {exc.job.since} is still running.")
        return
    except OSError as exc:  # the worker process could not be started (out of processes, files, memory)
        st.error(f"The run could not be started: {exc}. Nothing was changed; free some resources and try again.")
        return
    _ids(_SEEN_KEY).add(job.id)
    st.session_state[JOB_KEY] = job
    st.rerun()


def busy() -> bool:
    """A run writes the artifacts folder now: this server's, or another program's (the CLI)."""
    return jobs.REGISTRY.running(state.store()) is not None or state.store().writer() is not None


def finish_jobs() -> None:
    """After a run this tab started has ended: make its freshly saved adapter active here (once)."""
    job = current_job()
    if job is None or job.running or job.owner != tab_id() or job.id in _ids(_HANDLED_KEY):
        return
    _ids(_HANDLED_KEY).add(job.id)
    if job.status != jobs.DONE:
        return
    if job.kind == "finetune":
        state.set_active_adapter(job.result.name)
    elif job.kind == "study":
        state.set_active_adapter(job.result["adapter"]["name"])
    elif job.kind == "experiment" and jobs.experiment_adapter(job.result):
        state.set_active_adapter(jobs.experiment_adapter(job.result))


def job_panel(kinds: tuple[str, ...]) -> jobs.Job | None:
    """Show the run (if any, and of one of `kinds`): live while it runs, then its outcome."""
    job = current_job()
    if job is None or job.kind not in kinds:
        return None
    st.fragment(run_every=PROGRESS_REFRESH_S if job.running else None)(_job_view)(job)
    st.fragment(run_every=CHART_REFRESH_S if job.running else None)(_job_chart)(job)
    return job


def _announce_end(job: jobs.Job) -> None:
    """The run just ended: refresh the whole page once in this tab (sidebar, saved work, results)."""
    if job.id not in _ids(_ANNOUNCED_KEY):
        _ids(_ANNOUNCED_KEY).add(job.id)
        st.rerun()


def _started_by(job: jobs.Job) -> str:
    return "this tab" if job.owner == tab_id() else "another tab"


def _job_view(job: jobs.Job) -> None:
    with st.container(border=True):
        st.markdown(f"**{job.title}** · started {job.since} in {_started_by(job)}")
        p = job.progress
        if job.running:
            st.progress(job.fraction())
            if p is None:
                st.caption(f"Starting... ({job.seconds:.0f} s; the very first steps also warm up PyTorch)")
            else:
                st.caption(
                    f"{job.step_text()} · {p.samples_per_s:,.0f} samples/s · ETA {p.eta_s:.0f} s · loss {p.loss:.4f}"
                )
            if st.button("Stop", key=f"stop-{job.id}", type="secondary"):
                job.stop()
                st.info("Stopping after the current step...")
        if job.running:
            return
        if job.status == jobs.DONE:
            st.success(f"Finished in {job.seconds:.1f} s; the result is saved in the artifacts folder.")
        elif job.status == jobs.STOPPED:
            st.warning(f"Stopped: {str(job.error).rstrip('.')}. The previously saved work is untouched.")
        else:
            st.error(f"The run failed and saved nothing: {job.error}")
            if job.extra.get("traceback"):
                with st.expander("Details"):
                    st.code(job.extra["traceback"])
        _announce_end(job)  # after the outcome: the tab shows it at once, then reloads the page's results
        if st.button("Dismiss", key=f"dismiss-{job.id}"):
            _ids(_SEEN_KEY).discard(job.id)
            st.session_state[JOB_KEY] = None
            st.rerun()


def _job_chart(job: jobs.Job) -> None:
    """The run's loss curve: at the end of the run, or while it runs if the user asks for it (then redrawn
    every CHART_REFRESH_S with at most LIVE_CHART_POINTS per phase: each redraw costs the browser CPU that
    the training on the same machine would use)."""
    losses, phases = job.history()
    if job.running:
        live = st.toggle(
            "Draw the loss curve live",
            key=LIVE_CHART_KEY,
            help=f"Redrawn every {CHART_REFRESH_S:.0f} s while the run goes on. Off, it is drawn when the run "
            "ends: drawing charts takes CPU from the training when the browser runs on the same machine.",
        )
        if live and losses:
            chart = charts.loss_curve(losses, phases, title="Loss (live)", max_points=LIVE_CHART_POINTS)
            st.plotly_chart(chart, width="stretch")
    elif losses:
        st.plotly_chart(charts.loss_curve(losses, phases, title="Loss"), width="stretch")


def _sidebar_separate_bases() -> None:
    """The separate bases (bases/unseen-8-9) and their adapters: not usable on the main base, so listed apart,
    with where to see them."""
    others = [v for v in state.base_views() if not v.is_main]
    if not others:
        return
    lines = []
    for view in others:
        status = state.base_status(view.store)
        infos = state.adapters(status.sha, view.store)
        named = ", ".join(f"`{a.name}` · {a.label}" for a in infos) or "no adapter yet"
        lines.append(f"- {view.label}: {named}")
    st.markdown("**Other base models**  \n" + "\n".join(lines))
    st.caption("Choose one with *Base model* on the Evaluation, Parameters and Draw pages.")


def _sidebar_job(job: jobs.Job) -> None:
    """The run in the sidebar of every page: the same phase and fraction as the panel, and a Stop button."""
    if not job.running:
        _announce_end(job)
        return
    st.info(f"{job.title} ({_started_by(job)}): {job.step_text()}, {100 * job.fraction():.0f}%")
    st.progress(job.fraction())
    if st.button("Stop this run", key=f"sidebar-stop-{job.id}"):
        job.stop()


def _sidebar_job_named(job: jobs.Job) -> None:
    """The run in the sidebar of a page whose own panel shows its live progress."""
    st.info(f"{job.title} ({_started_by(job)}): its progress is on this page.")
    if st.button("Stop this run", key=f"sidebar-stop-{job.id}"):
        job.stop()


def busy_note() -> None:
    """Why the start buttons are disabled: what is running and since when."""
    job = jobs.REGISTRY.running(state.store())
    if job is not None:
        st.info(
            f"{job.title} is running, started at {job.since} in {_started_by(job)}. Only one run at a time can "
            "write the saved work: start another when it has finished, or stop it."
        )
        return
    holder = state.store().writer()
    if holder is not None:
        st.info(
            f"Another program is writing the artifacts folder: {describe_holder(holder)}. "
            "Start a run when it has finished."
        )


# --- needs a base model / an adapter ----------------------------------------------------------------
def require_base(purpose: str, view: state.BaseView | None = None) -> BaseModelRecord:
    """Return the saved base model (the main one, or `view`'s), or explain what is missing, offer to train
    it, and stop the page."""
    if view is not None and not view.is_main:
        return _require_separate_base(view)
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


def _require_separate_base(view: state.BaseView) -> BaseModelRecord:
    """A separate base (bases/<name>) is only read here: if it cannot be loaded, say so and point back."""
    status = state.base_status(view.store)
    if status.record is not None:
        return status.record
    st.error(
        f"The {view.label} ({view.store.base_dir}) cannot be loaded: {status.error or 'it is not there any more'}. "
        "Choose the main base model above, or run its experiment again on the Experiments page."
    )
    st.stop()
    raise AssertionError("unreachable")


def base_selector(key: str) -> state.BaseView:
    """Which base model the page shows: the main one, or a separate base an experiment trained (unseen
    digits), whose adapters belong to it alone. Shown only where such a base exists; the choice holds for
    the session's Evaluation, Parameters and Draw pages. `key` names this page's widget."""
    views = state.base_views()
    if len(views) == 1:
        return views[0]
    names = [v.name for v in views]
    current = state.chosen_view().name
    labels = {v.name: v.label for v in views}
    st.selectbox(
        "Base model",
        names,
        index=names.index(current),
        format_func=lambda n: labels[n],
        key=key,
        on_change=lambda: state.set_base_view(str(st.session_state[key])),
        help="A separate base (trained by an experiment without some digits) has adapters of its own, which "
        "only apply to it. Fine-tuning and the other runs always use the main base model.",
    )
    view = state.chosen_view()
    if not view.is_main:
        st.caption(f"Showing the {view.label} and its adapters, from {view.store.root}.")
    return view


def offer_training() -> None:
    """One click to train the default base model right here, or a link to the Training page."""
    job = job_panel(("train", "study"))
    if job is None or not job.running:
        if st.button(TRAIN_LABEL, type="primary", disabled=busy(), key="offer-train"):
            start_job(jobs.start_training, state.store(), TrainConfig())
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
            store = state.store()
            name = store.unused_adapter_name(default_adapter_name((digit,)))
            config = FinetuneConfig(digits=(digit,))
            start_job(jobs.start_finetune, store, base, config, name, False, evaluation)
        st.caption(NEW_NAME_NOTE)
        busy_note()
    st.page_link(PAGES["finetune"], label="Choose the LoRA settings on the Fine-tuning page", icon=":material/tune:")


# --- links: a view's settings in the URL's query parameters ------------------------------------------------------
def linked_choice(param: str, key: str, options: Sequence[Any], what: str, default: Any) -> Any:
    """The option the page's URL names for `param` (?adapter=digit-9), for the widget `key` when it first appears
    in this session (afterwards the widget's own state wins, and `link` writes it back to the URL); `default`
    otherwise. A value that is not among `options` is said on the page, and the default is shown."""
    raw = st.query_params.get(param)
    if raw is None or key in st.session_state:
        return default
    by_text = {_link_text(option): option for option in options}
    if raw in by_text:
        return by_text[raw]
    st.warning(f"The link asks for {what} `{raw}`, which is not here; showing `{_link_text(default)}` instead.")
    return default


def link(param: str, value: Any) -> None:
    """Put a setting of the view into the URL, so that its address opens the same view."""
    text = _link_text(value)
    if st.query_params.get(param) != text:
        st.query_params[param] = text


DORA_HAS_NO_STRENGTH = (
    "A DoRA adapter rescales each row of W instead of adding an update to it, so it has no strength to turn down: "
    "it is shown as trained."
)


def strength_slider(key: str) -> float:
    """The adapter-strength control (lora_core.lab.strength's grid), kept in the URL as `strength`."""
    from lora_core.lab.strength import STRENGTHS

    strength = st.select_slider(
        "Adapter strength",
        options=STRENGTHS,
        value=linked_choice("strength", key, STRENGTHS, "strength", 1.0),
        format_func=lambda s: f"{s:g}",
        key=key,
        help="Scales the adapter's update s·(α/r)·B·A (PEFT's adapter scale): 0 is the base model exactly, "
        "1 the adapter as trained.",
    )
    link("strength", strength)
    return strength


def _link_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def choose_adapter(
    base: BaseModelRecord, label: str, key: str, none_note: str, view: state.BaseView | None = None
) -> state.AdapterInfo | None:
    """A select box of the adapters usable with `base`, on the session's active one by default; with none
    saved, say what the page shows instead (`none_note`) and offer to fine-tune one. On a separate base
    (`view`), its own adapters, the newest first by default; the main base's active adapter is left as is."""
    if view is not None and not view.is_main:
        return _choose_separate_adapter(base, label, f"{key}-{view.name}", none_note, view)
    usable = state.usable_adapters(base.fingerprint)
    if not usable:
        st.info(f"There is no adapter yet: {none_note}")
        offer_finetune(base)
        return None
    names = [a.name for a in usable]
    active = state.active_adapter(base.fingerprint)
    default = linked_choice("adapter", key, names, "adapter", active if active in names else names[0])
    chosen = st.selectbox(label, names, index=names.index(default), key=key, help="Defaults to the active one.")
    link("adapter", chosen)
    return usable[names.index(chosen)]


def _choose_separate_adapter(
    base: BaseModelRecord, label: str, key: str, none_note: str, view: state.BaseView
) -> state.AdapterInfo | None:
    usable = state.usable_adapters(base.fingerprint, view.store)
    if not usable:
        st.info(f"The {view.label} has no adapter yet: {none_note} Its experiment trains one (Experiments page).")
        return None
    usable = sorted(usable, key=lambda a: str((a.record.metrics or {}).get("created", "")), reverse=True)
    names = [a.name for a in usable]
    chosen = st.selectbox(
        label,
        names,
        key=key,
        help=f"The adapters trained on the {view.label}, newest first.",
    )
    return usable[names.index(chosen)]


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


# --- precision ---------------------------------------------------------------------------------------
PRECISION_HELP = (
    "fp32: everything in float32. "
    "bf16: the forward pass and the loss run under bfloat16 autocast (faster only on hardware with fast "
    "bfloat16 matmuls); weights, gradients, Adam's states and the saved files stay float32. "
    "auto: bf16 only where a quick matmul probe measures it faster on this device, fp32 elsewhere; a saved "
    "run records the choice and the speed-up measured. "
    "Evaluation always runs in float32."
)


def check_precision_available(precision: str, device: str) -> None:
    """Refuse a forced bf16 before the run starts where this device cannot run it (a ConfigError for the
    field); "auto" falls back to fp32 by itself, and its probe is left to the run."""
    if precision == "bf16":
        resolve_precision(precision, resolve_device(device))


def precision_note(record: dict[str, Any]) -> str:
    """The precision a saved run used and why, from model.json's `training` or metrics.json's `finetune`."""
    used = record.get("precision_used")
    if not used:
        return "fp32 (not recorded)"  # saved before the precision setting existed: always float32
    reason = str(record.get("precision_reason") or "")
    reason = reason.removeprefix(f"{used}: ")
    return f"{used} — {reason}" if reason else str(used)


# --- sidebar -------------------------------------------------------------------------------------------
def sidebar(page: str | None = None) -> None:
    """What exists: the base model, the adapters, which one is active, and any running job (live, unless
    `page`, the key of the page shown, has a live panel of its own for it)."""
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
                if a.status == "broken":
                    lines.append(f"- :material/warning: `{a.name}` · broken")
                    continue
                mark = " · **active**" if a.name == active else ""
                stale = " · stale (other base)" if a.status == "stale" else ""
                lines.append(f"- `{a.name}` · {a.label} · {a.rank_text}{mark}{stale}")
            st.markdown("\n".join(lines))
        _sidebar_separate_bases()
        if active:
            enabled = "enabled" if state.adapters_enabled() else "disabled"
            st.caption(f"Active adapter: {active} ({enabled})")
        else:
            st.caption("Active adapter: none (the plain base model)")
        job = current_job()
        if job is not None and job.running and job.kind in JOB_PANELS.get(page or "", ()):
            _sidebar_job_named(job)
        elif job is not None:
            st.fragment(run_every=PROGRESS_REFRESH_S if job.running else None)(_sidebar_job)(job)
        else:
            holder = state.store().writer()
            if holder is not None:
                st.info(f"Another program is writing the saved work: {describe_holder(holder)}")
        st.caption(f"Artifacts: {state.store().root}")


# --- work computed once in the server's background pool (state's curves and maps) ---------------------------------
WAIT_POLL_S = 1.0
Result = TypeVar("Result")


def background_results(
    futures: Sequence[Future[Result]], waiting: str, failed: str, meanwhile: Callable[[], None] | None = None
) -> list[Result] | None:
    """The futures' results once all are done. Until then None, and in their place `meanwhile` (what the page
    can show already) with `waiting` under it, in a section that looks again every second and reruns the page
    when they are done (the page never waits on the pool). A failure shows `failed` and the error, and gives None."""
    if not all(f.done() for f in futures):
        st.fragment(run_every=WAIT_POLL_S)(_waiting_for)(futures, waiting, meanwhile)
        return None
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        st.error(f"{failed}: {state.describe_error(errors[0])}")
        return None
    return [f.result() for f in futures]


def _waiting_for(futures: Sequence[Future[Any]], waiting: str, meanwhile: Callable[[], None] | None) -> None:
    if all(f.done() for f in futures):
        st.rerun()
    if meanwhile is not None:
        meanwhile()
    st.caption(f":material/hourglass_top: {waiting}")
