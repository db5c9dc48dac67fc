"""genfast's counter-based RNG, in plain PyTorch: the oracle every backend must match bit for bit.

The stream (version 1), shared by csrc/common/philox.h, kernels/ and csrc/cuda:

* Philox4x32-10 (Salmon et al. 2011, Random123), multipliers 0xD2511F53 / 0xCD9E8D57, key
  increments 0x9E3779B9 / 0xBB67AE85.
* key = (low 32 bits of the 64-bit seed, high 32 bits).
* Element (row r, column c) of the 2-D (rows, n) view an op works on draws word ``c & 3`` of
  the block for counter ``(c >> 2, low32(r), high32(r), 0)``. So four neighbouring columns
  share one Philox call, and a draw depends only on (seed, r, c), never on memory layout.
* uniform u = ((word >> 9) + 0.5) * 2**-23, exact in float32 and strictly inside (0, 1):
  u is in [2**-24, 1 - 2**-24], so -log(-log(u)) is always finite (|g| < 17).

Seeds travel as 1-element int64 tensors on the data's device, so neither drawing one from a
torch.Generator nor building one from an int forces a host sync.
"""

from __future__ import annotations

import torch

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF
_SEED_HIGH = 2**63 - 1


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    # a * m needs 64 unsigned bits; split a into 16-bit halves so every product fits int64.
    p1 = (a >> 16) * m
    p0 = (a & 0xFFFF) * m
    t = ((p1 & 0xFFFF) << 16) + p0
    return (p1 >> 16) + (t >> 32), t & _MASK32


def philox4x32(ctr: list[torch.Tensor], key: tuple[int, int],
               rounds: int = 10) -> list[torch.Tensor]:
    """Philox4x32 on int64 tensors that hold uint32 values."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for _ in range(rounds):
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
    return [c0, c1, c2, c3]


def seed_key(seed: int) -> tuple[int, int]:
    s = seed & 0xFFFFFFFFFFFFFFFF
    return s & _MASK32, s >> 32


def uniform(seed: int, rows: int | torch.Tensor, n: int, device: torch.device | str = "cpu",
            row_start: int = 0) -> torch.Tensor:
    """The float32 (R, n) uniforms the stream assigns to rows row_start.. row_start+rows-1 of a
    (*, n) view, or, for a tensor `rows` of R int64 row indices, to those rows (on its device)."""
    if isinstance(rows, torch.Tensor):
        r, device = rows.reshape(-1, 1).to(torch.int64), rows.device
    else:
        r = torch.arange(row_start, row_start + rows, device=device, dtype=torch.int64)[:, None]
    c = torch.arange(n, device=device, dtype=torch.int64)[None, :]
    shape = (r.shape[0], n)
    ctr = [(c >> 2).expand(shape), (r & _MASK32).expand(shape), (r >> 32).expand(shape),
           torch.zeros(shape, dtype=torch.int64, device=device)]
    words = philox4x32(ctr, seed_key(seed))
    lane = (c & 3).expand(shape)
    w = torch.where(lane == 0, words[0], torch.where(lane == 1, words[1],
                    torch.where(lane == 2, words[2], words[3])))
    return ((w >> 9).to(torch.float32) + 0.5) * 2.0**-23


def gumbel(seed: int, rows: int | torch.Tensor, n: int, device: torch.device | str = "cpu",
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard Gumbel noise -log(-log(u)) of `rows` (a count from row 0, or row indices, as
    uniform); float64 when asked, else float32 (the kernels' math)."""
    u = uniform(seed, rows, n, device)
    if dtype == torch.float64:
        u = u.double()
    return -torch.log(-torch.log(u))


def make_seed(device: torch.device, seed: int | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """The 1-element int64 seed tensor an op consumes, from `seed`, `generator` or torch's RNG."""
    if seed is not None and generator is not None:
        raise ValueError("pass either seed= or generator=, not both")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        s = seed & 0xFFFFFFFFFFFFFFFF
        s = s - 2**64 if s >= 2**63 else s  # same 64 bits, as int64
        # A fill kernel on the device: torch.tensor([s], device=cuda) would stage the value in
        # host memory and copy it over synchronously, a host sync per call in a decode loop.
        return torch.full((1,), s, dtype=torch.int64, device=device)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != device.type:
            raise ValueError(
                f"generator is on {generator.device}, but the logits are on {device}"
            )
    # Drawn on the device, so no host sync; follows torch.manual_seed when generator is None.
    return torch.randint(0, _SEED_HIGH, (1,), device=device, dtype=torch.int64, generator=generator)
