"""Configs: what `configs/*.py` build on (`defaults.py`: the argument parser, the paper's
setting, the optimizers, the recipes' overrides) and the checks every resolved config
passes before anything heavy starts (`checks.py`)."""
