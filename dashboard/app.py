"""Entry point of the dashboard: `streamlit run dashboard/app.py`.

Sets up the page, the navigation between the pages, and the sidebar that shows what is saved.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run` puts dashboard/ on the path, not the project root
    sys.path.insert(0, str(ROOT))


def main() -> None:
    import streamlit as st

    from dashboard import workers

    workers.warm()  # first: the forkserver imports PyTorch while this server imports it for the first page

    from dashboard import ui

    st.set_page_config(page_title="LoRA on MNIST", page_icon=":material/biotech:", layout="wide")
    pages = {
        "home": st.Page(ui.PAGES["home"], title="Home: the study", icon=":material/home:", default=True),
        "training": st.Page(ui.PAGES["training"], title="Training", icon=":material/model_training:"),
        "evaluation": st.Page(ui.PAGES["evaluation"], title="Evaluation", icon=":material/bar_chart:"),
        "parameters": st.Page(ui.PAGES["parameters"], title="Parameters", icon=":material/search:"),
        "finetune": st.Page(ui.PAGES["finetune"], title="LoRA fine-tuning", icon=":material/tune:"),
        "draw": st.Page(ui.PAGES["draw"], title="Draw and predict", icon=":material/draw:"),
        "experiments": st.Page(ui.PAGES["experiments"], title="Experiments", icon=":material/science:"),
        "insight": st.Page(ui.PAGES["insight"], title="Insight", icon=":material/insights:"),
        "mydigits": st.Page(ui.PAGES["mydigits"], title="My digits", icon=":material/edit_note:"),
    }
    nav = st.navigation(list(pages.values()))
    shown = next((key for key, page in pages.items() if page.title == nav.title), None)
    ui.finish_jobs()
    ui.sidebar(shown)
    nav.run()


# Streamlit runs this file as "__main__" (and installs it as sys.modules["__main__"]). A background run's
# worker (dashboard.jobs: "forkserver", or "spawn") first imports the parent's main script again, as
# "__mp_main__": without this guard, every run executed the whole app there, outside
# Streamlit, and printed "missing ScriptRunContext!" and "Session state does not function..." to the
# server's terminal. (Python's multiprocessing docs: "Safe importing of main module".)
if __name__ == "__main__":
    main()
