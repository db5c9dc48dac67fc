"""The build tells the truth: `import genfast` loads no extension, no Triton and no CUDA context;
the extensions import where they were built and carry their metadata; and the CUDA binary
itself (not a string written at build time) holds machine code for every target arch."""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import genfast
from genfast import backends

ROOT = Path(__file__).resolve().parents[1]
_LAZY = ("genfast._C", "genfast._cuda", "genfast.kernels", "triton")
_PROBE = f"""
import json, sys
import torch
import genfast
lazy = {_LAZY!r}
print(json.dumps({{
    "loaded": [n for n in lazy if any(m == n or m.startswith(n + ".") for m in sys.modules)],
    "dynamo": "torch._dynamo" in sys.modules,  # what usually drags triton in
    "cuda_initialized": torch.cuda.is_initialized(),
}}))
"""


def test_import_needs_no_extension_and_touches_no_gpu():
    # A fresh interpreter: this one has imported extensions and triton through other tests.
    run = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["loaded"] == [], (f"import genfast loaded {seen['loaded']} (torch._dynamo "
                                  f"imported: {seen['dynamo']})")
    assert seen["cuda_initialized"] is False, "import genfast created a CUDA context"


def test_cpu_extension_is_built_and_reports_metadata():
    mod, why = backends.extension("_C")
    assert mod is not None, why
    meta = mod.build_info()
    assert meta["rng"].startswith("philox4x32-10") and meta["compiler"]
    assert mod.isa() in mod.supported_isas()


_OPENMP_PROBE = """
import hashlib, json, torch
import genfast
from genfast.ops import spectral_norm as S
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
w, u, v = (torch.randn(s, generator=g) for s in ((512, 2304), (512,), (2304,)))
sigma = S.spectral_norm_power_iteration([w], [u], [v], 1, backend="cpu")  # a split, parallel call
torch.mm(w, w.t())  # and one of torch's
maps = open("/proc/self/maps").read().splitlines()
print(json.dumps({
    "runtime": genfast._C.openmp_runtime(),
    "mapped": sorted({l.split()[-1] for l in maps if "libgomp" in l or "libiomp" in l
                      or "libomp." in l}),
    "bits": hashlib.sha256(b"".join(t.numpy().tobytes() for t in (sigma, u, v))).hexdigest(),
}))
"""


def _openmp_probe(**env) -> dict:
    run = subprocess.run([sys.executable, "-c", _OPENMP_PROBE], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, env={**os.environ, **env})
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_cpu_kernels_run_on_torchs_openmp_runtime_or_threads_with_the_same_bits():
    """The CPU extension links no OpenMP library: it runs its parallel regions on the runtime
    torch loaded (csrc/common/openmp.h), so the process maps one runtime, not a second; with
    GENFAST_OPENMP=0 it spawns std::threads, and the results are the same bits."""
    if backends.extension("_C")[0] is None:
        pytest.skip("genfast._C is not built")
    omp, threads = _openmp_probe(), _openmp_probe(GENFAST_OPENMP="0")
    assert len(omp["mapped"]) <= 1, f"more than one OpenMP runtime loaded: {omp['mapped']}"
    if omp["mapped"]:  # torch's Linux wheels load one
        assert omp["runtime"] == omp["mapped"][0]
    assert threads["runtime"] is None
    assert omp["bits"] == threads["bits"]


# ------------------------------------------------------------------ the CUDA binary
def _expected_archs() -> list[str]:
    # setup.py's default; a CI job that builds with GENFAST_CUDA_ARCHS runs the tests with it.
    raw = os.environ.get("GENFAST_CUDA_ARCHS", "75;80;90")
    return [a.strip().replace(".", "") for a in raw.replace(",", ";").split(";") if a.strip()]


def _cuda_binary() -> Path:
    found = sorted(Path(genfast.__file__).parent.glob("_cuda*.so"))
    if not found:
        pytest.skip("genfast._cuda is not built (no nvcc, or GENFAST_CUDA=0)")
    return found[0]


def _section(data: bytes, wanted: str) -> bytes:
    """The bytes of ELF64 section `wanted` (empty if absent)."""
    assert data[:4] == b"\x7fELF" and data[4] == 2, "not an ELF64 file"
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i):  # (name offset, file offset, size)
        name, _, _, _, off, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, off, size

    strtab = header(shstrndx)[1]
    for i in range(shnum):
        name, off, size = header(i)
        if data[strtab + name:data.index(b"\0", strtab + name)].decode() == wanted:
            return data[off:off + size]
    return b""


def _fatbins(blob: bytes) -> list[list[tuple[str, int]]]:
    """Each fatbin (one per .cu object) as its entries [(kind, sm)], kind 'elf' (a cubin) or
    'ptx'. Layout: a 16-byte header (magic 0xBA55ED50, version, header size, payload size),
    then entries with (kind u16, _, header size u32, payload size u64, ..., arch u32 at 28)."""
    out, p = [], 0
    while p + 16 <= len(blob):
        magic, _, hsize, size = struct.unpack_from("<IHHQ", blob, p)
        if magic != 0xBA55ED50:
            p += 8  # fatbins are 8-byte aligned in the section
            continue
        entries, q = [], p + hsize
        while q < p + hsize + size:
            kind, _, ehsize, esize = struct.unpack_from("<HHIQ", blob, q)
            arch = struct.unpack_from("<I", blob, q + 28)[0]
            entries.append(({1: "ptx", 2: "elf"}.get(kind, str(kind)), arch))
            q += ehsize + esize
        out.append(entries)
        p += hsize + size
    return out


def test_cuda_binary_holds_a_cubin_per_arch_and_newest_ptx():
    so = _cuda_binary()
    fatbins = _fatbins(_section(so.read_bytes(), ".nv_fatbin"))
    sources = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
    assert len(fatbins) == len(sources), (
        f"{so.name} holds {len(fatbins)} fatbins, csrc/cuda has {len(sources)} .cu files "
        f"({', '.join(p.name for p in sources)}): a stale build")
    archs = _expected_archs()
    want = sorted([("elf", int(a)) for a in archs] + [("ptx", int(archs[-1]))])
    for entries in fatbins:
        assert sorted(entries) == want, f"{so.name}: fatbin holds {entries}, expected {want}"
    mod, why = backends.extension("_cuda")
    # Static cudart: the module loads without a GPU or libcudart.so.
    assert mod is not None, f"{so.name} exists but does not load: {why}"
    assert sorted(mod.build_info()["archs"].split(";")) == sorted(archs)


def _cuobjdump() -> str | None:
    found = shutil.which("cuobjdump")
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if not found and home and (Path(home) / "bin" / "cuobjdump").exists():
            found = str(Path(home) / "bin" / "cuobjdump")
    return found


def test_cuobjdump_lists_the_same_cubins():
    so = _cuda_binary()
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (CUDA binary utilities not installed): the fatbin "
                    "parse above still checks the binary")
    listing = subprocess.run([tool, "--list-elf", str(so)], capture_output=True, text=True,
                             check=True, timeout=120).stdout
    cubins = Counter(re.findall(r"\.sm_(\d+)a?\.cubin", listing))
    n_cu = len(list((ROOT / "csrc" / "cuda").glob("*.cu")))
    assert cubins == Counter({a: n_cu for a in _expected_archs()}), listing
