"""The build tells the truth: extensions import where they were built, carry their build
metadata, and the CUDA sources compiled for every default arch wherever nvcc exists."""

import importlib
import shutil

import pytest

import genfast
from genfast import backends


def test_import_needs_no_extension_and_touches_no_gpu():
    # genfast is already imported; its import must not have loaded an extension eagerly.
    assert "genfast" in repr(importlib.import_module("genfast"))
    assert isinstance(genfast.info(), str)


def test_cpu_extension_is_built_and_reports_metadata():
    mod, why = backends.extension("_C")
    assert mod is not None, why
    meta = mod.build_info()
    assert meta["rng"].startswith("philox4x32-10") and meta["compiler"]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found: CUDA sources not built")
def test_cuda_extension_compiled_for_every_default_arch():
    mod, why = backends.extension("_cuda")
    assert mod is not None, f"nvcc is here but genfast._cuda did not build or load: {why}"
    archs = mod.build_info()["archs"].split(";")
    assert {"75", "80", "90"} <= set(archs), archs
