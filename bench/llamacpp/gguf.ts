// A small GGUF (version 3) writer: typed metadata, tensor infos, and tensor data padded to the
// file's alignment. Enough for llama.cpp to load an F16/F32 checkpoint; no quantized types.
// Layout: magic "GGUF", version u32, tensor count u64, metadata count u64, the metadata
// (key string, value type u32, value), the tensor infos (name, n_dims u32, dims u64 innermost
// first, ggml type u32, offset u64 from the start of the data section), padding, the data.

/** GGUF metadata value types (the numbers are the format's). */
export const GGUF_VALUE = { u8: 0, i8: 1, u16: 2, i16: 3, u32: 4, i32: 5, f32: 6, bool: 7, string: 8, array: 9, u64: 10, i64: 11, f64: 12 } as const;
/** ggml tensor types this writer emits. */
export const GGML_TYPE = { F32: 0, F16: 1 } as const;
export type GgmlTypeName = keyof typeof GGML_TYPE;
export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_VERSION = 3;
export const GGUF_ALIGNMENT = 32;

export type GgufValue =
  | { type: 'u32' | 'i32' | 'f32'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'string[]'; value: readonly string[] }
  | { type: 'i32[]' | 'f32[]'; value: ArrayLike<number> };

export const gguf = {
  u32: (value: number): GgufValue => ({ type: 'u32', value }),
  i32: (value: number): GgufValue => ({ type: 'i32', value }),
  f32: (value: number): GgufValue => ({ type: 'f32', value }),
  bool: (value: boolean): GgufValue => ({ type: 'bool', value }),
  string: (value: string): GgufValue => ({ type: 'string', value }),
  strings: (value: readonly string[]): GgufValue => ({ type: 'string[]', value }),
  i32s: (value: ArrayLike<number>): GgufValue => ({ type: 'i32[]', value }),
};

export interface GgufTensor {
  name: string;
  /** ggml order: dims[0] is the contiguous one (an HF [out, in] weight is [in, out] here). */
  dims: readonly number[];
  type: GgmlTypeName;
  /** Little-endian element bytes, dims' product × the type's size. */
  data: Uint8Array;
}

/** Bytes per element of each tensor type. */
export const TYPE_BYTES: Record<GgmlTypeName, number> = { F32: 4, F16: 2 };
const utf8 = new TextEncoder();

/** Appends little-endian fields to a growing buffer. */
class ByteWriter {
  private buf = new Uint8Array(1 << 16);
  private view = new DataView(this.buf.buffer);
  length = 0;
  private room(n: number): void {
    if (this.length + n <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.length + n));
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u8(x: number): void { this.room(1); this.view.setUint8(this.length, x); this.length += 1; }
  u32(x: number): void { this.room(4); this.view.setUint32(this.length, x, true); this.length += 4; }
  i32(x: number): void { this.room(4); this.view.setInt32(this.length, x, true); this.length += 4; }
  f32(x: number): void { this.room(4); this.view.setFloat32(this.length, x, true); this.length += 4; }
  u64(x: number): void { this.room(8); this.view.setBigUint64(this.length, BigInt(x), true); this.length += 8; }
  string(s: string): void { const b = utf8.encode(s); this.u64(b.length); this.bytes(b); }
  bytes(b: Uint8Array): void { this.room(b.length); this.buf.set(b, this.length); this.length += b.length; }
  pad(align: number): void { while (this.length % align !== 0) this.u8(0); }
  result(): Uint8Array { return this.buf.subarray(0, this.length); }
}

function writeValue(w: ByteWriter, key: string, v: GgufValue): void {
  const int = (x: number, lo: number, hi: number) => {
    if (!Number.isInteger(x) || x < lo || x > hi) throw new Error(`gguf: metadata '${key}' = ${x} is not a ${v.type}`);
  };
  switch (v.type) {
    case 'u32': int(v.value, 0, 0xffffffff); w.u32(GGUF_VALUE.u32); w.u32(v.value); break;
    case 'i32': int(v.value, -0x80000000, 0x7fffffff); w.u32(GGUF_VALUE.i32); w.i32(v.value); break;
    case 'f32': w.u32(GGUF_VALUE.f32); w.f32(v.value); break;
    case 'bool': w.u32(GGUF_VALUE.bool); w.u8(v.value ? 1 : 0); break;
    case 'string': w.u32(GGUF_VALUE.string); w.string(v.value); break;
    case 'string[]':
      w.u32(GGUF_VALUE.array); w.u32(GGUF_VALUE.string); w.u64(v.value.length);
      for (const s of v.value) w.string(s);
      break;
    case 'i32[]':
      w.u32(GGUF_VALUE.array); w.u32(GGUF_VALUE.i32); w.u64(v.value.length);
      for (let i = 0; i < v.value.length; i++) { int(v.value[i]!, -0x80000000, 0x7fffffff); w.i32(v.value[i]!); }
      break;
    case 'f32[]':
      w.u32(GGUF_VALUE.array); w.u32(GGUF_VALUE.f32); w.u64(v.value.length);
      for (let i = 0; i < v.value.length; i++) w.f32(v.value[i]!);
      break;
  }
}

/** The whole file in memory (the models this serves are megabytes, not gigabytes). */
export function encodeGguf(metadata: ReadonlyArray<readonly [string, GgufValue]>, tensors: readonly GgufTensor[]): Uint8Array {
  const keys = new Set<string>();
  for (const [k] of metadata) {
    if (keys.has(k)) throw new Error(`gguf: metadata key '${k}' given twice`);
    keys.add(k);
  }
  const names = new Set<string>();
  for (const t of tensors) {
    if (names.has(t.name)) throw new Error(`gguf: tensor '${t.name}' given twice`);
    names.add(t.name);
    const n = t.dims.reduce((a, d) => a * d, 1);
    if (t.dims.length === 0 || t.dims.some((d) => !Number.isInteger(d) || d <= 0)) throw new Error(`gguf: tensor '${t.name}' has bad dims [${t.dims.join(', ')}]`);
    if (n * TYPE_BYTES[t.type] !== t.data.byteLength) {
      throw new Error(`gguf: tensor '${t.name}' is ${t.type} [${t.dims.join(', ')}] (${n * TYPE_BYTES[t.type]} bytes) but its data has ${t.data.byteLength}`);
    }
  }
  const w = new ByteWriter();
  w.u32(GGUF_MAGIC);
  w.u32(GGUF_VERSION);
  w.u64(tensors.length);
  w.u64(metadata.length);
  for (const [k, v] of metadata) { w.string(k); writeValue(w, k, v); }
  let offset = 0;
  const offsets: number[] = [];
  for (const t of tensors) {
    w.string(t.name);
    w.u32(t.dims.length);
    for (const d of t.dims) w.u64(d);
    w.u32(GGML_TYPE[t.type]);
    w.u64(offset);
    offsets.push(offset);
    offset += Math.ceil(t.data.byteLength / GGUF_ALIGNMENT) * GGUF_ALIGNMENT;
  }
  w.pad(GGUF_ALIGNMENT);
  const header = w.result();
  const out = new Uint8Array(header.length + offset);
  out.set(header);
  for (const [i, t] of tensors.entries()) out.set(t.data, header.length + offsets[i]!);
  return out;
}
