// Finds the OpenMP runtime torch loaded (see common/openmp.h for why at run time).
#include "common/openmp.h"

#include <dlfcn.h>
#include <link.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace genfast::openmp {
namespace {

// A mapped object that is an OpenMP runtime exporting the GOMP interface. torch's own copy
// (a path under torch/) wins over another one some other package brought in.
int pick(struct dl_phdr_info* info, size_t, void* out) {
  const char* name = info->dlpi_name;
  if (name == nullptr || *name == '\0') return 0;
  const char* base = std::strrchr(name, '/');
  base = base ? base + 1 : name;
  const bool omp = std::strncmp(base, "libgomp", 7) == 0 || std::strncmp(base, "libiomp5", 8) == 0 ||
                   std::strncmp(base, "libomp.", 7) == 0;
  if (!omp) return 0;
  auto* best = static_cast<std::string*>(out);
  const bool torch = std::strstr(name, "/torch/") != nullptr;
  if (best->empty() || torch) *best = name;
  return torch ? 1 : 0;  // stop at torch's
}

Runtime find() {
  Runtime rt{nullptr, nullptr, nullptr, nullptr};
  const char* env = std::getenv("GENFAST_OPENMP");
  if (env != nullptr && std::strcmp(env, "0") == 0) return rt;
  static std::string path;
  dl_iterate_phdr(pick, &path);
  if (path.empty()) return rt;
  // RTLD_NOLOAD: only a library already in the process; never load a runtime ourselves. The
  // handle stays open for the life of the process (the runtime is never unloaded under us).
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (h == nullptr) return rt;
  rt.parallel = reinterpret_cast<decltype(rt.parallel)>(dlsym(h, "GOMP_parallel"));
  rt.thread_num = reinterpret_cast<decltype(rt.thread_num)>(dlsym(h, "omp_get_thread_num"));
  rt.num_threads = reinterpret_cast<decltype(rt.num_threads)>(dlsym(h, "omp_get_num_threads"));
  if (!rt.parallel || !rt.thread_num || !rt.num_threads) return Runtime{nullptr, nullptr, nullptr, nullptr};
  rt.path = path.c_str();
  return rt;
}

}  // namespace

const Runtime* runtime() {
  static const Runtime rt = find();  // thread-safe one-time lookup
  return rt.parallel ? &rt : nullptr;
}

}  // namespace genfast::openmp
