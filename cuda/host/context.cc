#include "context.h"

#include <cmath>
#include <cstring>
#include <string>

namespace kiln {
namespace {

thread_local CUcontext t_current = nullptr;

constexpr size_t kPinnedPoolLimit = 256u << 20;

std::string hex(uint64_t v) {
  char buf[32];
  snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

uint64_t toU64(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsBigInt()) throw Napi::TypeError::New(env, std::string(what) + " must be a bigint handle");
  bool lossless = false;
  uint64_t x = v.As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) throw Napi::RangeError::New(env, std::string(what) + " is not a 64-bit handle");
  return x;
}

size_t toSize(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) throw Napi::TypeError::New(env, std::string(what) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d > 9007199254740991.0 || std::floor(d) != d) {
    throw Napi::RangeError::New(env, std::string(what) + " = " + std::to_string(d) + " is not a byte count");
  }
  return static_cast<size_t>(d);
}

unsigned int toDim(Napi::Env env, const Napi::Value& v, const char* what) {
  size_t x = toSize(env, v, what);
  if (x > 0xffffffffu) throw Napi::RangeError::New(env, std::string(what) + " exceeds 32 bits");
  return static_cast<unsigned int>(x);
}

/** Bytes of a typed array or DataView, as (pointer, length). */
std::pair<uint8_t*, size_t> bytesOf(Napi::Env env, const Napi::Value& v, const char* what) {
  if (v.IsTypedArray()) {
    auto ta = v.As<Napi::TypedArray>();
    return {static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset(), ta.ByteLength()};
  }
  if (v.IsDataView()) {
    auto dv = v.As<Napi::DataView>();
    return {static_cast<uint8_t*>(dv.ArrayBuffer().Data()) + dv.ByteOffset(), dv.ByteLength()};
  }
  throw Napi::TypeError::New(env, std::string(what) + " must be a typed array");
}

/** Waits on a worker thread for an event recorded on the stream; then, on the main thread, copies
 *  the staging block (if any) into a new ArrayBuffer and settles the promise. */
class WaitWorker : public Napi::AsyncWorker {
 public:
  WaitWorker(Napi::Env env, std::shared_ptr<DeviceState> s, CUevent ev, PinnedBlock staging, size_t bytes)
      : Napi::AsyncWorker(env, "kiln.cuda.wait"),
        s_(std::move(s)), ev_(ev), staging_(staging), bytes_(bytes),
        deferred_(Napi::Promise::Deferred::New(env)) {
    s_->inflight++;
  }
  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override {
    // The context stays valid: release() waits until no wait is in flight.
    CUresult r = cuda().cuCtxSetCurrent(s_->ctx);
    if (r != CUDA_SUCCESS) return SetError(cuFailure("cuCtxSetCurrent", r));
    r = cuda().cuEventSynchronize(ev_);
    if (r != CUDA_SUCCESS) SetError(cuFailure("cuEventSynchronize", r));
  }
  void OnOK() override {
    Napi::Env env = Env();
    if (!staging_.p) {
      settle();
      deferred_.Resolve(env.Undefined());
      return;
    }
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, bytes_);
    std::memcpy(ab.Data(), staging_.p, bytes_);
    settle();
    deferred_.Resolve(ab);
  }
  void OnError(const Napi::Error& e) override {
    settle();
    deferred_.Reject(e.Value());
  }

 private:
  void settle() {
    s_->makeCurrent();
    cuda().cuEventDestroy_v2(ev_);
    if (staging_.p) s_->givePinned(staging_);
    staging_ = PinnedBlock{};
    if (--s_->inflight == 0 && s_->closing) s_->release();
  }
  std::shared_ptr<DeviceState> s_;
  CUevent ev_;
  PinnedBlock staging_;
  size_t bytes_;
  Napi::Promise::Deferred deferred_;
};

}  // namespace

// ---- DeviceState ----------------------------------------------------------------------------------

