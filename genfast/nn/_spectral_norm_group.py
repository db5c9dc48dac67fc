"""SpectralNormGroup: every genfast spectral norm of a model updated in one multi-tensor
kernel call per step (public through genfast.nn.spectral_norm)."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import spectral_norm as ops
from ._spectral_norm_param import SpectralNorm, sn_entries


class SpectralNormGroup:
    """One kernel call per step for every genfast spectral norm in `model` (multi-tensor).

    A forward pre-hook on `model` runs the power iteration of all its spectral-normalized
    weights in one call (per dtype/device/settings group), then each layer uses the sigma
    computed for it instead of calling the kernel itself. Semantics are torch's: each forward
    of `model` in training mode is one round of `n_power_iterations` per layer; in eval mode
    the stored vectors are reused. Differences: a layer that a forward skips is updated anyway,
    and a layer called twice in one forward iterates again at its second call (as torch).
    Under DDP, give it the wrapped model (``ddp.module``), so that the buffers DDP broadcasts
    before each forward are what the update starts from.

    ``update()`` runs the call by hand (hook=False; the next forward of each layer then uses
    it); ``remove()`` detaches the hooks. Layers added later are picked up by ``refresh()``.
    """

    def __init__(self, model: nn.Module, *, hook: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.refresh()
        self._handles = [model.register_forward_pre_hook(self._pre_hook),
                         model.register_forward_hook(self._post_hook, always_call=True)
                         ] if hook else []

    def refresh(self) -> None:
        """Collect the genfast spectral norms of the model (weights of >= 2 dims, first in
        their parametrization list: their input is the stored parameter itself)."""
        self._layers = [(module.parametrizations[name], p)
                        for module, name, i, p in sn_entries(self.model)
                        if isinstance(p, SpectralNorm) and i == 0 and hasattr(p, "_u")]
        self._planned: tuple | None = None

    def __len__(self) -> int:
        return len(self._layers)

    def _pre_hook(self, module, args) -> None:
        self.update()

    def _post_hook(self, module, args, output) -> None:
        # A sigma the forward did not use belongs to this step's weights: drop it before an
        # optimizer step makes it stale.
        self.clear()

    def _plan(self) -> list[tuple]:
        """Layers grouped by what one kernel call shares, for the current training flags."""
        flags = tuple((sn.training, sn.n_power_iterations, sn.eps, sn.backend,
                       plist.original.dtype) for plist, sn in self._layers)
        if self._planned != flags:
            groups: dict[tuple, list] = {}
            for plist, sn in self._layers:
                w = plist.original
                n_iter = sn.n_power_iterations if sn.training else 0
                key = (w.device, w.dtype, n_iter, sn.eps, sn.backend)
                groups.setdefault(key, []).append((plist, sn))
            self._groups = [(items, [sn.dim for _, sn in items], n_iter, eps, backend,
                             ops.sigma_floor(eps, dtype))
                            for (_, dtype, n_iter, eps, backend), items in groups.items()]
            self._planned = flags
        return self._groups

    def update(self) -> None:
        """Power-iterate every layer (training ones; eval ones just get sigma) in one call."""
        compiling = torch.compiler.is_compiling()
        for items, dims, n_iter, eps, backend, floor in self._plan():
            # Fetched every call: .to(), load_state_dict or assignment may replace them.
            ws = [plist.original for plist, _ in items]
            us = [sn._buffers["_u"] for _, sn in items]
            vs = [sn._buffers["_v"] for _, sn in items]
            sigma = ops.power_iteration(ws, us, vs, dims, n_iter, eps, backend)
            sigma = ops.floor_sigma(sigma, floor, n_iter > 0)
            for (_, sn), s in zip(items, sigma.unbind(), strict=True):
                if compiling:
                    sn._pending = s
                else:  # the attribute exists (see __init__): skip nn.Module.__setattr__
                    sn.__dict__["_pending"] = s

    def clear(self) -> None:
        """Forget the sigmas update() computed that no layer has used yet."""
        compiling = torch.compiler.is_compiling()
        for _, sn in self._layers:
            if compiling:
                sn._pending = None
            else:
                sn.__dict__["_pending"] = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()
