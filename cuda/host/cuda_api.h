// The slice of the CUDA driver API and NVRTC that Kiln uses, declared here so that building the
// addon never needs the CUDA toolkit: both libraries are dlopen'ed at run time. Types, enum values
// and signatures follow cuda.h / nvrtc.h (CUDA 12/13, 64-bit); check_abi.cc compares them with the
// real headers wherever those are installed.
#pragma once
#include <cstddef>

namespace kiln {

// ---- driver API types ---------------------------------------------------------------------------
typedef int CUresult;  // enum cudaError_enum
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;  // CUdeviceptr_v2
typedef struct CUctx_st* CUcontext;
typedef struct CUmod_st* CUmodule;
typedef struct CUfunc_st* CUfunction;
typedef struct CUstream_st* CUstream;
typedef struct CUevent_st* CUevent;
typedef struct CUgraph_st* CUgraph;
typedef struct CUgraphExec_st* CUgraphExec;
typedef int CUdevice_attribute;
typedef int CUfunction_attribute;
typedef int CUjit_option;
typedef int CUstreamCaptureMode;
typedef int CUstreamCaptureStatus;

constexpr CUresult CUDA_SUCCESS = 0;
constexpr CUresult CUDA_ERROR_NOT_FOUND = 500;

constexpr CUdevice_attribute CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK = 1;
constexpr CUdevice_attribute CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X = 5;
constexpr CUdevice_attribute CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y = 6;
constexpr CUdevice_attribute CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z = 7;
constexpr CUdevice_attribute CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK = 8;
constexpr CUdevice_attribute CU_DEVICE_ATTRIBUTE_WARP_SIZE = 10;
constexpr CUdevice_attribute CU_DEVICE_ATTRIBUTE_CLOCK_RATE = 13;
constexpr CUdevice_attribute CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;
constexpr CUdevice_attribute CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE = 36;
constexpr CUdevice_attribute CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH = 37;
constexpr CUdevice_attribute CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE = 38;
constexpr CUdevice_attribute CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
constexpr CUdevice_attribute CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;
constexpr CUdevice_attribute CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97;

constexpr CUfunction_attribute CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK = 0;
constexpr CUfunction_attribute CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES = 1;
constexpr CUfunction_attribute CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES = 3;
constexpr CUfunction_attribute CU_FUNC_ATTRIBUTE_NUM_REGS = 4;

constexpr CUjit_option CU_JIT_ERROR_LOG_BUFFER = 5;
constexpr CUjit_option CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6;

constexpr unsigned int CU_STREAM_NON_BLOCKING = 0x1;
constexpr unsigned int CU_EVENT_DISABLE_TIMING = 0x2;
// Relaxed: the captured code may still allocate or load modules (first launch of a kernel).
constexpr CUstreamCaptureMode CU_STREAM_CAPTURE_MODE_RELAXED = 2;

// X(name, return, parameters). `required` entries must resolve for the backend to be available;
// optional ones are checked at the call site.
#define KILN_CUDA_REQUIRED(X)                                                                          \
  X(cuGetErrorName, CUresult, (CUresult error, const char** pStr))                                  \
  X(cuGetErrorString, CUresult, (CUresult error, const char** pStr))                                \
  X(cuInit, CUresult, (unsigned int Flags))                                                          \
  X(cuDriverGetVersion, CUresult, (int* driverVersion))                                             \
  X(cuDeviceGetCount, CUresult, (int* count))                                                       \
  X(cuDeviceGet, CUresult, (CUdevice* device, int ordinal))                                         \
  X(cuDeviceGetName, CUresult, (char* name, int len, CUdevice dev))                                 \
  X(cuDeviceGetAttribute, CUresult, (int* pi, CUdevice_attribute attrib, CUdevice dev))             \
  X(cuDeviceTotalMem_v2, CUresult, (size_t* bytes, CUdevice dev))                                   \
  X(cuDevicePrimaryCtxRetain, CUresult, (CUcontext* pctx, CUdevice dev))                            \
  X(cuDevicePrimaryCtxRelease_v2, CUresult, (CUdevice dev))                                         \
  X(cuCtxSetCurrent, CUresult, (CUcontext ctx))                                                     \
  X(cuMemGetInfo_v2, CUresult, (size_t* free, size_t* total))                                       \
  X(cuMemAlloc_v2, CUresult, (CUdeviceptr* dptr, size_t bytesize))                                  \
  X(cuMemFree_v2, CUresult, (CUdeviceptr dptr))                                                     \
  X(cuMemAllocHost_v2, CUresult, (void** pp, size_t bytesize))                                      \
  X(cuMemFreeHost, CUresult, (void* p))                                                             \
  X(cuMemcpyHtoDAsync_v2, CUresult,                                                                 \
    (CUdeviceptr dstDevice, const void* srcHost, size_t ByteCount, CUstream hStream))               \
  X(cuMemcpyDtoHAsync_v2, CUresult,                                                                 \
    (void* dstHost, CUdeviceptr srcDevice, size_t ByteCount, CUstream hStream))                     \
  X(cuMemcpyDtoDAsync_v2, CUresult,                                                                 \
    (CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount, CUstream hStream))             \
  X(cuMemsetD8Async, CUresult, (CUdeviceptr dstDevice, unsigned char uc, size_t N, CUstream hStream)) \
  X(cuModuleLoadDataEx, CUresult,                                                                   \
    (CUmodule* module, const void* image, unsigned int numOptions, CUjit_option* options,           \
     void** optionValues))                                                                          \
  X(cuModuleUnload, CUresult, (CUmodule hmod))                                                      \
  X(cuModuleGetFunction, CUresult, (CUfunction* hfunc, CUmodule hmod, const char* name))            \
  X(cuFuncGetAttribute, CUresult, (int* pi, CUfunction_attribute attrib, CUfunction hfunc))         \
  X(cuLaunchKernel, CUresult,                                                                       \
    (CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ,             \
     unsigned int blockDimX, unsigned int blockDimY, unsigned int blockDimZ,                        \
     unsigned int sharedMemBytes, CUstream hStream, void** kernelParams, void** extra))             \
  X(cuStreamCreate, CUresult, (CUstream* phStream, unsigned int Flags))                             \
  X(cuStreamDestroy_v2, CUresult, (CUstream hStream))                                               \
  X(cuStreamSynchronize, CUresult, (CUstream hStream))                                              \
  X(cuEventCreate, CUresult, (CUevent* phEvent, unsigned int Flags))                                \
  X(cuEventRecord, CUresult, (CUevent hEvent, CUstream hStream))                                    \
  X(cuEventSynchronize, CUresult, (CUevent hEvent))                                                 \
  X(cuEventDestroy_v2, CUresult, (CUevent hEvent))                                                  \
  X(cuEventElapsedTime, CUresult, (float* pMilliseconds, CUevent hStart, CUevent hEnd))             \
  X(cuStreamBeginCapture_v2, CUresult, (CUstream hStream, CUstreamCaptureMode mode))                \
  X(cuStreamEndCapture, CUresult, (CUstream hStream, CUgraph* phGraph))                             \
  X(cuGraphInstantiateWithFlags, CUresult,                                                          \
    (CUgraphExec* phGraphExec, CUgraph hGraph, unsigned long long flags))                           \
  X(cuGraphLaunch, CUresult, (CUgraphExec hGraphExec, CUstream hStream))                            \
  X(cuGraphExecDestroy, CUresult, (CUgraphExec hGraphExec))                                         \
  X(cuGraphDestroy, CUresult, (CUgraph hGraph))

// Present in newer drivers only (cuFuncLoad: 12.4). Loading a function eagerly keeps lazy module
// loading from happening in the middle of a graph capture.
#define KILN_CUDA_OPTIONAL(X) X(cuFuncLoad, CUresult, (CUfunction function))

// ---- NVRTC --------------------------------------------------------------------------------------
typedef int nvrtcResult;
typedef struct _nvrtcProgram* nvrtcProgram;
constexpr nvrtcResult NVRTC_SUCCESS = 0;

#define KILN_NVRTC_REQUIRED(X)                                                                         \
  X(nvrtcGetErrorString, const char*, (nvrtcResult result))                                         \
  X(nvrtcVersion, nvrtcResult, (int* major, int* minor))                                            \
  X(nvrtcGetNumSupportedArchs, nvrtcResult, (int* numArchs))                                        \
  X(nvrtcGetSupportedArchs, nvrtcResult, (int* supportedArchs))                                     \
  X(nvrtcCreateProgram, nvrtcResult,                                                                \
    (nvrtcProgram* prog, const char* src, const char* name, int numHeaders,                         \
     const char* const* headers, const char* const* includeNames))                                  \
  X(nvrtcDestroyProgram, nvrtcResult, (nvrtcProgram* prog))                                         \
  X(nvrtcCompileProgram, nvrtcResult, (nvrtcProgram prog, int numOptions, const char* const* options)) \
  X(nvrtcGetProgramLogSize, nvrtcResult, (nvrtcProgram prog, size_t* logSizeRet))                   \
  X(nvrtcGetProgramLog, nvrtcResult, (nvrtcProgram prog, char* log))                                \
  X(nvrtcGetPTXSize, nvrtcResult, (nvrtcProgram prog, size_t* ptxSizeRet))                          \
  X(nvrtcGetPTX, nvrtcResult, (nvrtcProgram prog, char* ptx))                                       \
  X(nvrtcGetCUBINSize, nvrtcResult, (nvrtcProgram prog, size_t* cubinSizeRet))                      \
  X(nvrtcGetCUBIN, nvrtcResult, (nvrtcProgram prog, char* cubin))

#define KILN_DECLARE_TYPE(name, ret, params) typedef ret(*name##_t) params;
KILN_CUDA_REQUIRED(KILN_DECLARE_TYPE)
KILN_CUDA_OPTIONAL(KILN_DECLARE_TYPE)
KILN_NVRTC_REQUIRED(KILN_DECLARE_TYPE)
#undef KILN_DECLARE_TYPE

}  // namespace kiln
