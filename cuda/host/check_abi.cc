// Compile-only check that cuda_api.h matches the real CUDA headers, where they are installed:
//   g++ -std=c++17 -fsyntax-only -I<cuda>/include cuda/host/check_abi.cc
// (test/cuda-backend.test.ts runs it when nvcc's include directory exists). Not part of the addon.
// The real symbols are the un-suffixed names, mapped to the versioned ones by cuda.h's #defines
// (the per-thread-stream variants stay off because CUDA_API_PER_THREAD_DEFAULT_STREAM is unset).
#include <cuda.h>
#if __has_include(<nvrtc.h>)
#include <nvrtc.h>
#define KILN_HAVE_NVRTC_H 1
#endif
#include <type_traits>

#include "cuda_api.h"

static_assert(sizeof(kiln::CUdeviceptr) == sizeof(::CUdeviceptr), "CUdeviceptr size");
static_assert(sizeof(kiln::CUresult) == sizeof(::CUresult), "CUresult size");
static_assert(sizeof(kiln::CUdevice_attribute) == sizeof(::CUdevice_attribute), "enum size");
static_assert(std::is_same<kiln::CUdevice, ::CUdevice>::value, "CUdevice");

#define SAME_VALUE(name) static_assert(static_cast<long long>(kiln::name) == static_cast<long long>(::name), #name);
SAME_VALUE(CUDA_SUCCESS)
SAME_VALUE(CUDA_ERROR_NOT_FOUND)
SAME_VALUE(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)
SAME_VALUE(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X)
SAME_VALUE(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y)
SAME_VALUE(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z)
SAME_VALUE(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK)
SAME_VALUE(CU_DEVICE_ATTRIBUTE_WARP_SIZE)
SAME_VALUE(CU_DEVICE_ATTRIBUTE_CLOCK_RATE)
SAME_VALUE(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
SAME_VALUE(CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)
SAME_VALUE(CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)
SAME_VALUE(CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
SAME_VALUE(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
SAME_VALUE(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
SAME_VALUE(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
SAME_VALUE(CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)
SAME_VALUE(CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
SAME_VALUE(CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)
SAME_VALUE(CU_FUNC_ATTRIBUTE_NUM_REGS)
SAME_VALUE(CU_JIT_ERROR_LOG_BUFFER)
SAME_VALUE(CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES)
SAME_VALUE(CU_STREAM_NON_BLOCKING)
SAME_VALUE(CU_EVENT_DISABLE_TIMING)
SAME_VALUE(CU_STREAM_CAPTURE_MODE_RELAXED)
#undef SAME_VALUE

// Pointer types are distinct opaque structs in each namespace, so compare with handles mapped over.
template <typename T> struct Map { using type = T; };
#define MAP(kt, rt) template <> struct Map<kiln::kt> { using type = ::rt; };
MAP(CUcontext, CUcontext)
MAP(CUmodule, CUmodule)
MAP(CUfunction, CUfunction)
MAP(CUstream, CUstream)
MAP(CUevent, CUevent)
MAP(CUgraph, CUgraph)
MAP(CUgraphExec, CUgraphExec)
MAP(CUcontext*, CUcontext*)
MAP(CUmodule*, CUmodule*)
MAP(CUfunction*, CUfunction*)
MAP(CUstream*, CUstream*)
MAP(CUevent*, CUevent*)
MAP(CUgraph*, CUgraph*)
MAP(CUgraphExec*, CUgraphExec*)
#ifdef KILN_HAVE_NVRTC_H
MAP(nvrtcProgram, nvrtcProgram)
MAP(nvrtcProgram*, nvrtcProgram*)
#endif
#undef MAP
// Enums declared as int here: map int parameters to whatever the real header has in that slot by
// comparing size and signedness-agnostic layout instead of identity.
template <typename K, typename R> struct SameArg {
  static constexpr bool value =
      std::is_same<typename Map<K>::type, R>::value ||
      (std::is_same<K, int>::value && std::is_enum<R>::value && sizeof(R) == sizeof(int)) ||
      (std::is_same<K, int*>::value && std::is_pointer<R>::value &&
       std::is_enum<typename std::remove_pointer<R>::type>::value);
};
template <typename K, typename R> struct SameFn;
template <typename KR, typename... KA, typename RR, typename... RA>
struct SameFn<KR (*)(KA...), RR (*)(RA...)> {
  static constexpr bool value = sizeof...(KA) == sizeof...(RA) && SameArg<KR, RR>::value &&
                                (SameArg<KA, RA>::value && ...);
};

#define CHECK_FN(name, ret, params) \
  static_assert(SameFn<kiln::name##_t, decltype(&::name)>::value, "signature of " #name);
KILN_CUDA_REQUIRED(CHECK_FN)
KILN_CUDA_OPTIONAL(CHECK_FN)
#ifdef KILN_HAVE_NVRTC_H
KILN_NVRTC_REQUIRED(CHECK_FN)
#endif
#undef CHECK_FN

int main() { return 0; }
