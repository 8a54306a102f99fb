"""Multi-process (multi-host) runs on JAX's own distributed runtime: ``jax.distributed``.

``initialize_from_env()`` starts it when the environment describes a multi-process job, before
the first JAX computation; afterwards ``jax.devices()`` lists every process's devices, a training
run (``jaxmat train``) splits each batch over all of them, each process pads only its own devices'
share, and process 0 alone writes checkpoints, metrics, plots and models.

Environments understood:

* explicit: ``JAXMAT_COORDINATOR=host:port``, ``JAXMAT_NUM_PROCESSES``, ``JAXMAT_PROCESS_ID``
  (and optionally ``JAXMAT_LOCAL_DEVICES``: comma-separated local device ids);
* SLURM: a job step (``srun``) with more than one task (``SLURM_STEP_NUM_TASKS`` > 1);
  ``jax.distributed`` reads the coordinator, process count and rank from SLURM's variables itself
  and gives each task the one GPU ``SLURM_LOCALID`` names: start one task per GPU.

``JAXMAT_DISTRIBUTED=off`` keeps a single process whatever the environment says.

On the CPU, cross-process collectives use gloo (``jax_cpu_collectives_implementation``). This
changes JAX's configuration for the process, so the library never calls it on its own: the
``jaxmat`` command does, and so does a Python driver that wants a multi-process run.
"""

from __future__ import annotations

import os

import jax

ENV = ("JAXMAT_COORDINATOR", "JAXMAT_NUM_PROCESSES", "JAXMAT_PROCESS_ID")


def requested() -> bool:
    """Whether the environment describes a multi-process job: JAXMAT_COORDINATOR, or a SLURM job
    step (``srun``) of more than one task. JAXMAT_DISTRIBUTED=off says no whatever the rest."""
    if os.environ.get("JAXMAT_DISTRIBUTED", "").lower() in ("off", "0", "no", "false"):
        return False
    if os.environ.get("JAXMAT_COORDINATOR"):
        return True
    if "SLURM_STEP_ID" not in os.environ:  # inside sbatch/salloc but not srun: one process
        return False
    try:
        return int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1
    except ValueError:
        return False


def initialize_from_env() -> bool:
    """Start ``jax.distributed`` from the environment (see above); False when it describes a
    single process (nothing is done). Raises ValueError naming a missing or malformed variable."""
    if not requested():
        return False
    kwargs = {}
    if os.environ.get("JAXMAT_COORDINATOR"):
        missing = [k for k in ENV if not os.environ.get(k)]
        if missing:
            raise ValueError(f"multi-process run: JAXMAT_COORDINATOR is set but {', '.join(missing)} is not")
        try:
            kwargs = {"coordinator_address": os.environ["JAXMAT_COORDINATOR"],
                      "num_processes": int(os.environ["JAXMAT_NUM_PROCESSES"]),
                      "process_id": int(os.environ["JAXMAT_PROCESS_ID"])}
            if os.environ.get("JAXMAT_LOCAL_DEVICES"):
                kwargs["local_device_ids"] = [int(x) for x in os.environ["JAXMAT_LOCAL_DEVICES"].split(",")]
        except ValueError as err:
            raise ValueError(f"multi-process run: JAXMAT_NUM_PROCESSES / JAXMAT_PROCESS_ID / JAXMAT_LOCAL_DEVICES must "
                             f"be integers ({err})") from None
        if not 0 <= kwargs["process_id"] < kwargs["num_processes"]:
            raise ValueError(f"multi-process run: JAXMAT_PROCESS_ID = {kwargs['process_id']} is outside "
                             f"0..{kwargs['num_processes'] - 1}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk over TCP
    jax.distributed.initialize(**kwargs)
    return True
