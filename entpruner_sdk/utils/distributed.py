"""Multi-process helpers over ``torch.distributed`` (torchrun; NCCL for CUDA tensors, gloo for
CPU tensors and objects).

Everything degrades to a no-op in a single process, so callers write one code path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether this process is one of several in a process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Only this process writes files and prints summaries."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """Whether torchrun started this process as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device | None = None) -> torch.device:
    """Join the process group torchrun describes in the environment; returns this rank's
    device (``cuda:LOCAL_RANK`` on GPUs, else the CPU with gloo)."""
    if not launched_by_torchrun():
        raise RuntimeError("--distributed needs torchrun: torchrun --nproc_per_node N -m "
                           "entpruner_sdk compress|evaluate ...")
    use_cuda = torch.cuda.is_available() and (device is None or device.type == "cuda")
    if not dist.is_initialized():
        # NCCL reduces CUDA tensors only; statistics kept on the CPU (CED's float64 sums) and
        # pickled objects go through gloo
        dist.init_process_group("cpu:gloo,cuda:nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def all_reduce_sum_(tensors: list[torch.Tensor]) -> None:
    """Sum every tensor across processes, in place."""
    if not is_distributed():
        return
    for tensor in tensors:
        _all_reduce_sum(tensor)


def _all_reduce_sum(tensor: torch.Tensor) -> None:
    if dist.get_backend() == "nccl" and not tensor.is_cuda:  # a caller's NCCL-only group
        on_gpu = tensor.cuda()
        dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
        tensor.copy_(on_gpu)
    else:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def mean_across(value: float) -> float:
    """The mean of a Python number over all processes."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    _all_reduce_sum(tensor)
    return tensor.item() / dist.get_world_size()


def broadcast(value: Any, source: int = 0) -> Any:
    """Rank ``source``'s Python object on every rank (timings, decisions: anything that must
    not differ between processes)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=source)
    return box[0]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's object, in rank order, on every rank."""
    if not is_distributed():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def send_to_main(value: Any) -> None:
    """Send a Python object to rank 0, which takes it with :func:`receive_from`; only the
    two of them take part (a batch of samples need not pass through every rank)."""
    dist.send_object_list([value], dst=0)


def receive_from(source: int) -> Any:
    """On rank 0: the object rank ``source`` sends with :func:`send_to_main`."""
    box: list[Any] = [None]
    dist.recv_object_list(box, src=source)
    return box[0]


def barrier() -> None:
    """Wait for every process (nothing in a single process)."""
    if is_distributed():
        dist.barrier()


def leave() -> None:
    """Take this process out of its process group, at the end of a command that succeeded
    (nothing in a single process). A process that exits with its gloo group still up can
    abort in the interpreter's teardown ("terminate called without an active exception"),
    its group's threads still holding tensors; and a launcher then reports the whole run as
    failed. Not after an error: the others may still be in a collective, where this would
    wait for them."""
    if is_distributed():
        _patient_groups.clear()
        dist.destroy_process_group()


# how long the other processes wait while rank 0 makes something for all (main_first)
PATIENCE = timedelta(days=2)
_patient_groups: dict[Any, Any] = {}


def main_first(make: Callable[[], T]) -> T:
    """``make()`` on every process, rank 0's first: what it caches (a trained classifier,
    encoded latents) the others then read rather than make again at the same time.
    ``make`` must not itself wait for the other processes.

    The others wait in a group of their own with a timeout of ``PATIENCE``: encoding a large
    folder takes hours, and the default group's timeout (10 minutes for NCCL, 30 for gloo)
    would end their wait with an error. If rank 0's ``make`` fails, it tells the others, which
    stop with its reason rather than wait out that timeout or a launcher's teardown."""
    if not is_distributed():
        return make()
    group = _patient_group()  # made by every process together, before any of them waits
    if is_main():
        try:
            value = make()
        except BaseException as error:  # Ctrl-C too: the others must not wait for it
            with contextlib.suppress(Exception):  # they may be gone already: rank 0's error
                _announce(group, f"{type(error).__name__}: {error}")  # is the one to show
            raise
        _announce(group, None)
        return value
    failure = _announce(group, None)
    if failure is not None:
        raise RuntimeError(f"rank 0 failed to make what the processes share ({failure}); "
                           "its traceback is in rank 0's output")
    return make()


def _announce(group: Any, failure: str | None) -> str | None:
    """Rank 0's outcome (``None`` for success, else its error) on every rank."""
    box = [failure]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def _patient_group() -> Any:
    """A gloo group of every process with the ``PATIENCE`` timeout, made once per process
    group."""
    default = dist.group.WORLD
    if default not in _patient_groups:
        _patient_groups[default] = dist.new_group(backend="gloo", timeout=PATIENCE)
    return _patient_groups[default]
