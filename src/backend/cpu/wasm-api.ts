// The slice of the WebAssembly JS API the cpu device uses, declared here as the global it is:
// the project's type libraries (ES2022, no DOM) leave WebAssembly's classes undeclared.
export interface WasmMemory { readonly buffer: ArrayBuffer | SharedArrayBuffer; grow(pages: number): number }
/** A memory made with `shared: true`: its buffer is a SharedArrayBuffer. */
export interface WasmSharedMemory extends WasmMemory { readonly buffer: SharedArrayBuffer }
export interface WasmModule { readonly __wasmModule?: never }
export interface WasmInstance { readonly exports: Record<string, unknown> }
interface WasmApi {
  Memory: new (d: { initial: number; maximum: number; shared: true }) => WasmSharedMemory;
  Module: new (bytes: Uint8Array) => WasmModule;
  Instance: new (m: WasmModule, imports: Record<string, Record<string, unknown>>) => WasmInstance;
  validate(bytes: Uint8Array): boolean;
}
declare global {
  var WebAssembly: WasmApi;
}
export const Wasm: WasmApi = globalThis.WebAssembly;

/**
 * V8 first compiles wasm with its baseline compiler and optimises hot functions later on
 * background threads; a kernel's `run` is called a few times per launch, so on a busy machine the
 * optimised code arrives late (measured: gemv 3× slower meanwhile). Node lets us ask for optimised
 * code at compile time instead (process-wide; kernel modules are small). Elsewhere: nothing.
 */
export function preferOptimizedWasm(): void {
  nodeV8()?.setFlagsFromString('--no-wasm-dynamic-tiering');
}

function nodeV8(): { setFlagsFromString(flags: string): void } | undefined {
  const proc = (globalThis as { process?: { getBuiltinModule?: (name: string) => unknown } }).process;
  return proc?.getBuiltinModule?.('node:v8') as { setFlagsFromString(flags: string): void } | undefined;
}

// (func (param f32 f32 f32) (result f32)
//   (f32x4.extract_lane 0 (f32x4.relaxed_madd (f32x4.splat a) (f32x4.splat b) (f32x4.splat c))))
const MADD_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // header
  0x01, 0x08, 0x01, 0x60, 0x03, 0x7d, 0x7d, 0x7d, 0x01, 0x7d, // type (f32 f32 f32) -> f32
  0x03, 0x02, 0x01, 0x00, 0x07, 0x05, 0x01, 0x01, 0x66, 0x00, 0x00, // function 0, exported as "f"
  0x0a, 0x16, 0x01, 0x14, 0x00,
  0x20, 0x00, 0xfd, 0x13, 0x20, 0x01, 0xfd, 0x13, 0x20, 0x02, 0xfd, 0x13, 0xfd, 0x85, 0x02, 0xfd, 0x1f, 0x00, 0x0b,
]);
let fusedMadd: boolean | undefined;

/**
 * Whether this host's f32x4.relaxed_madd is fused (one rounding), which lets wasm kernels compute
 * the reference's correctly rounded fma four lanes at a time (codegen/emit/wasm-simd.ts). Relaxed
 * SIMD is on by default in V8 11.4+ (Chrome 114, Node 22); Node 20 has it behind a flag, set here
 * before any kernel module compiles. The probe: (1 + 2^-12)² − (1 + 2^-11) is 2^-24 fused and 0
 * (the product rounded first) otherwise; V8 picks fused or not per CPU (FMA3), the same for every
 * module and tier. False where relaxed SIMD is missing: kernels then use the exact helper.
 */
export function hostFusedMadd(): boolean {
  if (fusedMadd !== undefined) return fusedMadd;
  if (!Wasm.validate(MADD_PROBE)) nodeV8()?.setFlagsFromString('--experimental-wasm-relaxed-simd');
  fusedMadd = false;
  if (Wasm.validate(MADD_PROBE)) {
    const f = new Wasm.Instance(new Wasm.Module(MADD_PROBE), {}).exports.f as (a: number, b: number, c: number) => number;
    const a = 1 + 2 ** -12;
    fusedMadd = f(a, a, -(1 + 2 ** -11)) === 2 ** -24;
  }
  return fusedMadd;
}
