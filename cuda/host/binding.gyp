# kiln_cuda: Kiln's CUDA host addon. Links neither CUDA nor NVRTC: both are dlopen'ed at run time,
# so this builds anywhere node-gyp and a C++17 compiler exist. Build: node scripts/build-addon.mjs
{
  "targets": [
    {
      "target_name": "kiln_cuda",
      "sources": ["addon.cc", "context.cc", "loader.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "libraries": ["-ldl"]
    }
  ]
}
