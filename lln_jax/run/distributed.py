"""JAX's multi-controller runtime, started from the environment where a run asks for it.

Set `LLN_MULTIHOST=1` on every process of a multi-process run. On Cloud TPU VMs and under
Slurm, `jax.distributed.initialize()` finds its peers by itself. Elsewhere (GPU hosts,
several processes on one machine) every process is also given `LLN_COORDINATOR=host:port`
(process 0's address), `LLN_NUM_PROCESSES` and `LLN_PROCESS_ID`. On CPUs the collectives
between processes go through gloo. When a process dies, the others fail after
`LLN_HEARTBEAT_TIMEOUT_S` seconds (100 by default).
"""

import os

import jax

DEFAULT_HEARTBEAT_TIMEOUT_S = 100


class DistributedSetupError(ValueError):
    """The environment asks for a multi-process run but does not say how to join it."""


def _explicit_peers() -> dict | None:
    """The coordinator, process count and id given by the environment (None: detect them)."""
    coordinator = os.environ.get("LLN_COORDINATOR")
    if coordinator is None:
        return None
    try:
        num_processes = int(os.environ["LLN_NUM_PROCESSES"])
        process_id = int(os.environ["LLN_PROCESS_ID"])
    except (KeyError, ValueError) as error:
        raise DistributedSetupError(
            "LLN_COORDINATOR needs LLN_NUM_PROCESSES and LLN_PROCESS_ID (integers)"
        ) from error
    if not 0 <= process_id < num_processes:
        raise DistributedSetupError(
            f"LLN_PROCESS_ID={process_id} must be in [0, LLN_NUM_PROCESSES={num_processes})"
        )
    return {
        "coordinator_address": coordinator,
        "num_processes": num_processes,
        "process_id": process_id,
    }


def initialize() -> None:
    """Joins the other processes where `LLN_MULTIHOST=1`; does nothing otherwise.

    Raises:
      DistributedSetupError: `LLN_COORDINATOR` without a valid process count and id.
    """
    if os.environ.get("LLN_MULTIHOST") != "1":
        return
    peers = _explicit_peers()
    # Only the CPU backend reads this; accelerators keep their own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # SIGTERM is ours (`stop_request`: a stop agreed between processes, after a checkpoint);
    # JAX's preemption service would install a second, C-level owner of it.
    jax.config.update("jax_enable_preemption_service", False)
    # A process that stops answering (killed, its host lost) fails the others after this.
    timeout = int(os.environ.get("LLN_HEARTBEAT_TIMEOUT_S", DEFAULT_HEARTBEAT_TIMEOUT_S))
    jax.distributed.initialize(**(peers or {}), heartbeat_timeout_seconds=timeout)
