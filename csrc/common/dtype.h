// dtype codes that cross the Python/C++ boundary (genfast/ops/_boundary.py holds the other side).
#pragma once
#include <stdexcept>
#include <string>

namespace genfast {
enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

// The CPU kernels take float32 and float64 only (Python never sends them anything else; the
// bindings check too): true for float32, false for float64, else a clear error naming `who`.
inline bool cpu_is_float32(int dtype, const char* who) {
  if (dtype != static_cast<int>(DType::Float32) && dtype != static_cast<int>(DType::Float64))
    throw std::invalid_argument(std::string("genfast CPU ") + who + ": dtype code " +
                                std::to_string(dtype) + " is not float32 (0) or float64 (1)");
  return dtype == static_cast<int>(DType::Float32);
}
}  // namespace genfast
