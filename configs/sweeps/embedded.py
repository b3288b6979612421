"""The embedded benchmark's table: every setting of `benchmarks/embedded.py`, three seeds.

    python -m lln_jax.sweep --sweep=configs/sweeps/embedded.py --runs=runs/embedded \
      --platform=cpu --processes=2
"""

from lln_jax.run.sweep import Cell

SETTINGS = {  # Table row -> the config argument (as benchmarks/embedded.py names them).
    "Full labels": "scheme=an,labels=full",
    "AN (assume negative)": "scheme=an",
    "AN-LS": "scheme=an_ls",
    "WAN": "scheme=wan",
    "EPR": "scheme=epr",
    "ROLE": "scheme=role",
    "EM": "scheme=em",
    "LL-R": "scheme=ll_r",
    "LL-Ct": "scheme=ll_ct",
    "LL-Cp": "scheme=ll_cp",
    "LL-R + BoostLU": "scheme=ll_r,boostlu",
    "LL-Ct + BoostLU": "scheme=ll_ct,boostlu",
    "LL-Cp + BoostLU": "scheme=ll_cp,boostlu",
    "GR": "scheme=gr",
}
SEEDS = (0, 1, 2)

CELLS = [
    Cell(f"{arg.replace(',', '-')}-seed{seed}", f"configs/digits.py:{arg}", seed)
    for arg in SETTINGS.values()
    for seed in SEEDS
]
