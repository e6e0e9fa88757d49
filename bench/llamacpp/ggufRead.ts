// A tiny GGUF reader: header, metadata and tensor infos, with each tensor's bytes located. It
// reads back what gguf.ts writes (the test) and tells whether a cached conversion is current.
import { GGML_TYPE, GGUF_ALIGNMENT, GGUF_MAGIC, GGUF_VALUE, TYPE_BYTES } from './gguf.js';

export type GgufRead = number | bigint | boolean | string | GgufRead[];

export interface GgufTensorInfo {
  name: string;
  dims: number[];
  type: string;
  /** Byte offset in the file (the data section's start plus the tensor's own offset). */
  fileOffset: number;
  byteLength: number;
}

export interface GgufFile {
  version: number;
  metadata: Map<string, GgufRead>;
  tensors: Map<string, GgufTensorInfo>;
  dataStart: number;
  bytes(name: string): Uint8Array;
}

const TYPE_NAMES = new Map<number, [string, number]>(Object.entries(GGML_TYPE).map(([k, v]) => [v, [k, TYPE_BYTES[k as keyof typeof TYPE_BYTES]]]));

export function readGguf(file: Uint8Array, what = 'gguf'): GgufFile {
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const dec = new TextDecoder('utf-8', { fatal: true });
  let at = 0;
  const need = (n: number) => { if (at + n > file.byteLength) throw new Error(`${what}: truncated at byte ${at} (needs ${n} more)`); };
  const u8 = () => { need(1); return view.getUint8(at++); };
  const u32 = () => { need(4); const x = view.getUint32(at, true); at += 4; return x; };
  const u64 = () => { need(8); const x = view.getBigUint64(at, true); at += 8; return x; };
  const num = () => { const x = u64(); if (x > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${what}: count ${x} at byte ${at - 8} is too large`); return Number(x); };
  const str = () => { const n = num(); need(n); const s = dec.decode(file.subarray(at, at + n)); at += n; return s; };
  const value = (type: number): GgufRead => {
    switch (type) {
      case GGUF_VALUE.u8: return u8();
      case GGUF_VALUE.i8: need(1); return view.getInt8(at++);
      case GGUF_VALUE.u16: need(2); at += 2; return view.getUint16(at - 2, true);
      case GGUF_VALUE.i16: need(2); at += 2; return view.getInt16(at - 2, true);
      case GGUF_VALUE.u32: return u32();
      case GGUF_VALUE.i32: need(4); at += 4; return view.getInt32(at - 4, true);
      case GGUF_VALUE.f32: need(4); at += 4; return view.getFloat32(at - 4, true);
      case GGUF_VALUE.bool: return u8() !== 0;
      case GGUF_VALUE.string: return str();
      case GGUF_VALUE.u64: return u64();
      case GGUF_VALUE.i64: need(8); at += 8; return view.getBigInt64(at - 8, true);
      case GGUF_VALUE.f64: need(8); at += 8; return view.getFloat64(at - 8, true);
      case GGUF_VALUE.array: {
        const t = u32(), n = num();
        return Array.from({ length: n }, () => value(t));
      }
      default: throw new Error(`${what}: unknown metadata value type ${type} at byte ${at - 4}`);
    }
  };
  if (u32() !== GGUF_MAGIC) throw new Error(`${what}: not a GGUF file (bad magic)`);
  const version = u32();
  const nTensors = num(), nMeta = num();
  const metadata = new Map<string, GgufRead>();
  for (let i = 0; i < nMeta; i++) { const k = str(); metadata.set(k, value(u32())); }
  const align = Number(metadata.get('general.alignment') ?? GGUF_ALIGNMENT);
  const infos: { name: string; dims: number[]; type: number; offset: number }[] = [];
  for (let i = 0; i < nTensors; i++) {
    const name = str();
    const nd = u32();
    const dims = Array.from({ length: nd }, num);
    infos.push({ name, dims, type: u32(), offset: num() });
  }
  const dataStart = Math.ceil(at / align) * align;
  const tensors = new Map<string, GgufTensorInfo>();
  for (const t of infos) {
    const tn = TYPE_NAMES.get(t.type);
    if (!tn) throw new Error(`${what}: tensor '${t.name}' has ggml type ${t.type}, which this reader does not size`);
    const byteLength = t.dims.reduce((a, d) => a * d, 1) * tn[1];
    if (t.offset % align !== 0) throw new Error(`${what}: tensor '${t.name}' offset ${t.offset} is not ${align}-aligned`);
    if (dataStart + t.offset + byteLength > file.byteLength) throw new Error(`${what}: tensor '${t.name}' runs past the end of the file`);
    tensors.set(t.name, { name: t.name, dims: t.dims, type: tn[0], fileOffset: dataStart + t.offset, byteLength });
  }
  return {
    version, metadata, tensors, dataStart,
    bytes(name) {
      const t = tensors.get(name);
      if (!t) throw new Error(`${what}: no tensor '${name}'`);
      return file.subarray(t.fileOffset, t.fileOffset + t.byteLength);
    },
  };
}