CUresult DeviceState::makeCurrent() const {
  if (t_current == ctx) return CUDA_SUCCESS;
  CUresult r = cuda().cuCtxSetCurrent(ctx);
  if (r == CUDA_SUCCESS) t_current = ctx;
  return r;
}

CUresult DeviceState::takePinned(size_t bytes, PinnedBlock* out) {
  size_t best = pinnedFree.size();
  for (size_t i = 0; i < pinnedFree.size(); i++) {
    if (pinnedFree[i].size >= bytes && (best == pinnedFree.size() || pinnedFree[i].size < pinnedFree[best].size)) best = i;
  }
  if (best != pinnedFree.size()) {
    *out = pinnedFree[best];
    pinnedPooled -= out->size;
    pinnedFree.erase(pinnedFree.begin() + static_cast<std::ptrdiff_t>(best));
    return CUDA_SUCCESS;
  }
  // Power-of-two sizes up to 64 MiB so blocks get reused across similar reads; 2 MiB steps above.
  size_t size = 64u << 10;
  if (bytes > (64u << 20)) {
    size = (bytes + (2u << 20) - 1) / (2u << 20) * (2u << 20);
  } else {
    while (size < bytes) size <<= 1;
  }
  out->size = size;
  return cuda().cuMemAllocHost_v2(&out->p, size);
}

void DeviceState::givePinned(PinnedBlock b) {
  if (closing || pinnedPooled + b.size > kPinnedPoolLimit) {
    cuda().cuMemFreeHost(b.p);
    return;
  }
  pinnedFree.push_back(b);
  pinnedPooled += b.size;
}

void DeviceState::release() {
  if (released || !ctx) return;
  released = true;
  const CudaApi& api = cuda();
  api.cuCtxSetCurrent(ctx);
  t_current = nullptr;  // another DeviceState may retain the same primary context later
  if (capturing) {
    CUgraph g = nullptr;
    api.cuStreamEndCapture(stream, &g);
    if (g) api.cuGraphDestroy(g);
    capturing = false;
  }
  if (stream) api.cuStreamSynchronize(stream);
  for (CUgraphExec g : graphs) api.cuGraphExecDestroy(g);
  graphs.clear();
  for (CUmodule m : modules) api.cuModuleUnload(m);
  modules.clear();
  functions.clear();
  for (auto& a : allocs) api.cuMemFree_v2(a.first);
  allocs.clear();
  for (PinnedBlock& b : pinnedFree) api.cuMemFreeHost(b.p);
  pinnedFree.clear();
  pinnedPooled = 0;
  if (stream) api.cuStreamDestroy_v2(stream);
  stream = nullptr;
  api.cuCtxSetCurrent(nullptr);
  api.cuDevicePrimaryCtxRelease_v2(dev);
  ctx = nullptr;
}

// ---- CudaContext ----------------------------------------------------------------------------------

Napi::Function CudaContext::Define(Napi::Env env) {
  return DefineClass(env, "CudaContext", {
    InstanceMethod<&CudaContext::Info>("info"),
    InstanceMethod<&CudaContext::MemInfo>("memInfo"),
    InstanceMethod<&CudaContext::Alloc>("alloc"),
    InstanceMethod<&CudaContext::Free>("free"),
    InstanceMethod<&CudaContext::Write>("write"),
    InstanceMethod<&CudaContext::Memset>("memset"),
    InstanceMethod<&CudaContext::Copy>("copy"),
    InstanceMethod<&CudaContext::Read>("read"),
    InstanceMethod<&CudaContext::Sync>("sync"),
    InstanceMethod<&CudaContext::SyncNow>("syncNow"),
    InstanceMethod<&CudaContext::LoadModule>("loadModule"),
    InstanceMethod<&CudaContext::UnloadModule>("unloadModule"),
    InstanceMethod<&CudaContext::GetFunction>("getFunction"),
    InstanceMethod<&CudaContext::FunctionInfo>("functionInfo"),
    InstanceMethod<&CudaContext::Launch>("launch"),
    InstanceMethod<&CudaContext::BeginCapture>("beginCapture"),
    InstanceMethod<&CudaContext::EndCapture>("endCapture"),
    InstanceMethod<&CudaContext::AbortCapture>("abortCapture"),
    InstanceMethod<&CudaContext::LaunchGraph>("launchGraph"),
    InstanceMethod<&CudaContext::DestroyGraph>("destroyGraph"),
    InstanceMethod<&CudaContext::TimeGraph>("timeGraph"),
    InstanceMethod<&CudaContext::Destroy>("destroy"),
  });
}

