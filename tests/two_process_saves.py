"""One of two processes that save the best and then the latest state at one step, N times.

Started by `multiprocess_test.py` with the multi-process environment (`LLN_MULTIHOST=1`,
...): the pattern of every epoch end whose checkpoint barriers once collided.

    python tests/two_process_saves.py DIRECTORY REPEATS
"""

import sys

from lln_jax.run import distributed

distributed.initialize()

import jax  # noqa: E402  (after the runtime is up)
import numpy as np  # noqa: E402

from lln_jax.run import checkpointing, sharding  # noqa: E402


def main(directory: str, repeats: int) -> None:
    replicated = sharding.replicated(sharding.create_mesh())
    start = np.arange(4096, dtype=np.float32)
    add_one = jax.jit(lambda tree: jax.tree.map(lambda x: x + 1, tree), out_shardings=replicated)
    state = {"weights": jax.device_put(start, replicated)}
    checkpointer = checkpointing.Checkpointer(directory, max_to_keep=2)
    for step in range(1, repeats + 1):
        state = add_one(state)
        checkpointer.save_best(step, state, {"step": step})
        checkpointer.save(step, state, {"step": step})
    checkpointer.wait_until_finished()
    restored, record = checkpointer.restore_latest(
        checkpointing.abstract_like(state, replicated), lambda *_: None
    )
    best = checkpointer.restore_best(
        checkpointing.abstract_like(state, replicated), lambda *_: None
    )
    checkpointer.close()
    assert record["step"] == repeats, record
    for tree in (restored, best):
        np.testing.assert_array_equal(np.asarray(tree["weights"]), start + repeats)
    print(f"process {jax.process_index()}: {repeats} best-then-latest saves restored")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
