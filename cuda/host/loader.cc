#include "loader.h"

#include <dlfcn.h>

#include <mutex>

namespace kiln {
namespace {

CudaApi g_cuda;
DriverStatus g_driver;
std::once_flag g_driverOnce;

NvrtcApi g_nvrtc;
NvrtcStatus g_nvrtcStatus;
std::mutex g_nvrtcMutex;

std::string dlError(const char* fallback) {
  const char* e = dlerror();
  return e ? std::string(e) : std::string(fallback);
}

// Resolves every name of a table; returns the first missing one, or "" when all resolved.
template <typename Fn>
std::string resolve(void* lib, Fn&& forEach) {
  std::string missing;
  forEach([&](const char* name, void** slot, bool required) {
    dlerror();
    void* p = dlsym(lib, name);
    *slot = p;
    if (!p && required && missing.empty()) missing = name;
  });
  return missing;
}

void loadDriver() {
  // RTLD_LOCAL: keep the driver's symbols out of the global namespace of the Node process.
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    g_driver.reason = "no NVIDIA driver: " + dlError("libcuda.so.1 could not be loaded");
    return;
  }
  std::string missing = resolve(lib, [](auto&& slot) {
#define KILN_SLOT(name, ret, params) slot(#name, reinterpret_cast<void**>(&g_cuda.name), true);
    KILN_CUDA_REQUIRED(KILN_SLOT)
#undef KILN_SLOT
#define KILN_SLOT(name, ret, params) slot(#name, reinterpret_cast<void**>(&g_cuda.name), false);
    KILN_CUDA_OPTIONAL(KILN_SLOT)
#undef KILN_SLOT
  });
  if (!missing.empty()) {
    g_driver.reason = "libcuda.so.1 has no entry point " + missing + " (driver older than CUDA 11.4?)";
    return;
  }
  CUresult r = g_cuda.cuInit(0);
  if (r != CUDA_SUCCESS) {
    g_driver.reason = cuFailure("cuInit", r);
    return;
  }
  g_cuda.cuDriverGetVersion(&g_driver.driverVersion);
  r = g_cuda.cuDeviceGetCount(&g_driver.deviceCount);
  if (r != CUDA_SUCCESS) {
    g_driver.reason = cuFailure("cuDeviceGetCount", r);
    return;
  }
  if (g_driver.deviceCount < 1) {
    g_driver.reason = "the NVIDIA driver reports no CUDA device";
    return;
  }
  g_driver.ok = true;
}

}  // namespace

const DriverStatus& driverStatus() {
  std::call_once(g_driverOnce, loadDriver);
  return g_driver;
}

const CudaApi& cuda() { return g_cuda; }

std::string cuFailure(const char* call, CUresult r) {
  const char* name = nullptr;
  const char* text = nullptr;
  if (g_cuda.cuGetErrorName) g_cuda.cuGetErrorName(r, &name);
  if (g_cuda.cuGetErrorString) g_cuda.cuGetErrorString(r, &text);
  std::string msg = std::string(call) + " failed: " + (name ? name : "CUDA error") + " (" + std::to_string(r) + ")";
  if (text) msg += std::string(": ") + text;
  return msg;
}

const NvrtcStatus& loadNvrtc(const std::vector<std::string>& candidates) {
  std::lock_guard<std::mutex> lock(g_nvrtcMutex);
  if (g_nvrtcStatus.ok) return g_nvrtcStatus;
  std::string reasons;
  for (const std::string& candidate : candidates) {
    void* lib = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      reasons += (reasons.empty() ? "" : "; ") + dlError(candidate.c_str());
      continue;
    }
    NvrtcApi api;
    std::string missing = resolve(lib, [&api](auto&& slot) {
#define KILN_SLOT(name, ret, params) slot(#name, reinterpret_cast<void**>(&api.name), true);
      KILN_NVRTC_REQUIRED(KILN_SLOT)
#undef KILN_SLOT
    });
    if (!missing.empty()) {
      reasons += (reasons.empty() ? "" : "; ") + candidate + " has no entry point " + missing;
      dlclose(lib);
      continue;
    }
    g_nvrtc = api;
    NvrtcStatus st;
    st.ok = true;
    st.path = candidate;
    api.nvrtcVersion(&st.major, &st.minor);
    int n = 0;
    if (api.nvrtcGetNumSupportedArchs(&n) == NVRTC_SUCCESS && n > 0) {
      st.archs.resize(static_cast<size_t>(n));
      if (api.nvrtcGetSupportedArchs(st.archs.data()) != NVRTC_SUCCESS) st.archs.clear();
    }
    g_nvrtcStatus = st;
    return g_nvrtcStatus;
  }
  g_nvrtcStatus.reason = candidates.empty() ? "no NVRTC library candidates given" : "NVRTC not found: " + reasons;
  return g_nvrtcStatus;
}

const NvrtcApi& nvrtc() { return g_nvrtc; }

std::string nvrtcFailure(const char* call, nvrtcResult r) {
  const char* text = g_nvrtc.nvrtcGetErrorString ? g_nvrtc.nvrtcGetErrorString(r) : nullptr;
  return std::string(call) + " failed: " + (text ? text : "NVRTC error") + " (" + std::to_string(r) + ")";
}

}  // namespace kiln