CudaContext::CudaContext(const Napi::CallbackInfo& info) : Napi::ObjectWrap<CudaContext>(info) {
  Napi::Env env = info.Env();
  const DriverStatus& st = driverStatus();
  if (!st.ok) throw Napi::Error::New(env, st.reason);
  size_t ordinal = info.Length() > 0 ? toSize(env, info[0], "device ordinal") : 0;
  if (ordinal >= static_cast<size_t>(st.deviceCount)) {
    throw Napi::RangeError::New(env, "CUDA device " + std::to_string(ordinal) + " does not exist (" +
                                         std::to_string(st.deviceCount) + " present)");
  }
  const CudaApi& api = cuda();
  auto s = std::make_shared<DeviceState>();
  check(env, "cuDeviceGet", api.cuDeviceGet(&s->dev, static_cast<int>(ordinal)));
  check(env, "cuDevicePrimaryCtxRetain", api.cuDevicePrimaryCtxRetain(&s->ctx, s->dev));
  t_current = nullptr;
  check(env, "cuCtxSetCurrent", s->makeCurrent());
  check(env, "cuStreamCreate", api.cuStreamCreate(&s->stream, CU_STREAM_NON_BLOCKING));
  s_ = std::move(s);
}

void CudaContext::check(Napi::Env env, const char* call, CUresult r) {
  if (r != CUDA_SUCCESS) throw Napi::Error::New(env, cuFailure(call, r));
}

DeviceState& CudaContext::live(Napi::Env env, const char* what) {
  if (!s_ || s_->closing) throw Napi::Error::New(env, std::string(what) + ": the CUDA device was destroyed");
  check(env, "cuCtxSetCurrent", s_->makeCurrent());
  return *s_;
}

size_t CudaContext::allocBytes(Napi::Env env, CUdeviceptr p) {
  auto it = s_->allocs.find(p);
  if (it == s_->allocs.end()) throw Napi::Error::New(env, "unknown device pointer " + hex(p) + " (freed, or from another device)");
  return it->second;
}

Napi::Value CudaContext::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceState& s = live(env, "info");
  const CudaApi& api = cuda();
  char name[256] = {0};
  check(env, "cuDeviceGetName", api.cuDeviceGetName(name, sizeof name - 1, s.dev));
  size_t total = 0;
  check(env, "cuDeviceTotalMem_v2", api.cuDeviceTotalMem_v2(&total, s.dev));
  auto attr = [&](CUdevice_attribute a) {
    int v = 0;
    check(env, "cuDeviceGetAttribute", api.cuDeviceGetAttribute(&v, a, s.dev));
    return v;
  };
  Napi::Object o = Napi::Object::New(env);
  o.Set("name", std::string(name));
  o.Set("totalMem", static_cast<double>(total));
  o.Set("driverVersion", driverStatus().driverVersion);
  o.Set("ccMajor", attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR));
  o.Set("ccMinor", attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR));
  o.Set("multiprocessors", attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT));
  o.Set("warpSize", attr(CU_DEVICE_ATTRIBUTE_WARP_SIZE));
  o.Set("maxThreadsPerBlock", attr(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK));
  o.Set("maxSharedPerBlock", attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK));
  o.Set("maxSharedPerBlockOptin", attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN));
  Napi::Array grid = Napi::Array::New(env, 3);
  grid.Set(0u, attr(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X));
  grid.Set(1u, attr(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y));
  grid.Set(2u, attr(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z));
  o.Set("maxGrid", grid);
  o.Set("clockKHz", attr(CU_DEVICE_ATTRIBUTE_CLOCK_RATE));
  o.Set("memoryClockKHz", attr(CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE));
  o.Set("memoryBusWidthBits", attr(CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH));
  o.Set("l2Bytes", attr(CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE));
  return o;
}

