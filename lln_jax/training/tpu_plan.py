"""What a run's train step costs on a TPU slice, measured by compiling it for that slice here.

libtpu describes every TPU topology without a TPU (`jax.experimental.topologies`): its
compile-only devices take the project's real train step, on its own mesh and shardings,
through XLA's TPU compiler on this CPU. The compiled program says what the step needs per
chip (arguments, outputs, temporaries, code), how many flops it does, and which collectives
it holds; a batch that does not fit fails to compile, before anyone pays for the slice.
Needs libtpu: the `libtpu` package (`pip install libtpu==0.0.42.1`, the version jax's `tpu`
extra pins), or `TPU_LIBRARY_PATH` naming its `libtpu.so` (the repository's `make` keeps one
in `.venv/libtpu`, apart from the environment's packages, so that a training run never
probes for a TPU).
"""

import dataclasses
import functools
import importlib.util
import os
import re

import jax
import jax.numpy as jnp
import ml_collections

from lln_jax import models, schemes
from lln_jax.data import input_pipeline
from lln_jax.run import checkpointing, sharding
from lln_jax.training import optim, steps, train_state


@dataclasses.dataclass(frozen=True)
class Chip:
    """A TPU generation: how libtpu names its topologies, and what one chip holds and does."""

    family: str  # libtpu's topology prefix
    cores_per_chip: int  # an accelerator type counts TensorCores (v4, v5p) or chips
    hbm_gib: float
    bf16_peak_tflops: float
    three_d: bool  # a 3-D torus (v4, v5p) or a 2-D one (v5e, v6e)


CHIPS = {  # The accelerator type's prefix, as `gcloud` writes it.
    "v4": Chip("v4", 2, 32.0, 275.0, True),
    "v5p": Chip("v5p", 2, 95.0, 459.0, True),
    "v5e": Chip("v5e", 1, 16.0, 197.0, False),
    "v5litepod": Chip("v5e", 1, 16.0, 197.0, False),
    "v6e": Chip("v6e", 1, 32.0, 918.0, False),
}


class PlanError(ValueError):
    """The topology is unknown, or the step does not fit its chips."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """The compiled step on one slice."""

    accelerator: str
    topology: str
    num_chips: int
    chip: Chip
    global_batch: int
    bytes_per_chip: int  # arguments + outputs - aliased (donated) + temporaries + code
    flops_per_step: float  # of one chip's program
    collectives: dict[str, int]

    @property
    def ideal_step_s(self) -> float:
        """The step's time if every flop ran at the chip's bf16 peak (a lower bound)."""
        return self.flops_per_step / (self.chip.bf16_peak_tflops * 1e12)

    def lines(self) -> list[str]:
        gib = self.bytes_per_chip / 2**30
        return [
            f"{self.accelerator} ({self.topology}, {self.num_chips} chips): global batch "
            f"{self.global_batch}, {self.global_batch // self.num_chips} per chip",
            f"  memory per chip: {gib:.3g} GiB of {self.chip.hbm_gib:g} GiB HBM",
            f"  flops per step and chip: {self.flops_per_step / 1e9:.3g} GFLOP; ideal step at "
            f"the bf16 peak ({self.chip.bf16_peak_tflops:g} TFLOP/s): "
            f"{1e3 * self.ideal_step_s:.3g} ms",
            "  collectives: " + ", ".join(f"{k} {v}" for k, v in self.collectives.items()),
        ]


# Slice shapes libtpu names, by chip count: 2-D tori (v5e, v6e) and 3-D ones (v4, v5p).
GRIDS_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
            256: "16x16"}  # fmt: skip
GRIDS_3D = {1: "1x1x1", 4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
            256: "4x8x8", 512: "8x8x8"}  # fmt: skip


def topology(accelerator: str) -> tuple[str, Chip, int]:
    """`v5e-8` -> (`v5e:2x4`, the chip, 8 chips); `v4-8` -> (`v4:2x2x1`, ..., 4 chips).

    One chip (`v4-2`, `v5e-1`) is what each run of a sweep gets.
    """
    family, _, count = accelerator.partition("-")
    if family not in CHIPS or not count.isdigit():
        raise PlanError(f"unknown accelerator type {accelerator!r}; e.g. v4-8, v5e-8, v5p-8, v6e-8")
    chip = CHIPS[family]
    num_chips = max(int(count) // chip.cores_per_chip, 1)
    grids = GRIDS_3D if chip.three_d else GRIDS_2D
    if num_chips not in grids:
        raise PlanError(f"{accelerator}: {num_chips} chips; known slices: {sorted(grids)} chips")
    return f"{chip.family}:{grids[num_chips]}", chip, num_chips


def devices(accelerator: str):
    """libtpu's compile-only devices of the slice."""
    from jax.experimental import topologies

    name, chip, num_chips = topology(accelerator)
    if not (os.environ.get("TPU_LIBRARY_PATH") or importlib.util.find_spec("libtpu")):
        raise PlanError(
            "compiling for a TPU needs libtpu: pip install libtpu==0.0.42.1, or set "
            "TPU_LIBRARY_PATH to a libtpu.so"
        )
    # Compile-only: no chip is opened, so another process holding libtpu's lock is no
    # obstacle, and there is no TPU VM metadata server to ask.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    options = {"chip_config_name": "megacore"} if chip.cores_per_chip == 2 else {}
    if num_chips == 1:  # A host's bounds are 2x2x1 unless told: one chip is one host's.
        options["chips_per_host_bounds"] = (1, 1, 1)
    return topologies.get_topology_desc(platform="tpu", topology_name=name, **options).devices


