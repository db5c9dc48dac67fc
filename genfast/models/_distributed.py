"""Multi-process training under torchrun (DESIGN.md section 9): one process per device, the
global batch split among them, gradients averaged, rank 0 alone writing.

``torchrun --nproc_per_node=N [--nnodes=M ...] -m genfast train MODEL ...`` runs every model of
``genfast train`` unchanged; without torchrun (WORLD_SIZE unset or 1) nothing here is used and
training is exactly what it was. What the trainer (genfast/models/_trainer.py) does with it:

* Process group: ``init_from_env`` initialises torch.distributed's default group from torchrun's
  environment (gloo on the CPU, NCCL on CUDA with device cuda:LOCAL_RANK).
* Gradients: averaged over the ranks at the end of every backward (``GradSync``), not by
  torch's DistributedDataParallel wrapper. DDP syncs only through the *wrapped module's*
  forward; the train steps here call submodules (``self.generator``, ``self.discriminator``,
  ``self.encoder``, ``self.lm``), so DDP around a whole model runs and syncs nothing (tried: the
  ranks' weights diverge silently). DDP around G and D separately does take a DCGAN step (D(real),
  D(fake), G's backward through D) and gives the bits GradSync gives, but every model would need
  its own list of submodules to wrap (and find_unused_parameters for the phases where a network
  sits idle: NoGAN, GS-GAN pretraining, AAE), and every checkpoint would carry ``module.``
  prefixes. So, like DDP's reducer (and NVIDIA's stylegan3 loop, which averages gradients by
  hand too), every trainable parameter gets a post-accumulate-grad hook; the first hook of a
  backward queues an end-of-backward callback that all-reduces, in flat buckets per dtype, the
  gradients that backward accumulated, each divided by the world size first (DDP's default comm
  hook, so the same bits as DDP). Doing it at the end of backward, not at ``optimizer.step()``,
  keeps DDP's contract that ``.grad`` is global once backward returns, so gradient clipping
  (char-rnn, gpt, music-lstm) clips the global gradient, as in one process. Several backwards
  before one step are fine: all-reduce is linear, so re-averaging a gradient that already holds
  an averaged part averages only the new local part. ``torch.autograd.grad`` (the penalties'
  inner gradient) accumulates nothing and syncs nothing; their double backward syncs once. The
  price: G's backward also averages the D gradients it leaves behind (as DDP with both nets
  wrapped does). tests/models/test_distributed.py compares GradSync with DDP bitwise on a plain
  model and on that DCGAN step.
* Parameters and buffers start as rank 0's (broadcast, as DDP); floating buffers (BatchNorm's
  running statistics, a GAN's last generator loss) are made rank 0's again after every step,
  DDP's broadcast_buffers semantics (spectral-norm vectors depend on the weights only, so they
  stay equal by themselves).
* Batches: each step's global batch (a tensor, or tuples / lists / dicts of tensors with the
  batch on dim 0; None and plain numbers pass through) is cut into N contiguous slices and rank r
  trains on slice r: DistributedSampler's share, with the batch order still a function of
  (seed, step), so N processes of B/N see the samples one process of B sees. B % N != 0 is an
  error naming --batch-size.
* RNG: every rank builds the model from the same seed; then each draws its own training noise
  (latents, dropout) from a stream seeded by (seed, rank), so the ranks' fake batches differ as
  one process's big batch would. Checkpoints keep every rank's RNG state, so a resume at the
  same world size is exact; at another world size each rank reseeds from (seed, rank, step).
* Rank 0 alone writes checkpoints, logs, samples and shows progress; snapshots and evaluation
  run on rank 0 only, with gradient sync off, so they must hold no collective. Logged training
  metrics are the mean over the ranks (one all-reduce per log line). The final metrics are rank
  0's on every rank. Under ``genfast train`` a rank > 0 is done when training is: what a
  model's CLI does after its (single) train_loop (summaries, reports, comparison PNGs) is rank
  0's work, so train_loop ends the other ranks there (``RankDone``, which ``run`` catches)
  instead of every model's CLI needing its own guard, and ranks > 0 print nothing (stdout to
  /dev/null) before that. Called as a library, train_loop returns on every rank.
* Exit: a distributed ``genfast train`` leaves by os._exit after a barrier, never destroying
  the gloo group: torch 2.13 can deadlock freeing a gloo group whose collectives were launched
  from autograd (tests/_ddp.py), which the end-of-backward all-reduces are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

# Elements per all-reduce / broadcast: 25 MiB of float32, DDP's default bucket cap.
_BUCKET = 25 * 2**20 // 4


@dataclasses.dataclass(frozen=True)
class Context:
    """Where this process stands: ``rank`` of ``world`` processes, training on ``device``."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: str | torch.device = "cpu") -> Context:
    """Under torchrun (WORLD_SIZE > 1) initialise the default process group: gloo for the CPU,
    NCCL for CUDA on cuda:LOCAL_RANK; else nothing. Returns this process's Context."""
    device = torch.device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(device=device)
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch has no torch.distributed")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), device)