Napi::Value CudaContext::MemInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  live(env, "memInfo");
  size_t freeBytes = 0, total = 0;
  check(env, "cuMemGetInfo_v2", cuda().cuMemGetInfo_v2(&freeBytes, &total));
  Napi::Object o = Napi::Object::New(env);
  o.Set("free", static_cast<double>(freeBytes));
  o.Set("total", static_cast<double>(total));
  return o;
}

// alloc(bytes, zero): a device allocation. Zero-filling is queued on the stream, except during a
// capture, where it would become part of the graph.
Napi::Value CudaContext::Alloc(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceState& s = live(env, "alloc");
  size_t bytes = toSize(env, info[0], "alloc bytes");
  if (bytes == 0) throw Napi::RangeError::New(env, "alloc of 0 bytes");
  bool zero = info.Length() > 1 && info[1].ToBoolean().Value();
  CUdeviceptr p = 0;
  check(env, "cuMemAlloc_v2", cuda().cuMemAlloc_v2(&p, bytes));
  s.allocs.emplace(p, bytes);
  if (zero && !s.capturing) check(env, "cuMemsetD8Async", cuda().cuMemsetD8Async(p, 0, bytes, s.stream));
  return Napi::BigInt::New(env, static_cast<uint64_t>(p));
}

Napi::Value CudaContext::Free(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceState& s = live(env, "free");
  CUdeviceptr p = toU64(env, info[0], "device pointer");
  allocBytes(env, p);
  if (s.capturing) throw Napi::Error::New(env, "free during a graph capture (it would synchronize the stream)");
  // Queued work may still use the memory: let the stream drain first (cuMemFree synchronizes the
  // device too, but that is not a documented promise for non-blocking streams).
  check(env, "cuStreamSynchronize", cuda().cuStreamSynchronize(s.stream));
  s.allocs.erase(p);
  check(env, "cuMemFree_v2", cuda().cuMemFree_v2(p));
  return env.Undefined();
}

// write(ptr, byteOffset, data): queued after earlier work; from pageable memory the driver has
// taken its copy of `data` when this returns.
Napi::Value CudaContext::Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceState& s = live(env, "write");
  CUdeviceptr p = toU64(env, info[0], "device pointer");
  size_t off = toSize(env, info[1], "write byte offset");
  auto [data, len] = bytesOf(env, info[2], "write data");
  size_t size = allocBytes(env, p);
  if (off > size || len > size - off) {
    throw Napi::RangeError::New(env, "write of " + std::to_string(len) + " bytes at offset " + std::to_string(off) +
                                         " overruns an allocation of " + std::to_string(size) + " bytes");
  }
  if (s.capturing) throw Napi::Error::New(env, "write during a graph capture: host-to-device copies are not captured");
  if (len) check(env, "cuMemcpyHtoDAsync_v2", cuda().cuMemcpyHtoDAsync_v2(p + off, data, len, s.stream));
  return env.Undefined();
}

