"""torch.export of a small model built on genfast.nn.spectral_norm: the exported program holds
the genfast op, runs, and matches the eager model step for step, in training mode (u and v
are buffers the program mutates) and in eval mode (where, as torch's, it mutates nothing),
with and without fold."""

import copy

import pytest
import torch
from _helpers import TOL
from torch import nn

from genfast.nn.spectral_norm import spectral_norm

# Training mode iterates (u and v updated in place); eval mode reads sigma, mutating nothing.
OPS = {"train": "genfast.spectral_norm_power_iteration", "eval": "genfast.spectral_norm_sigma"}


def _model(fold):
    torch.manual_seed(0)
    return nn.Sequential(spectral_norm(nn.Conv2d(1, 4, 3), fold=fold), nn.LeakyReLU(0.2),
                         spectral_norm(nn.Conv2d(4, 4, 3, 2)), nn.Flatten(),
                         spectral_norm(nn.Linear(4 * 2 * 2, 1), fold=fold))


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_exported_program_matches_eager(mode, fold):
    model = _model(fold).train(mode == "train")
    eager = copy.deepcopy(model)
    x = torch.randn(2, 1, 8, 8)
    ep = torch.export.export(model, (x,))
    code = ep.graph_module.print_readable(print_output=False)
    assert OPS[mode] in code and all(op not in code for op in OPS.values() if op != OPS[mode])
    mutated = set(ep.run_decompositions().graph_signature.buffers_to_mutate.values())
    vectors = {k for k in dict(model.named_buffers()) if k.endswith(("._u", "._v"))}
    assert mutated == (vectors if mode == "train" else set())
    run = ep.module()
    for step in range(3):
        xs = x + step
        torch.testing.assert_close(run(xs), eager(xs), **TOL[torch.float32])
        exported = dict(run.named_buffers())
        for k, b in eager.named_buffers():
            torch.testing.assert_close(exported[k], b, **TOL[torch.float32])