def context(device: str | torch.device = "cpu") -> Context:
    """This process's Context: rank / world of the initialised default group, else (0, 1)."""
    import torch.distributed as dist

    device = torch.device(device)
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), device)
    return Context(device=device)


def is_main() -> bool:
    """True unless this is a rank > 0 of an initialised process group."""
    return context().is_main


def shard_range(n: int, rank: int, world: int) -> slice:
    """Rank `rank`'s contiguous share of n items (sizes differ by at most one): the data shard of
    the EM / VB models (gmm, lda), whose passes need no equal split."""
    return slice(n * rank // world, n * (rank + 1) // world)


def all_reduce_sum(*tensors: Tensor) -> list[Tensor]:
    """The tensors summed across the default process group, in one collective (one flat
    buffer of the first tensor's dtype; the tensors are left unchanged)."""
    import torch.distributed as dist

    flat = torch.cat([t.reshape(-1).to(tensors[0].dtype) for t in tensors])
    dist.all_reduce(flat)
    out, at = [], 0
    for t in tensors:
        out.append(flat[at:at + t.numel()].view(t.shape).to(t.dtype))
        at += t.numel()
    return out


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A 63-bit seed for (seed, rank, step): independent streams per rank and restart."""
    digest = hashlib.blake2b(f"genfast/{seed}/{rank}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def shard(batch: Any, rank: int, world: int) -> Any:
    """Rank `rank`'s contiguous 1/world of every tensor's dim 0 in a (nested) batch."""
    if world == 1:
        return batch
    if isinstance(batch, Tensor):
        if batch.dim() == 0:
            return batch
        n = batch.shape[0]
        if n % world:
            raise ValueError(f"--batch-size: the global batch of {n} does not split evenly "
                             f"over {world} processes (torchrun's nproc_per_node x nnodes); "
                             f"use a multiple of {world} (for models that set their own "
                             f"batch sizes, the --set fields that give them)")
        k = n // world
        return batch[rank * k:(rank + 1) * k]
    if isinstance(batch, dict):
        return {k: shard(v, rank, world) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(shard(v, rank, world) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(shard(v, rank, world) for v in batch)
    if batch is None or isinstance(batch, (bool, int, float, str)):
        return batch
    raise TypeError(f"cannot shard a batch item of type {type(batch).__name__}: batches are "
                    f"tensors (batch on dim 0) or tuples / lists / dicts of them")


def _buckets(tensors: Iterable[Tensor]) -> Iterator[list[Tensor]]:
    """Groups of same-device, same-dtype tensors of at most _BUCKET elements (one flat
    buffer per collective: one call per bucket, not per tensor)."""
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    for group in groups.values():
        bucket: list[Tensor] = []
        size = 0
        for t in group:
            if bucket and size + t.numel() > _BUCKET:
                yield bucket
                bucket, size = [], 0
            bucket.append(t)
            size += t.numel()
        if bucket:
            yield bucket


def _collective(tensors: list[Tensor], op: Callable[[Tensor], None]) -> None:
    """op on one flat copy of each bucket, written back into the tensors."""
    for bucket in _buckets(tensors):
        flat = torch.cat([t.detach().reshape(-1) for t in bucket])
        op(flat)
        offset = 0
        for t in bucket:
            t.detach().copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def all_reduce_mean(tensors: list[Tensor]) -> None:
    """In place: each tensor becomes the mean over the ranks (divided first, as DDP)."""
    import torch.distributed as dist

    world = dist.get_world_size()

    def op(flat: Tensor) -> None:
        flat.div_(world)
        dist.all_reduce(flat)

    _collective(tensors, op)


def broadcast_(tensors: list[Tensor], src: int = 0) -> None:
    """In place: every tensor becomes rank `src`'s."""
    import torch.distributed as dist

    _collective(tensors, lambda flat: dist.broadcast(flat, src))


def broadcast_module(module: nn.Module) -> None:
    """Every parameter and buffer of `module` becomes rank 0's (DDP's start)."""
    with torch.no_grad():
        broadcast_([*module.parameters(), *module.buffers()])


def sync_buffers(module: nn.Module) -> None:
    """Floating buffers become rank 0's (DDP's broadcast_buffers), e.g. BatchNorm statistics."""
    bufs = [b for b in module.buffers() if b.is_floating_point()]
    if bufs:
        with torch.no_grad():
            broadcast_(bufs)


def broadcast_object(obj: Any, device: torch.device, src: int = 0) -> Any:
    """Rank `src`'s picklable `obj` on every rank."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src, device=device if device.type == "cuda" else None)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_metrics(sums: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The ranks' mean of each metric sum (tensors or numbers; the same keys on every rank)."""
    if not sums:
        return sums
    keys = sorted(sums)
    vals = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64, device=device).detach()
                        .reshape(()) for k in keys])
    all_reduce_mean([vals])
    return dict(zip(keys, vals.unbind(), strict=True))