Napi::Value CudaContext::Memset(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceState& s = live(env, "memset");
  CUdeviceptr p = toU64(env, info[0], "device pointer");
  size_t off = toSize(env, info[1], "memset byte offset");
  size_t value = toSize(env, info[2], "memset value");
  size_t len = toSize(env, info[3], "memset bytes");
  size_t size = allocBytes(env, p);
  if (value > 255) throw Napi::RangeError::New(env, "memset value must be a byte");
  if (off > size || len > size - off) throw Napi::RangeError::New(env, "memset overruns an allocation of " + std::to_string(size) + " bytes");
  if (len) check(env, "cuMemsetD8Async", cuda().cuMemsetD8Async(p + off, static_cast<unsigned char>(value), len, s.stream));
  return env.Undefined();
}

Napi::Value CudaContext::Copy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceState& s = live(env, "copy");
  CUdeviceptr dst = toU64(env, info[0], "destination pointer");
  size_t dstOff = toSize(env, info[1], "destination byte offset");
  CUdeviceptr src = toU64(env, info[2], "source pointer");
  size_t srcOff = toSize(env, info[3], "source byte offset");
  size_t len = toSize(env, info[4], "copy bytes");
  size_t dstSize = allocBytes(env, dst), srcSize = allocBytes(env, src);
  if (dstOff > dstSize || len > dstSize - dstOff) throw Napi::RangeError::New(env, "copy overruns the destination");
  if (srcOff > srcSize || len > srcSize - srcOff) throw Napi::RangeError::New(env, "copy overruns the source");
  if (len) check(env, "cuMemcpyDtoDAsync_v2", cuda().cuMemcpyDtoDAsync_v2(dst + dstOff, src + srcOff, len, s.stream));
  return env.Undefined();
}

// Records an event after everything queued so far and waits for it off the main thread. With a
// source pointer it first queues a copy of `bytes` into page-locked staging, and the promise
// yields them as an ArrayBuffer; otherwise it yields undefined.
Napi::Value CudaContext::Wait(Napi::Env env, CUdeviceptr src, size_t bytes) {
  DeviceState& s = *s_;
  const CudaApi& api = cuda();
  if (s.capturing) throw Napi::Error::New(env, "waiting for the device during a graph capture");
  PinnedBlock staging;
  if (src) {
    check(env, "cuMemAllocHost_v2", s.takePinned(bytes ? bytes : 1, &staging));
    CUresult r = bytes ? api.cuMemcpyDtoHAsync_v2(staging.p, src, bytes, s.stream) : CUDA_SUCCESS;
    if (r != CUDA_SUCCESS) {
      s.givePinned(staging);
      check(env, "cuMemcpyDtoHAsync_v2", r);
    }
  }
  CUevent ev = nullptr;
  CUresult r = api.cuEventCreate(&ev, CU_EVENT_DISABLE_TIMING);
  if (r == CUDA_SUCCESS) {
    r = api.cuEventRecord(ev, s.stream);
    if (r != CUDA_SUCCESS) api.cuEventDestroy_v2(ev);
  }
  if (r != CUDA_SUCCESS) {
    if (staging.p) s.givePinned(staging);
    check(env, "cuEventRecord", r);
  }
  auto* worker = new WaitWorker(env, s_, ev, staging, bytes);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value CudaContext::Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  live(env, "read");
  CUdeviceptr p = toU64(env, info[0], "device pointer");
  size_t off = toSize(env, info[1], "read byte offset");
  size_t len = toSize(env, info[2], "read bytes");
  size_t size = allocBytes(env, p);
  if (off > size || len > size - off) {
    throw Napi::RangeError::New(env, "read of " + std::to_string(len) + " bytes at offset " + std::to_string(off) +
                                         " overruns an allocation of " + std::to_string(size) + " bytes");
  }
  return Wait(env, p + off, len);
}

Napi::Value CudaContext::Sync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  live(env, "sync");
  return Wait(env, 0, 0);
}

// Blocks the calling thread until the stream is idle (benchmarks, teardown).
Napi::Value CudaContext::SyncNow(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceState& s = live(env, "syncNow");
  if (s.capturing) throw Napi::Error::New(env, "waiting for the device during a graph capture");
  check(env, "cuStreamSynchronize", cuda().cuStreamSynchronize(s.stream));
  return env.Undefined();
}

