"""Data parallelism under ``torchrun``: process-group set-up, who writes files, and
how work is split so that results do not depend on the number of processes.

Launch any vaeood command with ``torchrun --nproc-per-node N -m vaeood.cli ...`` (or
``--nnodes``/``--rdzv-endpoint`` for several nodes). Each process reads
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the environment; NCCL is used between CUDA
devices, gloo on CPU. Only rank 0 writes files (every write goes through
:mod:`vaeood.infra.atomic`, which asks :func:`is_main`), as in nanoGPT's recipe.

Scoring splits the dataset by *batch*, not by image: batch b goes to rank b mod W, and
each image draws its noise from streams keyed on its bytes and the seed
(:mod:`vaeood.inference.noise`), exactly as in a single process, so distributed scores equal
single-process scores image by image, and no image is padded in twice (the trap of
``DistributedSampler``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank: the process group's, or torchrun's RANK before the group is
    joined (a run lock is taken before scoring joins it), else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def is_main() -> bool:
    """True in the process that logs and writes files (rank 0, or no process group)."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


_joined = False  # this process has been in a process group (see exit_process)


def setup(device: str) -> torch.device:
    """Join the process group when launched by torchrun (idempotent) and return this
    process's device: ``cuda:LOCAL_RANK`` when ``device`` is CUDA, else ``device``."""
    global _joined
    dev = torch.device(device)
    if launched_by_torchrun() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        _joined = True
    if dev.type == "cuda" and launched_by_torchrun():
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    return dev


def teardown() -> None:
    """Leave the process group once every rank is done: a rank that destroys it while
    rank 0 is still writing its last files aborts gloo (``terminate called ...``)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int) -> None:
    """End a process that has been in a process group with ``code``, without Python's
    finalization (``os._exit``, after flushing the log and the standard streams); a process
    that never joined one returns, to exit as usual.

    Why: a gloo worker thread may still hold the last reference to a finished collective
    (``ProcessGroupGloo::AsyncWork``) after :func:`teardown`, and its tensors are Python
    objects. Where it drops them while the interpreter finalizes, the decref waits for a GIL
    that a finalizing interpreter no longer gives; the thread is ended inside the destructor
    and the process aborts (``terminate called without an active exception``, SIGABRT, after
    every file was written): twice in about 220 two-process CPU trainings on two loaded cores,
    none in 210 since, and once in CI. Every file is complete by then
    (:mod:`vaeood.infra.atomic`), and there is nothing left for finalization to do."""
    if not _joined:
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken stream is no reason to stay
            stream.flush()
    os._exit(code)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over processes in place (a no-op in a single process)."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_objects(obj) -> list:
    """Every process's ``obj``, in rank order (``[obj]`` in a single process)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
