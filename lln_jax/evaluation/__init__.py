"""Evaluation: mAP and its variants (`metrics.py`), and the report over many runs, its
summary tables (`report.py`) and figures (`plots.py`). Runs on the host; knows no model
or training loop.
"""
