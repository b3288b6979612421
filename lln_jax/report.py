"""Command line: `python -m lln_jax.report RUN_DIR... --out=DIR` (`evaluation/report.py`)."""

from lln_jax.evaluation import report

if __name__ == "__main__":
    report.run_command()
