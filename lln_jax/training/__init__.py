"""Training: an `Experiment` built once from the config, the loop, evaluation, LinearInit.

- `experiment.py`: `build(config) -> Experiment`, the frozen record of everything a run is
  built from (mesh, shardings, splits, model, scheme, optimizer, steps per epoch, the
  jitted steps, the loop's settings); the only reader of the config besides the entry point;
- `initial_state.py`: the state's structure for a restore, or a fresh state;
- `loop.py`: the end-to-end loop and its epoch ends; `monitor.py`: what a log point checks;
- `evaluation.py`: the ordered pass over a split, and its mAP;
- `linear_init.py`: LinearInit's phase, its own loop on the shared optimizer step;
- `record.py`: `RunRecord`, the loop's bookkeeping saved with every checkpoint;
- `session.py`: the workdir's writers and the lease's fence;
- `trainer.py`: `train_and_evaluate`, which orders them;
- `steps.py`, `train_state.py`, `optim.py`: the pure steps, the state, the optimizer.

Nothing is imported here, so that the config checks can import `optim.py` without the
trainer's dependencies (TensorFlow comes with clu's writers).
"""
