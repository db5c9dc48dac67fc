"""The CPU attention path's peak memory grows linearly in H*W (the issue's O(H W) target),
measured as the peak resident set of one SAGAN-layer forward+backward in a fresh process
(genfast/benchmarks/peak_memory.py); the materialised layer is measured the same way, so the
test shows it would see an H*W x H*W/4 map."""

import pytest

from genfast import backends
from genfast.benchmarks.attention import MAT
from genfast.benchmarks.peak_memory import sagan_peak_mb

_C, _ = backends.extension("_C")
pytestmark = pytest.mark.skipif(not hasattr(_C, "attention_fwd"),
                                reason="the C++ CPU attention kernels are not built here")


def _peak(hw: int, provider: str) -> float:
    mb = sagan_peak_mb((2, 64, hw, hw), provider, "cpu", "float32")
    assert mb is not None, f"the measuring process failed for {provider} at {hw}x{hw}"
    return mb


def test_peak_memory_is_linear_in_hw():
    map_mb = lambda hw: 2 * hw * hw * (hw * hw // 4) * 4 / 2**20  # noqa: E731 (fp32, B=2)
    mat64 = _peak(64, MAT)
    assert mat64 > map_mb(64), f"the materialised layer peaked at {mat64:.1f} MB only"
    g64, g128 = _peak(64, "genfast:cpu"), _peak(128, "genfast:cpu")
    # Linear: 4x the pixels -> <= ~4x the memory (quadratic would be 16x); and far below the
    # 512 MB one 128x128 map would take (measured here: 14, 27, 86 MB at 32, 64, 128).
    assert g128 < 5 * max(g64, 1.0), (g64, g128)
    assert g128 < map_mb(128) / 4, (g128, map_mb(128))
    assert g64 < mat64 / 4, (g64, mat64)
