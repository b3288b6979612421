"""The TPU plan: the real train step compiled for TPU slices by libtpu, on this CPU."""

import os
import subprocess
import sys

import pytest
from conftest import CONFIG_DIR, load_config

from lln_jax.training import tpu_plan


@pytest.mark.parametrize(
    ("accelerator", "topology", "chips"),
    [("v4-8", "v4:2x2x1", 4), ("v4-32", "v4:2x2x4", 16), ("v5e-8", "v5e:2x4", 8),
     ("v5litepod-16", "v5e:4x4", 16), ("v5p-16", "v5p:2x2x2", 8), ("v6e-4", "v6e:2x2", 4),
     ("v4-2", "v4:1x1x1", 1), ("v5e-1", "v5e:1x1", 1)],  # One chip: a sweep's run.
)  # fmt: skip
def test_accelerator_types_name_libtpus_topologies(accelerator, topology, chips):
    name, _, num_chips = tpu_plan.topology(accelerator)
    assert (name, num_chips) == (topology, chips)


@pytest.mark.parametrize("accelerator", ["v3-8", "v5e-3", "v5e", "gpu-8"])
def test_unknown_slices_are_refused(accelerator):
    with pytest.raises(tpu_plan.PlanError):
        tpu_plan.topology(accelerator)


def test_a_batch_that_does_not_divide_over_the_chips_is_refused_before_compiling():
    config = load_config("digits.py", "scheme=ll_r,runlocal", **{"data.batch_size": 6})
    with pytest.raises(tpu_plan.PlanError, match=r"data\.batch_size=6 must divide over 4 chips"):
        tpu_plan.plan(config, "v5e-4", num_classes=10, num_train=240)


def test_the_step_compiles_for_v5e_with_no_host_transfer_and_no_all_gather():
    config = load_config("digits.py", "scheme=ll_r,runlocal")
    plan = tpu_plan.plan(config, "v5e-4", num_classes=10, num_train=240)
    assert plan.collectives["host transfers"] == 0  # The step never waits on the host.
    assert plan.collectives["all-gather"] == 0  # Data parallel: params stay replicated.
    # The gradients' all-reduce, the global top-k's and the synced BatchNorm's.
    assert plan.collectives["all-reduce"] >= 3
    assert 0 < plan.bytes_per_chip < 0.1 * 2**30 and plan.flops_per_step > 0
    assert plan.lines()[0] == "v5e-4 (v5e:2x2, 4 chips): global batch 16, 4 per chip"


def test_one_chip_compiles_whole_with_no_collective():
    """A sweep's run: the batch on one chip, so nothing to reduce across chips."""
    config = load_config("digits.py", "scheme=ll_r,runlocal")
    plan = tpu_plan.plan(config, "v4-2", num_classes=10, num_train=240)
    assert plan.lines()[0] == "v4-2 (v4:1x1x1, 1 chips): global batch 16, 16 per chip"
    assert plan.collectives["host transfers"] == 0 and plan.collectives["all-gather"] == 0
    assert plan.collectives["all-reduce"] == 0


def _plan_command(*args):
    command = [sys.executable, "-m", "lln_jax.plan", *args]
    environment = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_a_batch_that_does_not_fit_is_refused_with_xlas_numbers():
    done = _plan_command(
        f"--config={CONFIG_DIR / 'digits.py'}:scheme=ll_r,runlocal", "--topology=v5e-4",
        "--num_classes=10", "--num_train=240", "--config.data.image_size=448",
        "--config.data.batch_size=16384",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "lln_jax.plan: the train step does not fit v5e-4's chips: RESOURCE_EXHAUSTED" in (
        done.stderr
    )
    assert "exceeds available HBM" in done.stderr


@pytest.mark.slow
def test_coco_ll_r_on_resnet50_448_fits_a_v5e_4_at_the_papers_batch():
    """The real model at the paper's size (about 1 GiB per chip at global batch 8)."""
    done = _plan_command(
        f"--config={CONFIG_DIR / 'coco.py'}:scheme=ll_r", "--topology=v5e-4",
        "--config.data.batch_size=8",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "v5e-4 (v5e:2x2, 4 chips): global batch 8, 2 per chip"
    gib = float(lines[1].split("memory per chip: ")[1].split(" GiB")[0])
    assert 0.5 < gib < 4.0
    assert "all-gather 0, host transfers 0" in lines[3]
