// One CUDA device as seen from JavaScript: its primary context, one non-blocking stream that every
// copy, launch and graph replay is queued on (so they run in call order), and the handles it gave
// out. Handles are checked on every use, so a stale one from JavaScript is an error, not a crash.
#pragma once
#include <napi.h>

#include <memory>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "loader.h"

namespace kiln {

struct PinnedBlock {
  void* p = nullptr;
  size_t size = 0;
};

/** The driver objects of one device. Shared with in-flight waits, so it outlives them. */
struct DeviceState {
  CUdevice dev = 0;
  CUcontext ctx = nullptr;
  CUstream stream = nullptr;
  std::unordered_map<CUdeviceptr, size_t> allocs;  // base pointer -> bytes
  std::unordered_set<CUmodule> modules;
  std::unordered_map<CUfunction, CUmodule> functions;
  std::unordered_set<CUgraphExec> graphs;
  // Page-locked staging for reads, reused: cuMemAllocHost is slow.
  std::vector<PinnedBlock> pinnedFree;
  size_t pinnedPooled = 0;
  int inflight = 0;        // async waits not yet settled
  bool capturing = false;  // a graph capture is open on `stream`
  bool closing = false;    // destroy() was called
  bool released = false;   // driver objects are gone

  /** Makes ctx current on the calling thread (cached per thread). */
  CUresult makeCurrent() const;
  /** A staging block of at least `bytes`, from the pool or newly page-locked. */
  CUresult takePinned(size_t bytes, PinnedBlock* out);
  void givePinned(PinnedBlock b);
  /** Frees everything, ignoring errors (the context may already be broken). */
  void release();
  ~DeviceState() { release(); }
};

class CudaContext : public Napi::ObjectWrap<CudaContext> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit CudaContext(const Napi::CallbackInfo& info);

 private:
  std::shared_ptr<DeviceState> s_;

  DeviceState& live(Napi::Env env, const char* what);
  void check(Napi::Env env, const char* call, CUresult r);
  size_t allocBytes(Napi::Env env, CUdeviceptr p);

  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value MemInfo(const Napi::CallbackInfo& info);
  Napi::Value Alloc(const Napi::CallbackInfo& info);
  Napi::Value Free(const Napi::CallbackInfo& info);
  Napi::Value Write(const Napi::CallbackInfo& info);
  Napi::Value Memset(const Napi::CallbackInfo& info);
  Napi::Value Copy(const Napi::CallbackInfo& info);
  Napi::Value Read(const Napi::CallbackInfo& info);
  Napi::Value Sync(const Napi::CallbackInfo& info);
  Napi::Value SyncNow(const Napi::CallbackInfo& info);
  Napi::Value LoadModule(const Napi::CallbackInfo& info);
  Napi::Value UnloadModule(const Napi::CallbackInfo& info);
  Napi::Value GetFunction(const Napi::CallbackInfo& info);
  Napi::Value FunctionInfo(const Napi::CallbackInfo& info);
  Napi::Value Launch(const Napi::CallbackInfo& info);
  Napi::Value BeginCapture(const Napi::CallbackInfo& info);
  Napi::Value EndCapture(const Napi::CallbackInfo& info);
  Napi::Value AbortCapture(const Napi::CallbackInfo& info);
  Napi::Value LaunchGraph(const Napi::CallbackInfo& info);
  Napi::Value DestroyGraph(const Napi::CallbackInfo& info);
  Napi::Value TimeGraph(const Napi::CallbackInfo& info);
  Napi::Value Destroy(const Napi::CallbackInfo& info);
  Napi::Value Wait(Napi::Env env, CUdeviceptr src, size_t bytes);
};

}  // namespace kiln
