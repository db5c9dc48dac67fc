"""Spawned gloo workers for the DDP tests, ended without tearing the process group down.

torch 2.13 stashes a Python object (the backward's contextvars context) in the thread-local
state that every collective launched from autograd captures. A gloo worker thread that drops
the last reference to such a work item needs the GIL, while a ProcessGroupGloo destroyed with
the GIL held (destroy_process_group, or the last DDP reducer freed) joins that thread: a
deadlock, seen once as a hung CI suite (the in-process test did it at the reducer's free). So
the DDP tests run in spawned workers that report through files and leave with os._exit after a
barrier: no process group is ever destroyed. An exception in a worker prints its traceback and
exits 1, which mp.spawn raises in the test.
"""

import os
import socket
import sys
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

AVAILABLE = dist.is_available() and dist.is_gloo_available()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, fn, world, port, args):
    code = 0
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
        torch.set_num_threads(1)
        fn(rank, world, *args)
        dist.barrier()
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def spawn(fn, world: int, *args) -> None:
    """Run fn(rank, world, *args) in `world` gloo processes (a module-level fn: it is pickled)."""
    mp.spawn(_entry, args=(fn, world, _free_port(), args), nprocs=world, join=True)