// loadModule(image): a cubin, or PTX ending in a NUL byte. The JIT error log joins the message.
Napi::Value CudaContext::LoadModule(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceState& s = live(env, "loadModule");
  auto [data, len] = bytesOf(env, info[0], "module image");
  if (len == 0) throw Napi::Error::New(env, "loadModule: empty image");
  char log[8192] = {0};
  CUjit_option opts[2] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
  void* vals[2] = {log, reinterpret_cast<void*>(static_cast<uintptr_t>(sizeof log - 1))};
  CUmodule m = nullptr;
  CUresult r = cuda().cuModuleLoadDataEx(&m, data, 2, opts, vals);
  if (r != CUDA_SUCCESS) {
    std::string msg = cuFailure("cuModuleLoadDataEx", r);
    if (log[0]) msg += "\n" + std::string(log);
    throw Napi::Error::New(env, msg);
  }
  s.modules.insert(m);
  return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(m)));
}

Napi::Value CudaContext::UnloadModule(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceState& s = live(env, "unloadModule");
  auto m = reinterpret_cast<CUmodule>(static_cast<uintptr_t>(toU64(env, info[0], "module handle")));
  if (!s.modules.count(m)) throw Napi::Error::New(env, "unknown module handle (already unloaded?)");
  if (s.capturing) throw Napi::Error::New(env, "unloadModule during a graph capture");
  for (auto it = s.functions.begin(); it != s.functions.end();) it = it->second == m ? s.functions.erase(it) : std::next(it);
  s.modules.erase(m);
  check(env, "cuModuleUnload", cuda().cuModuleUnload(m));
  return env.Undefined();
}

Napi::Value CudaContext::GetFunction(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceState& s = live(env, "getFunction");
  auto m = reinterpret_cast<CUmodule>(static_cast<uintptr_t>(toU64(env, info[0], "module handle")));
  if (!s.modules.count(m)) throw Napi::Error::New(env, "unknown module handle (already unloaded?)");
  if (!info[1].IsString()) throw Napi::TypeError::New(env, "function name must be a string");
  std::string name = info[1].As<Napi::String>().Utf8Value();
  CUfunction f = nullptr;
  CUresult r = cuda().cuModuleGetFunction(&f, m, name.c_str());
  if (r != CUDA_SUCCESS) throw Napi::Error::New(env, cuFailure("cuModuleGetFunction", r) + " (looking up '" + name + "')");
  if (cuda().cuFuncLoad) check(env, "cuFuncLoad", cuda().cuFuncLoad(f));
  s.functions[f] = m;
  return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(f)));
}

Napi::Value CudaContext::FunctionInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceState& s = live(env, "functionInfo");
  auto f = reinterpret_cast<CUfunction>(static_cast<uintptr_t>(toU64(env, info[0], "function handle")));
  if (!s.functions.count(f)) throw Napi::Error::New(env, "unknown function handle");
  auto attr = [&](CUfunction_attribute a) {
    int v = 0;
    check(env, "cuFuncGetAttribute", cuda().cuFuncGetAttribute(&v, a, f));
    return v;
  };
  Napi::Object o = Napi::Object::New(env);
  o.Set("numRegs", attr(CU_FUNC_ATTRIBUTE_NUM_REGS));
  o.Set("localBytes", attr(CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES));
  o.Set("sharedBytes", attr(CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES));
  o.Set("maxThreadsPerBlock", attr(CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK));
  return o;
}

