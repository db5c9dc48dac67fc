// dtype codes that cross the Python/C++ boundary (genfast/ops/_boundary.py holds the other side).
#pragma once

namespace genfast {
enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };
}  // namespace genfast
