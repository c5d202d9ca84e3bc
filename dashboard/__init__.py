"""The Streamlit dashboard: `streamlit run dashboard/app.py`. Pages live in dashboard/views/."""
