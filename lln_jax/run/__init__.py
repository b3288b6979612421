"""Run infrastructure that knows no model, loss or data set.

The workdir and its config checks (`workdir.py`), its lease (`workdir_lock.py`, which tells
a live owner from a later process of the same pid by `process_identity.py`), the run's
identity (`run_identity.py`), agreed stop requests (`stop_request.py`), atomic writes
(`atomic_write.py`), multi-host start-up (`distributed.py`), the device mesh and its
shardings (`sharding.py`) and checkpoints (`checkpointing.py`). Imports nothing else of
the package.
"""