// launch(fn, gx, gy, gz, bx, by, bz, sharedBytes, pointers: BigUint64Array, uniforms?: Uint8Array)
// Kernel ABI: one device pointer per buffer, then (when given) the uniform struct by value.
Napi::Value CudaContext::Launch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceState& s = live(env, "launch");
  auto f = reinterpret_cast<CUfunction>(static_cast<uintptr_t>(toU64(env, info[0], "function handle")));
  if (!s.functions.count(f)) throw Napi::Error::New(env, "launch: unknown function handle");
  unsigned int dims[7];
  static const char* names[7] = {"grid.x", "grid.y", "grid.z", "block.x", "block.y", "block.z", "shared bytes"};
  for (int i = 0; i < 7; i++) dims[i] = toDim(env, info[static_cast<size_t>(i) + 1], names[i]);
  if (!info[8].IsTypedArray() || info[8].As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array) {
    throw Napi::TypeError::New(env, "launch: pointers must be a BigUint64Array");
  }
  auto ptrs = info[8].As<Napi::BigUint64Array>();
  size_t n = ptrs.ElementLength();
  for (size_t i = 0; i < n; i++) allocBytes(env, static_cast<CUdeviceptr>(ptrs[i]));
  bool hasUniforms = info.Length() > 9 && !info[9].IsUndefined() && !info[9].IsNull();
  std::vector<void*> params(n + (hasUniforms ? 1 : 0));
  uint64_t* base = ptrs.Data();
  for (size_t i = 0; i < n; i++) params[i] = base + i;
  if (hasUniforms) {
    auto [blob, len] = bytesOf(env, info[9], "launch uniforms");
    if (len == 0) throw Napi::Error::New(env, "launch: empty uniform block");
    params[n] = blob;
  }
  check(env, "cuLaunchKernel",
        cuda().cuLaunchKernel(f, dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6], s.stream,
                              params.empty() ? nullptr : params.data(), nullptr));
  return env.Undefined();
}

Napi::Value CudaContext::BeginCapture(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceState& s = live(env, "beginCapture");
  if (s.capturing) throw Napi::Error::New(env, "a graph capture is already open");
  check(env, "cuStreamBeginCapture_v2", cuda().cuStreamBeginCapture_v2(s.stream, CU_STREAM_CAPTURE_MODE_RELAXED));
  s.capturing = true;
  return env.Undefined();
}

Napi::Value CudaContext::EndCapture(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceState& s = live(env, "endCapture");
  if (!s.capturing) throw Napi::Error::New(env, "endCapture without beginCapture");
  s.capturing = false;
  CUgraph g = nullptr;
  CUresult r = cuda().cuStreamEndCapture(s.stream, &g);
  if (r != CUDA_SUCCESS) {
    if (g) cuda().cuGraphDestroy(g);
    check(env, "cuStreamEndCapture", r);
  }
  CUgraphExec exec = nullptr;
  r = cuda().cuGraphInstantiateWithFlags(&exec, g, 0);
  cuda().cuGraphDestroy(g);  // the executable graph does not need its template
  check(env, "cuGraphInstantiateWithFlags", r);
  s.graphs.insert(exec);
  return Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(exec)));
}

// Ends an open capture and throws the graph away (the captured code failed).
Napi::Value CudaContext::AbortCapture(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceState& s = live(env, "abortCapture");
  if (s.capturing) {
    s.capturing = false;
    CUgraph g = nullptr;
    cuda().cuStreamEndCapture(s.stream, &g);
    if (g) cuda().cuGraphDestroy(g);
  }
  return env.Undefined();
}

Napi::Value CudaContext::LaunchGraph(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceState& s = live(env, "launchGraph");
  auto g = reinterpret_cast<CUgraphExec>(static_cast<uintptr_t>(toU64(env, info[0], "graph handle")));
  if (!s.graphs.count(g)) throw Napi::Error::New(env, "launchGraph: unknown graph handle (destroyed?)");
  if (s.capturing) throw Napi::Error::New(env, "launchGraph during a graph capture");
  check(env, "cuGraphLaunch", cuda().cuGraphLaunch(g, s.stream));
  return env.Undefined();
}

