// Run-time loading of libcuda.so.1 and libnvrtc: every entry point is resolved with dlsym into a
// table, so the addon links against neither and a machine without a driver gets a reason string.
#pragma once
#include <string>
#include <vector>

#include "cuda_api.h"

namespace kiln {

struct CudaApi {
#define KILN_FIELD(name, ret, params) name##_t name = nullptr;
  KILN_CUDA_REQUIRED(KILN_FIELD)
  KILN_CUDA_OPTIONAL(KILN_FIELD)
#undef KILN_FIELD
};

struct NvrtcApi {
#define KILN_FIELD(name, ret, params) name##_t name = nullptr;
  KILN_NVRTC_REQUIRED(KILN_FIELD)
#undef KILN_FIELD
};

struct DriverStatus {
  bool ok = false;
  std::string reason;  // why not, when !ok
  int driverVersion = 0;
  int deviceCount = 0;
};

/** Loads libcuda.so.1, resolves the entry points, runs cuInit and counts devices. Once per process. */
const DriverStatus& driverStatus();
/** The resolved driver table; only valid when driverStatus().ok. */
const CudaApi& cuda();

struct NvrtcStatus {
  bool ok = false;
  std::string reason;
  std::string path;  // the candidate that loaded
  int major = 0, minor = 0;
  std::vector<int> archs;  // e.g. 75, 80, 86, 89, 90, ...
};

/** Tries each candidate (a soname or a path) until one loads with every entry point. The first
 *  success sticks for the life of the process; failures are retried with the next call's list. */
const NvrtcStatus& loadNvrtc(const std::vector<std::string>& candidates);
const NvrtcApi& nvrtc();

/** "cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY (2): out of memory". */
std::string cuFailure(const char* call, CUresult r);
std::string nvrtcFailure(const char* call, nvrtcResult r);

}  // namespace kiln
