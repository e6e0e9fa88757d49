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
  const proc = (globalThis as { process?: { getBuiltinModule?: (name: string) => unknown } }).process;
  const v8 = proc?.getBuiltinModule?.('node:v8') as { setFlagsFromString(flags: string): void } | undefined;
  v8?.setFlagsFromString('--no-wasm-dynamic-tiering');
}
