// kiln_cuda: the native side of Kiln's CUDA backend. Exports
//   driverStatus()                       -> { ok, reason?, driverVersion, deviceCount }
//   nvrtcLoad(candidates: string[])      -> { ok, reason?, path?, version?: [major, minor], archs?: number[] }
//   nvrtcCompile(src, name, options, cubin: boolean)
//                                        -> { ok, log, image?: Uint8Array }  (cubin, or NUL-ended PTX)
//   CudaContext(ordinal)                 (see context.cc)
// Nothing here needs a GPU except CudaContext; nothing needs the CUDA toolkit to build.
#include <napi.h>

#include "context.h"
#include "loader.h"

namespace kiln {
namespace {

Napi::Value DriverStatusJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DriverStatus& st = driverStatus();
  Napi::Object o = Napi::Object::New(env);
  o.Set("ok", st.ok);
  if (!st.ok) o.Set("reason", st.reason);
  o.Set("driverVersion", st.driverVersion);
  o.Set("deviceCount", st.deviceCount);
  return o;
}

Napi::Value NvrtcLoadJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) throw Napi::TypeError::New(env, "nvrtcLoad expects an array of library names");
  Napi::Array arr = info[0].As<Napi::Array>();
  std::vector<std::string> candidates;
  for (uint32_t i = 0; i < arr.Length(); i++) candidates.push_back(arr.Get(i).ToString().Utf8Value());
  const NvrtcStatus& st = loadNvrtc(candidates);
  Napi::Object o = Napi::Object::New(env);
  o.Set("ok", st.ok);
  if (!st.ok) {
    o.Set("reason", st.reason);
    return o;
  }
  o.Set("path", st.path);
  Napi::Array version = Napi::Array::New(env, 2);
  version.Set(0u, st.major);
  version.Set(1u, st.minor);
  o.Set("version", version);
  Napi::Array archs = Napi::Array::New(env, st.archs.size());
  for (size_t i = 0; i < st.archs.size(); i++) archs.Set(static_cast<uint32_t>(i), st.archs[i]);
  o.Set("archs", archs);
  return o;
}

// A compile error is a result ({ok: false, log}), not an exception: the caller names the kernel.
Napi::Value NvrtcCompileJs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const NvrtcApi& api = nvrtc();
  if (!api.nvrtcCompileProgram) throw Napi::Error::New(env, "NVRTC is not loaded (call nvrtcLoad first)");
  if (!info[0].IsString() || !info[1].IsString() || !info[2].IsArray()) {
    throw Napi::TypeError::New(env, "nvrtcCompile(source: string, name: string, options: string[], cubin: boolean)");
  }
  std::string src = info[0].As<Napi::String>().Utf8Value();
  std::string name = info[1].As<Napi::String>().Utf8Value();
  Napi::Array optArr = info[2].As<Napi::Array>();
  std::vector<std::string> opts;
  for (uint32_t i = 0; i < optArr.Length(); i++) opts.push_back(optArr.Get(i).ToString().Utf8Value());
  std::vector<const char*> optPtrs;
  for (const std::string& o : opts) optPtrs.push_back(o.c_str());
  bool wantCubin = info[3].ToBoolean().Value();

  nvrtcProgram prog = nullptr;
  nvrtcResult r = api.nvrtcCreateProgram(&prog, src.c_str(), name.c_str(), 0, nullptr, nullptr);
  if (r != NVRTC_SUCCESS) throw Napi::Error::New(env, nvrtcFailure("nvrtcCreateProgram", r));
  // Everything after creation must destroy the program, also on the way out by an exception.
  struct Guard {
    const NvrtcApi& api;
    nvrtcProgram& prog;
    ~Guard() { api.nvrtcDestroyProgram(&prog); }
  } guard{api, prog};

  nvrtcResult compiled = api.nvrtcCompileProgram(prog, static_cast<int>(optPtrs.size()), optPtrs.data());
  std::string log;
  size_t logSize = 0;
  if (api.nvrtcGetProgramLogSize(prog, &logSize) == NVRTC_SUCCESS && logSize > 1) {
    log.resize(logSize);
    if (api.nvrtcGetProgramLog(prog, &log[0]) != NVRTC_SUCCESS) log.clear();
    while (!log.empty() && (log.back() == '\0' || log.back() == '\n')) log.pop_back();
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("log", log);
  if (compiled != NVRTC_SUCCESS) {
    o.Set("ok", false);
    o.Set("error", nvrtcFailure("nvrtcCompileProgram", compiled));
    return o;
  }
  size_t size = 0;
  r = wantCubin ? api.nvrtcGetCUBINSize(prog, &size) : api.nvrtcGetPTXSize(prog, &size);
  if (r != NVRTC_SUCCESS) throw Napi::Error::New(env, nvrtcFailure(wantCubin ? "nvrtcGetCUBINSize" : "nvrtcGetPTXSize", r));
  Napi::Uint8Array image = Napi::Uint8Array::New(env, size);
  char* out = reinterpret_cast<char*>(image.Data());
  r = wantCubin ? api.nvrtcGetCUBIN(prog, out) : api.nvrtcGetPTX(prog, out);
  if (r != NVRTC_SUCCESS) throw Napi::Error::New(env, nvrtcFailure(wantCubin ? "nvrtcGetCUBIN" : "nvrtcGetPTX", r));
  o.Set("ok", true);
  o.Set("image", image);
  return o;
}

}  // namespace
}  // namespace kiln

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  using namespace kiln;
  exports.Set("driverStatus", Napi::Function::New(env, DriverStatusJs, "driverStatus"));
  exports.Set("nvrtcLoad", Napi::Function::New(env, NvrtcLoadJs, "nvrtcLoad"));
  exports.Set("nvrtcCompile", Napi::Function::New(env, NvrtcCompileJs, "nvrtcCompile"));
  exports.Set("CudaContext", CudaContext::Define(env));
  return exports;
}

NODE_API_MODULE(kiln_cuda, Init)
