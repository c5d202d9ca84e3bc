"""Entry point of the dashboard: `streamlit run dashboard/app.py`.

Sets up the page, the navigation between the six pages, and the sidebar that shows what is saved.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run` puts dashboard/ on the path, not the project root
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard import state, ui  # noqa: E402

st.set_page_config(page_title="LoRA on MNIST", page_icon=":material/biotech:", layout="wide")

nav = st.navigation(
    [
        st.Page(ui.PAGES["home"], title="Home: the study", icon=":material/home:", default=True),
        st.Page(ui.PAGES["training"], title="Training", icon=":material/model_training:"),
        st.Page(ui.PAGES["evaluation"], title="Evaluation", icon=":material/bar_chart:"),
        st.Page(ui.PAGES["parameters"], title="Parameters", icon=":material/search:"),
        st.Page(ui.PAGES["finetune"], title="LoRA fine-tuning", icon=":material/tune:"),
        st.Page(ui.PAGES["draw"], title="Draw and predict", icon=":material/draw:"),
    ]
)
state.warm_up_torch()
ui.finish_jobs()
ui.sidebar()
nav.run()