def _abstract_batch(batch_size, image_size, num_classes, data) -> dict[str, jax.ShapeDtypeStruct]:
    rows, entries = (batch_size,), (batch_size, num_classes)
    shapes = {
        "image": ((batch_size, image_size, image_size, 3), jnp.uint8),
        "labels_obs": (entries, jnp.int8), "labels_true": (entries, jnp.int8),
        "example_id": (rows, jnp.int32), "mask": (rows, jnp.float32),
    }  # fmt: skip
    return {k: jax.ShapeDtypeStruct(s, d, sharding=data) for k, (s, d) in shapes.items()}


def _collectives(hlo: str) -> dict[str, int]:
    def count(op: str) -> int:
        return len(re.findall(rf"\s{op}(-start)?\(", hlo))

    host = sum(count(op) for op in ("infeed", "outfeed", "send", "recv"))
    host += hlo.count('custom_call_target="xla_python')
    return {"all-reduce": count("all-reduce"), "all-gather": count("all-gather"),
            "host transfers": host}  # fmt: skip


def compile_train_step(config: ml_collections.ConfigDict, slice_devices, *, num_classes: int,
                       num_train: int):  # fmt: skip
    """The run's train step, lowered and compiled for `slice_devices`."""
    mesh = sharding.create_mesh(slice_devices)
    replicated, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
    batch_size, image_size = config.data.batch_size, config.data.image_size
    model = models.create(**config.model, num_classes=num_classes)
    steps_per_epoch = input_pipeline.steps_per_epoch(num_train, batch_size)
    context = schemes.SchemeContext(
        num_train, num_classes, batch_size, steps_per_epoch, config.num_epochs
    )
    scheme = schemes.create(**config.scheme, context=context)
    tx, _ = optim.create(**config.optim, head_name=models.HEAD_NAME)
    create = functools.partial(
        train_state.create_train_state, model=model, tx=tx, scheme=scheme,
        image_shape=(image_size, image_size, 3),
    )  # fmt: skip
    labels = jax.ShapeDtypeStruct((num_train, num_classes), jnp.int8)
    shapes = jax.eval_shape(lambda s, obs: create(jax.random.PRNGKey(s), labels_obs=obs), 0, labels)
    step = jax.jit(
        functools.partial(steps.train_step, model=model, scheme=scheme),
        donate_argnums=0,
        out_shardings=(replicated, replicated, replicated),
    )
    batch = _abstract_batch(batch_size, image_size, num_classes, data)
    return step.lower(checkpointing.abstract_like(shapes, replicated), batch).compile()


def plan(config: ml_collections.ConfigDict, accelerator: str, *, num_classes: int,
         num_train: int) -> Plan:  # fmt: skip
    """Compiles the run's train step for `accelerator`; its cost per chip.

    Raises:
      PlanError: an unknown accelerator type, a batch that does not divide over its chips,
        or a step that does not fit their memory.
    """
    name, chip, num_chips = topology(accelerator)
    if config.data.batch_size % num_chips:
        raise PlanError(
            f"data.batch_size={config.data.batch_size} must divide over {num_chips} chips"
        )
    try:
        compiled = compile_train_step(
            config, devices(accelerator), num_classes=num_classes, num_train=num_train
        )
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        first = str(error).strip().splitlines()[0]
        raise PlanError(f"the train step does not fit {accelerator}'s chips: {first}") from error
    memory = compiled.memory_analysis()
    used = (memory.argument_size_in_bytes + memory.output_size_in_bytes
            - memory.alias_size_in_bytes + memory.temp_size_in_bytes
            + memory.generated_code_size_in_bytes)  # fmt: skip
    cost = compiled.cost_analysis() or {}
    return Plan(
        accelerator, name, num_chips, chip, config.data.batch_size, int(used),
        float(cost.get("flops", 0.0)), _collectives(compiled.as_text()),
    )  # fmt: skip
