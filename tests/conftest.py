"""Shared test setup. TRITON_INTERPRET must be set before anything imports triton, so Triton
kernels run on the CPU under the interpreter (DESIGN.md section 5)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# The references' float32 convolutions and matmuls must be float32: on Ampere and newer cuDNN
# and cuBLAS would run them in TF32 (about 1e-3 off), outside the float32 tolerances.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)
