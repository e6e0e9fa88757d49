// The slice of the WebAssembly JS API the cpu device uses, typed here: the project's type
// libraries (ES2022, no DOM) leave WebAssembly's classes undeclared.
export interface WasmMemory { readonly buffer: ArrayBuffer | SharedArrayBuffer; grow(pages: number): number }
export interface WasmModule { readonly __wasmModule?: never }
export interface WasmInstance { readonly exports: Record<string, unknown> }
interface WasmApi {
  Memory: new (d: { initial: number; maximum: number; shared: boolean }) => WasmMemory;
  Module: new (bytes: Uint8Array) => WasmModule;
  Instance: new (m: WasmModule, imports: Record<string, Record<string, unknown>>) => WasmInstance;
}
export const Wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;
