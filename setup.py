"""Build genfast: the C++ CPU extension (genfast._C) and, where nvcc is found, the CUDA one.

Neither extension links libtorch: they take raw pointers, sizes and strides from Python
(DESIGN.md section 3), so this file never imports torch, never touches the network, and one
build works across torch versions.

Build flags (environment variables):
  GENFAST_CUDA=0|1|auto   build genfast._cuda: never, always (fail if nvcc is missing), or
                          when nvcc is found (default: auto)
  GENFAST_CUDA_ARCHS      semicolon list of SM archs, default "75;80;90"
  MAX_JOBS                parallel compile jobs (default: number of CPUs)
  GENFAST_DEBUG=1         -O0 -g, no NDEBUG
  CUDA_HOME               where to look for nvcc before PATH
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()
CSRC = ROOT / "csrc"
DEBUG = os.environ.get("GENFAST_DEBUG", "0") == "1"
OPT = ["-O0", "-g"] if DEBUG else ["-O3", "-DNDEBUG"]


def _pybind11_include() -> str:
    import pybind11  # build requirement, see pyproject.toml

    return pybind11.get_include()


def _find_nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _cuda_home(nvcc: str) -> Path:
    # nvcc may be a wrapper script outside the toolkit (e.g. /usr/local/bin/nvcc): trust
    # CUDA_HOME, then nvcc's own prefix if it holds the runtime headers, then /usr/local/cuda.
    for cand in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                 Path(nvcc).resolve().parent.parent, "/usr/local/cuda"):
        if cand and (Path(cand) / "include" / "cuda_runtime.h").exists():
            return Path(cand)
    raise SystemExit(f"found nvcc at {nvcc} but no CUDA toolkit (include/cuda_runtime.h); "
                     "set CUDA_HOME or GENFAST_CUDA=0")


def _cuda_archs() -> list[str]:
    raw = os.environ.get("GENFAST_CUDA_ARCHS", "75;80;90")
    archs = [a.strip().replace(".", "") for a in raw.replace(",", ";").split(";") if a.strip()]
    if not archs or not all(a.isdigit() for a in archs):
        raise SystemExit(f"GENFAST_CUDA_ARCHS must list SM numbers like '75;80;90', got {raw!r}")
    return archs


def _cmd_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "unknown"


def _want_cuda() -> str | None:
    mode = os.environ.get("GENFAST_CUDA", "auto").lower()
    if mode not in ("0", "1", "auto"):
        raise SystemExit(f"GENFAST_CUDA must be 0, 1 or auto, got {mode!r}")
    nvcc = _find_nvcc()
    if mode == "0":
        return None
    if mode == "1" and nvcc is None:
        raise SystemExit("GENFAST_CUDA=1 but nvcc was not found (set CUDA_HOME or PATH)")
    return nvcc


def _meta_defines(extra: dict[str, str]) -> list[tuple[str, str]]:
    cxx = os.environ.get("CXX", sysconfig.get_config_var("CXX") or "c++").split()[0]
    version = _cmd_version([cxx, "-dumpfullversion"])
    meta = {"GENFAST_BUILD_CXX": f"{Path(cxx).name} {version}",
            "GENFAST_BUILD_PLATFORM": platform.platform(), **extra}
    # Quoted so the C++ sees string literals.
    return [(k, '"' + v.replace('"', "'") + '"') for k, v in meta.items()]


class BuildExt(build_ext):
    """Compiles .cu sources with nvcc, in parallel, then links with the host compiler."""

    def build_extensions(self):
        # Drop flags Python was built with that fight ours (-O2/-g from the interpreter build).
        for flag in ("-g", "-O2", "-O3", "-Wstrict-prototypes"):
            while flag in self.compiler.compiler_so:
                self.compiler.compiler_so.remove(flag)
        jobs = int(os.environ.get("MAX_JOBS", os.cpu_count() or 1))
        self.parallel = max(1, jobs)
        super().build_extensions()

    def build_extension(self, ext):
        cu = [s for s in ext.sources if s.endswith(".cu")]
        ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
        if cu:
            ext.extra_objects = list(ext.extra_objects or []) + self._nvcc_all(ext, cu)
        super().build_extension(ext)

    def _nvcc_all(self, ext, sources: list[str]) -> list[str]:
        nvcc = ext.nvcc
        archs = _cuda_archs()
        gencode = []
        for a in archs:
            gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
        # PTX of the newest arch too, so newer GPUs can JIT it.
        gencode += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
        out_dir = Path(self.build_temp) / "cuda"
        out_dir.mkdir(parents=True, exist_ok=True)

        def one(src: str) -> str:
            obj = str(out_dir / (Path(src).stem + ".o"))
            cmd = [nvcc, "-c", src, "-o", obj, "-std=c++17", "-Xcompiler", "-fPIC",
                   "--expt-relaxed-constexpr", "-lineinfo", f"-I{CSRC}", *gencode,
                   *(["-O0", "-g", "-G"] if DEBUG else ["-O3", "-DNDEBUG"])]
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            return obj

        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            return list(pool.map(one, sources))


def _extensions() -> list[Extension]:
    common_inc = [str(CSRC), _pybind11_include()]
    cflags = ["-std=c++17", "-fvisibility=hidden", "-Wall", "-Wno-unknown-pragmas", *OPT]
    cpu_sources = sorted(str(p.relative_to(ROOT)) for p in (CSRC / "cpu").glob("*.cpp"))
    exts = [
        Extension(
            "genfast._C",
            sources=["csrc/bindings.cpp", *cpu_sources],
            include_dirs=common_inc,
            extra_compile_args=cflags,
            extra_link_args=["-pthread"],
            libraries=["dl"],  # dlopen / dlsym of torch's OpenMP runtime (cpu/openmp.cpp)
            define_macros=_meta_defines({"GENFAST_BUILD_CUDA": "none"}),
            language="c++",
        )
    ]
    nvcc = _want_cuda()
    if nvcc:
        cuda_home = _cuda_home(nvcc)
        cu_sources = sorted(str(p.relative_to(ROOT)) for p in (CSRC / "cuda").glob("*.cu"))
        lib_dirs = [str(cuda_home / d) for d in ("lib64", "lib", "lib64/stubs")
                    if (cuda_home / d).exists()]
        ext = Extension(
            "genfast._cuda",
            sources=["csrc/bindings.cpp", *cu_sources],
            include_dirs=[*common_inc, str(cuda_home / "include")],
            library_dirs=lib_dirs,
            # Static cudart: the module needs no libcudart.so at run time, only the driver,
            # so it loads beside any torch CUDA build.
            libraries=["cudart_static", "dl", "rt"],
            extra_compile_args=cflags,
            extra_link_args=["-pthread"],
            define_macros=[("GENFAST_WITH_CUDA", "1"), *_meta_defines({
                "GENFAST_BUILD_CUDA": _cmd_version([nvcc, "--version"]),
                "GENFAST_BUILD_ARCHS": ";".join(_cuda_archs()),
            })],
            language="c++",
        )
        ext.nvcc = nvcc
        exts.append(ext)
    return exts


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExt},
    package_dir={"genfast": "genfast", "genfast.kernels": "kernels"},
    # Every package under genfast/ (a hand-kept list once left genfast.benchmarks out of wheels).
    packages=[*find_packages(include=["genfast", "genfast.*"]), "genfast.kernels"],
)
