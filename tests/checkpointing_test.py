"""Orbax round trip of the whole train state, LL-Cp's table included."""

import os
import subprocess

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lln_jax import models, schemes
from lln_jax.run import checkpointing, sharding
from lln_jax.training import optim
from lln_jax.training.train_state import create_train_state


def _state(seed):
    context = schemes.SchemeContext(20, 3, 8, 3, 2)
    scheme = schemes.create("ll_cp", context=context, delta_rel=0.1)
    tx, _ = optim.create(
        "sgd", learning_rate=0.1, head_lr_multiplier=10.0, scheme_lr_multiplier=10.0,
        head_name=models.HEAD_NAME, momentum=0.9, weight_decay=1e-3,
    )  # fmt: skip
    model = models.create("resnet_tiny", num_classes=3)
    state = create_train_state(
        jax.random.PRNGKey(seed), model=model, tx=tx, scheme=scheme, image_shape=(32, 32, 3),
        labels_obs=jnp.zeros((20, 3), jnp.int8),
    )  # fmt: skip
    corrected = np.zeros((20, 3), bool)
    corrected[np.random.default_rng(seed).integers(0, 20, 5), 1] = True
    return state.replace(
        step=jnp.int32(17), scheme_state=schemes.CorrectionState(jnp.asarray(corrected))
    )


def _accept(record, source):
    del record, source


def test_save_then_restore_round_trips_the_whole_state(tmp_path):
    state = _state(0)
    checkpointer = checkpointing.Checkpointer(str(tmp_path), async_save=True)
    record = {"val_map": [50.5, 60.25], "best_val_map": 60.25, "best_epoch": 2}
    checkpointer.save(17, state, record)
    checkpointer.save_best(17, state, {"identity": {"run_id": "r"}})
    checkpointer.wait_until_finished()
    repl = sharding.replicated(sharding.create_mesh())
    other = _state(1).replace(tx=state.tx)  # Other values, the same static optimizer.
    abstract = checkpointing.abstract_like(other, repl)
    restored, restored_record = checkpointer.restore_latest(abstract, _accept)
    chex.assert_trees_all_equal(restored, state)
    assert restored_record == record
    assert restored.scheme_state.corrected.sharding == repl
    chex.assert_trees_all_equal(checkpointer.restore_best(abstract, _accept), state)
    checkpointer.close()


def test_a_fresh_directory_has_no_checkpoint(tmp_path):
    checkpointer = checkpointing.Checkpointer(str(tmp_path))
    assert checkpointer.latest_step() is None
    checkpointer.close()


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs: a real filesystem that runs out of space (mounting needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                   check=True)  # fmt: skip
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_a_save_that_runs_out_of_space_is_one_line_that_says_what_to_do(full_disk):
    noise = np.random.default_rng(0).standard_normal((256, 1024), np.float32)
    state = {"weights": jnp.asarray(noise)}  # 1 MiB that does not compress: does not fit.
    checkpointer = checkpointing.Checkpointer(str(full_disk), async_save=False)
    with pytest.raises(checkpointing.SaveError) as raised:
        checkpointer.save(3, state, {"identity": {"run_id": "r"}})
        checkpointer.wait_until_finished()
    message = str(raised.value)
    assert "\n" not in message
    assert f"the checkpoint of step 3 could not be written to {full_disk}/latest" in message
    assert "No space left on device" in message and "rerun the same command" in message