Napi::Value CudaContext::DestroyGraph(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceState& s = live(env, "destroyGraph");
  auto g = reinterpret_cast<CUgraphExec>(static_cast<uintptr_t>(toU64(env, info[0], "graph handle")));
  if (!s.graphs.erase(g)) throw Napi::Error::New(env, "destroyGraph: unknown graph handle (destroyed?)");
  // A replay still in flight finishes first: the driver frees the graph when it completes.
  check(env, "cuGraphExecDestroy", cuda().cuGraphExecDestroy(g));
  return env.Undefined();
}

// timeGraph(graph, reps, flushPtr, flushBytes): per rep, a memset of flushBytes at flushPtr (when
// non-zero: it evicts the L2 so each replay reads from DRAM), then the graph between two timing
// events. Waits for the last one (blocking the calling thread: benchmarks only) and returns each
// replay's milliseconds. Its events never outlive the call.
Napi::Value CudaContext::TimeGraph(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceState& s = live(env, "timeGraph");
  auto g = reinterpret_cast<CUgraphExec>(static_cast<uintptr_t>(toU64(env, info[0], "graph handle")));
  if (!s.graphs.count(g)) throw Napi::Error::New(env, "timeGraph: unknown graph handle (destroyed?)");
  if (s.capturing) throw Napi::Error::New(env, "timeGraph during a graph capture");
  size_t reps = toSize(env, info[1], "reps");
  if (reps < 1 || reps > 100000) throw Napi::RangeError::New(env, "timeGraph: reps must be 1..100000");
  CUdeviceptr flush = toU64(env, info[2], "flush pointer");
  size_t flushBytes = toSize(env, info[3], "flush bytes");
  if (flushBytes && flushBytes > allocBytes(env, flush)) throw Napi::RangeError::New(env, "timeGraph: the flush overruns its allocation");
  const CudaApi& api = cuda();
  std::vector<CUevent> ev(2 * reps, nullptr);
  CUresult r = CUDA_SUCCESS;
  const char* call = "cuEventCreate";
  for (size_t i = 0; i < ev.size() && r == CUDA_SUCCESS; i++) r = api.cuEventCreate(&ev[i], 0);
  for (size_t i = 0; i < reps && r == CUDA_SUCCESS; i++) {
    if (flushBytes && (r = api.cuMemsetD8Async(flush, static_cast<unsigned char>(i & 0xff), flushBytes, s.stream))) { call = "cuMemsetD8Async"; break; }
    if ((r = api.cuEventRecord(ev[2 * i], s.stream))) { call = "cuEventRecord"; break; }
    if ((r = api.cuGraphLaunch(g, s.stream))) { call = "cuGraphLaunch"; break; }
    if ((r = api.cuEventRecord(ev[2 * i + 1], s.stream))) { call = "cuEventRecord"; break; }
  }
  if (r == CUDA_SUCCESS && (r = api.cuEventSynchronize(ev.back()))) call = "cuEventSynchronize";
  Napi::Array out = Napi::Array::New(env, reps);
  for (size_t i = 0; i < reps && r == CUDA_SUCCESS; i++) {
    float ms = 0;
    if ((r = api.cuEventElapsedTime(&ms, ev[2 * i], ev[2 * i + 1]))) { call = "cuEventElapsedTime"; break; }
    out.Set(static_cast<uint32_t>(i), Napi::Number::New(env, ms));
  }
  for (CUevent e : ev) if (e) api.cuEventDestroy_v2(e);
  check(env, call, r);
  return out;
}

// Frees every allocation, module and graph, and releases the context. Waits still in flight keep
// the state alive and the last one to settle does the release.
Napi::Value CudaContext::Destroy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!s_ || s_->closing) return env.Undefined();
  s_->closing = true;
  if (s_->inflight == 0) s_->release();
  return env.Undefined();
}

}  // namespace kiln
