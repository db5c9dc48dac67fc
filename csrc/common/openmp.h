// The OpenMP runtime torch has loaded, found at run time (csrc/cpu/openmp.cpp).
//
// genfast's CPU kernels run their parallel regions on torch's own OpenMP thread team: those
// threads are warm right after torch's parallel ops (they spin briefly, then sleep), so a region
// starts in about a microsecond where a std::thread costs 20-100 us, and no second pool competes
// with torch's for the cores. The extension does not link an OpenMP library: linking libgomp.so.1
// would load a second runtime beside a torch that ships its copy under another name (torch < 2.10
// wheels carry libgomp-<hash>.so.1). Instead the first parallel call looks through the objects
// already mapped in the process for torch's runtime (libgomp, or libiomp5 / libomp, which export
// the same GOMP entry points) and takes GOMP_parallel from it; without one, parallel_for spawns
// std::threads as before.
//
// fork(): in a child forked after the parent ran parallel regions, a region waits forever on
// libgomp's pool (GCC bug 52303). torch's own parallel ops hang there too (checked with an
// elementwise op on torch 2.13), so this adds no new case: DataLoader workers run with one
// thread, where parallel_for starts no region; GENFAST_OPENMP=0 restores std::threads.
#pragma once

namespace genfast::openmp {

struct Runtime {
  // GOMP_parallel(fn, data, num_threads, flags): runs fn(data) on a team, the caller included.
  void (*parallel)(void (*fn)(void*), void* data, unsigned num_threads, unsigned flags);
  int (*thread_num)();
  int (*num_threads)();
  const char* path;  // the library it came from
};

// torch's runtime, or nullptr (none loaded, or GENFAST_OPENMP=0 in the environment).
const Runtime* runtime();

}  // namespace genfast::openmp