class RankDone(BaseException):
    """A rank > 0 finished training under ``run`` (a BaseException: no model's ``except
    Exception`` / ``except ValueError`` may swallow it)."""


_in_run = False  # set by run(): train_loop ends ranks > 0 with RankDone


def end_rank(ctx: Context) -> None:
    """End a rank > 0 after training when run by ``run`` (the module docstring says why)."""
    if _in_run and not ctx.is_main:
        raise RankDone


class GradSync:
    """Average over the ranks the gradients each backward accumulates into `module`'s trainable
    parameters, at the end of that backward (the module docstring says why not DDP)."""

    def __init__(self, module: nn.Module) -> None:
        from torch.autograd import Variable

        self._engine = Variable._execution_engine
        self._module = module
        # torch refuses hooks on frozen tensors: a parameter frozen now is checked later.
        params = [p for p in module.parameters() if p.requires_grad]
        self._order = {id(p): i for i, p in enumerate(params)}  # same order on every rank
        self._ready: dict[int, Tensor] = {}
        self._queued = False
        self.enabled = True
        self._handles = [p.register_post_accumulate_grad_hook(self._hook) for p in params]

    def _hook(self, p: Tensor) -> None:
        if not self.enabled:
            return
        self._ready[self._order[id(p)]] = p
        if not self._queued:
            self._queued = True
            self._engine.queue_callback(self._flush)

    def _flush(self) -> None:
        self._queued = False
        grads = [self._ready[i].grad for i in sorted(self._ready)]
        self._ready.clear()
        grads = [g for g in grads if g is not None]
        if any(g.is_sparse for g in grads):
            raise RuntimeError("GradSync: sparse gradients are not supported")
        all_reduce_mean(grads)

    def check(self) -> None:
        """Raise if a parameter frozen at the start has since become trainable: its gradients
        would never be averaged and the ranks would drift apart."""
        for name, p in self._module.named_parameters():
            if p.requires_grad and id(p) not in self._order:
                raise RuntimeError(f"parameter {name!r} was frozen when training started and "
                                   f"is trainable now: multi-process training averages only "
                                   f"the gradients of parameters trainable from the start")

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def run(ctx: Context, fn: Callable[[], int]) -> int:
    """Run a distributed command's body on this rank and leave the process (os._exit, see the
    module docstring): ranks > 0 print nothing to stdout; a SystemExit's message goes to
    stderr; on success every rank waits for the others (rank 0's last writes) first."""
    import torch.distributed as dist

    global _in_run
    _in_run = True
    if not ctx.is_main:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives until os._exit)
    try:
        code = fn()
    except RankDone:
        code = 0
    except SystemExit as e:
        if isinstance(e.code, str):
            print(f"[rank {ctx.rank}] {e.code}", file=sys.stderr)
            code = 1
        else:
            code = int(e.code or 0)
    except BaseException:
        traceback.print_exc()
        code = 1
    if code == 0:
        dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
