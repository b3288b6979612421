"""The device mesh and the two shardings of data-parallel training.

One 1-D `('data',)` mesh over all devices: the batch is split along it, everything else
(params, optimizer state, LL-Cp's table) is replicated. Under `jax.jit` the batch-sharded
BatchNorm statistics and the large-loss top-k then run over the *global* batch, exactly as
on the reference's single GPU. The axis is `Auto`: with the default `Explicit` axes,
`lax.top_k` on a batch-sharded array raises a sharding-type error.
"""

from collections.abc import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def create_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D data-parallel mesh over `devices` (all devices by default)."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh(
        (len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Splits the leading (batch) axis over the mesh."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())
