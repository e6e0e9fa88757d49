// The wasm executor's memory: one shared WebAssembly.Memory holding every buffer, each thread's
// kernel scratch and launch arguments, so generated modules address all of them by byte offset.
// First-fit allocation over a sorted free list with coalescing; the memory grows (never shrinks)
// up to 4 GiB. Growing a shared memory keeps earlier SharedArrayBuffers valid for the bytes they
// covered, so a buffer keeps the one it was allocated in.

import { Wasm, type WasmSharedMemory } from './wasm-api.js';

const PAGE = 65536;
const ALIGN = 64;
const MAX_PAGES = 65536;

export class WasmHeap {
  readonly memory: WasmSharedMemory;
  /** Free blocks [offset, bytes], sorted by offset, never adjacent. */
  private free: [number, number][] = [];
  private top = ALIGN; // offset 0 stays unused: a zero offset is never a live buffer
  /** The highest `top` so far: memory below it may hold a released block's bytes. */
  private used = ALIGN;

  /** The whole memory now (covering every allocation so far), and word views of it. */
  sab!: SharedArrayBuffer;
  i32!: Int32Array;
  f32!: Float32Array;

  constructor(initialBytes = 16 << 20) {
    this.memory = new Wasm.Memory({ initial: Math.ceil(initialBytes / PAGE), maximum: MAX_PAGES, shared: true });
    this.refresh();
  }

  /** Only alloc grows the memory, so the views are renewed there (memory.buffer is not free to read). */
  private refresh(): void {
    this.sab = this.memory.buffer;
    this.i32 = new Int32Array(this.sab);
    this.f32 = new Float32Array(this.sab);
  }

  /** `bytes` zeroed bytes, 64-aligned: their offset. */
  alloc(bytes: number, what: string): number {
    const size = Math.max(ALIGN, Math.ceil(bytes / ALIGN) * ALIGN);
    for (let i = 0; i < this.free.length; i++) {
      const [off, len] = this.free[i]!;
      if (len < size) continue;
      if (len === size) this.free.splice(i, 1); else this.free[i] = [off + size, len - size];
      new Uint8Array(this.sab, off, size).fill(0);
      return off;
    }
    const off = this.top, end = off + size;
    if (end > MAX_PAGES * PAGE) throw new Error(`cpu device (wasm executor): cannot allocate ${bytes} bytes for ${what}: the 4 GiB memory is full`);
    const have = this.sab.byteLength;
    if (end > have) {
      this.memory.grow(Math.max(Math.ceil((end - have) / PAGE), Math.min(Math.ceil(have / PAGE / 4), MAX_PAGES - have / PAGE)));
      this.refresh();
    }
    this.top = end;
    // Below the high-water mark the bytes are a released block's (release lowers `top`), not fresh
    // pages: zero them, as the free-list path does (buffers, KV caches and tickets start at zero).
    if (off < this.used) new Uint8Array(this.sab, off, Math.min(end, this.used) - off).fill(0);
    this.used = Math.max(this.used, end);
    return off;
  }

  /** Returns a block (its offset and the byte count it was allocated with). */
  release(offset: number, bytes: number): void {
    const size = Math.max(ALIGN, Math.ceil(bytes / ALIGN) * ALIGN);
    let i = 0;
    while (i < this.free.length && this.free[i]![0] < offset) i++;
    this.free.splice(i, 0, [offset, size]);
    // Coalesce with the neighbours; a block ending at the top goes back to the top.
    const next = this.free[i + 1];
    if (next && offset + size === next[0]) { this.free[i]![1] += next[1]; this.free.splice(i + 1, 1); }
    const prev = this.free[i - 1];
    if (prev && prev[0] + prev[1] === offset) { prev[1] += this.free[i]![1]; this.free.splice(i, 1); i--; }
    const last = this.free[this.free.length - 1];
    if (last && last[0] + last[1] === this.top) { this.top = last[0]; this.free.pop(); }
  }
}
