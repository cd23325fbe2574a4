"""The standalone DTG page (gradio) and its server; started by `python -m dtg_lib serve`.

Kept apart from dtg_lib because it imports gradio, which the engine must never do.
"""
