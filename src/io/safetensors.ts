// safetensors reader: single files and sharded checkpoints (model.safetensors.index.json).
// The header is parsed and validated up front; tensor bytes are read on demand at their offsets,
// so a checkpoint is never held in memory twice.

import { f16BitsToF32 } from '../quant/f16.js';
import { platform } from '../platform/index.js';

/** The dtypes Kiln converts and feeds to kernels. */
export type LoadableDtype = 'F32' | 'F16' | 'BF16' | 'I32';
export const LOADABLE_DTYPES: readonly LoadableDtype[] = ['F32', 'F16', 'BF16', 'I32'];

/** Every dtype the safetensors format defines, with its element size; used to validate offsets
 * even for tensors we will refuse to read (a stray I64 tensor should not make a file unreadable). */
const DTYPE_BYTES: Readonly<Record<string, number>> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, F8_E4M3: 1, F8_E5M2: 1,
  I64: 8, I32: 4, I16: 2, I8: 1, U64: 8, U32: 4, U16: 2, U8: 1, BOOL: 1,
};

/** The safetensors spec caps the header at 100 MB; a larger length means a corrupt file. */
const MAX_HEADER_BYTES = 100_000_000;

export interface TensorInfo {
  readonly name: string;
  /** The dtype as written in the file (may be one Kiln does not load, e.g. I64). */
  readonly dtype: string;
  readonly shape: readonly number[];
  readonly byteLength: number;
  /** The file (or in-memory source) holding the tensor, for error messages. */
  readonly source: string;
}

/** A named collection of tensors whose bytes are fetched on demand. */
export interface TensorStore {
  readonly source: string;
  names(): string[];
  has(name: string): boolean;
  /** Throws, naming the tensor and the source, if absent. */
  info(name: string): TensorInfo;
  /** Raw little-endian bytes of one tensor. The result may be a view: do not mutate it. */
  bytes(name: string): Uint8Array;
  close(): void;
}

/** Random access to the bytes of a file or buffer. */
export interface ByteSource {
  readonly name: string;
  readonly size: number;
  read(offset: number, length: number): Uint8Array;
  close(): void;
}

export function fileSource(filePath: string): ByteSource {
  const file = platform.files.open(filePath);
  const size = file.size;
  let open = true;
  return {
    name: filePath,
    size,
    read(offset, length) {
      if (!open) throw new Error(`${filePath}: read after close`);
      // A fresh ArrayBuffer per read: aligned for typed-array views, and owned by the caller.
      const out = new Uint8Array(length);
      let done = 0;
      while (done < length) {
        const n = file.readInto(out, done, length - done, offset + done);
        if (n === 0) throw new Error(`${filePath}: unexpected end of file at byte ${offset + done}`);
        done += n;
      }
      return out;
    },
    close() {
      if (open) file.close();
      open = false;
    },
  };
}

export function bufferSource(name: string, bytes: Uint8Array): ByteSource {
  return {
    name,
    size: bytes.byteLength,
    read(offset, length) {
      if (offset + length > bytes.byteLength) throw new Error(`${name}: read past end (${offset}+${length} > ${bytes.byteLength})`);
      return bytes.subarray(offset, offset + length);
    },
    close() {},
  };
}

interface Entry extends TensorInfo {
  /** Absolute byte offset in the source. */
  readonly offset: number;
}

function missing(source: string, name: string, names: Iterable<string>): Error {
  const all = [...names];
  const leaf = name.split('.').slice(-2).join('.');
  const near = all.filter((n) => n.endsWith(leaf)).slice(0, 3);
  const hint = near.length ? `; similar: ${near.join(', ')}` : `; it has ${all.length} tensors`;
  return new Error(`${source}: no tensor named '${name}'${hint}`);
}

/** One .safetensors file. */
export class SafetensorsFile implements TensorStore {
  readonly source: string;
  readonly metadata: Readonly<Record<string, string>>;
  private readonly entries = new Map<string, Entry>();

  private constructor(private readonly src: ByteSource) {
    this.source = src.name;
    const file = src.name;
    if (src.size < 8) throw new Error(`${file}: ${src.size} bytes, too short for the 8-byte safetensors header length`);
    const lenBytes = src.read(0, 8);
    const headerLen = Number(new DataView(lenBytes.buffer, lenBytes.byteOffset, 8).getBigUint64(0, true));
    if (headerLen > MAX_HEADER_BYTES || 8 + headerLen > src.size) {
      throw new Error(`${file}: header length ${headerLen} runs past the end of the file (${src.size} bytes)`);
    }
    let header: unknown;
    try {
      header = JSON.parse(new TextDecoder().decode(src.read(8, headerLen)));
    } catch (e) {
      throw new Error(`${file}: safetensors header is not valid JSON (${(e as Error).message})`);
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) {
      throw new Error(`${file}: safetensors header must be a JSON object`);
    }
    const dataStart = 8 + headerLen;
    const dataSize = src.size - dataStart;
    let metadata: Record<string, string> = {};
    for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
      if (name === '__metadata__') {
        metadata = (raw ?? {}) as Record<string, string>;
        continue;
      }
      const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown } | null;
      const where = `${file}: tensor '${name}'`;
      if (typeof e !== 'object' || e === null) throw new Error(`${where}: entry must be an object`);
      if (typeof e.dtype !== 'string') throw new Error(`${where}: missing dtype`);
      const elemBytes = DTYPE_BYTES[e.dtype];
      if (elemBytes === undefined) throw new Error(`${where}: unknown dtype '${e.dtype}'`);
      if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
        throw new Error(`${where}: shape must be an array of non-negative integers, got ${JSON.stringify(e.shape)}`);
      }
      const offs = e.data_offsets;
      if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o) && o >= 0)) {
        throw new Error(`${where}: data_offsets must be [begin, end], got ${JSON.stringify(offs)}`);
      }
      const [begin, end] = offs as [number, number];
      if (begin > end || end > dataSize) {
        throw new Error(`${where}: data_offsets [${begin}, ${end}] lie outside the data section (${dataSize} bytes)`);
      }
      const shape = e.shape as number[];
      const expected = shape.reduce((a, d) => a * d, 1) * elemBytes;
      if (expected !== end - begin) {
        throw new Error(`${where}: shape [${shape.join(', ')}] × ${e.dtype} is ${expected} bytes but data_offsets span ${end - begin}`);
      }
      this.entries.set(name, { name, dtype: e.dtype, shape, byteLength: end - begin, source: file, offset: dataStart + begin });
    }
    this.metadata = metadata;
    // Tensors must not share bytes: sort by start and compare neighbours.
    const sorted = [...this.entries.values()].filter((e) => e.byteLength > 0).sort((a, b) => a.offset - b.offset);
    for (let i = 1; i < sorted.length; i++) {
      const prev = sorted[i - 1]!, cur = sorted[i]!;
      if (cur.offset < prev.offset + prev.byteLength) {
        throw new Error(`${file}: tensors '${prev.name}' and '${cur.name}' overlap in the data section`);
      }
    }
  }

  static open(filePath: string): SafetensorsFile {
    const src = fileSource(filePath);
    try {
      return new SafetensorsFile(src);
    } catch (e) {
      src.close();
      throw e;
    }
  }

  static fromBytes(name: string, bytes: Uint8Array): SafetensorsFile {
    return new SafetensorsFile(bufferSource(name, bytes));
  }

  /** Over any random-access source (e.g. a browser File, or a counting wrapper in tests). */
  static fromSource(src: ByteSource): SafetensorsFile {
    return new SafetensorsFile(src);
  }

  names(): string[] {
    return [...this.entries.keys()];
  }
  has(name: string): boolean {
    return this.entries.has(name);
  }
  info(name: string): TensorInfo {
    const e = this.entries.get(name);
    if (!e) throw missing(this.source, name, this.entries.keys());
    return e;
  }
  bytes(name: string): Uint8Array {
    const e = this.entries.get(name);
    if (!e) throw missing(this.source, name, this.entries.keys());
    return this.src.read(e.offset, e.byteLength);
  }
  close(): void {
    this.src.close();
  }
}

/** A checkpoint split over several files, described by model.safetensors.index.json. */
export class ShardedSafetensors implements TensorStore {
  readonly source: string;
  private readonly owner = new Map<string, SafetensorsFile>();
  private readonly shards: SafetensorsFile[] = [];

  constructor(indexPath: string) {
    this.source = indexPath;
    let index: unknown;
    try {
      index = JSON.parse(platform.files.readText(indexPath));
    } catch (e) {
      throw new Error(`${indexPath}: not a readable JSON index (${(e as Error).message})`);
    }
    const map = (index as { weight_map?: unknown } | null)?.weight_map;
    if (typeof map !== 'object' || map === null) throw new Error(`${indexPath}: missing 'weight_map'`);
    const dir = platform.files.dirname(indexPath);
    const byFile = new Map<string, SafetensorsFile>();
    try {
      for (const [name, file] of Object.entries(map as Record<string, unknown>)) {
        if (typeof file !== 'string') throw new Error(`${indexPath}: weight_map['${name}'] must be a file name`);
        let shard = byFile.get(file);
        if (!shard) {
          const shardPath = platform.files.join(dir, file);
          if (!platform.files.exists(shardPath)) throw new Error(`${indexPath}: shard '${file}' (for tensor '${name}') does not exist`);
          shard = SafetensorsFile.open(shardPath);
          byFile.set(file, shard);
          this.shards.push(shard);
        }
        if (!shard.has(name)) throw new Error(`${indexPath}: maps tensor '${name}' to ${file}, which has no such tensor`);
        this.owner.set(name, shard);
      }
    } catch (e) {
      this.close();
      throw e;
    }
  }

  names(): string[] {
    return [...this.owner.keys()];
  }
  has(name: string): boolean {
    return this.owner.has(name);
  }
  private shardOf(name: string): SafetensorsFile {
    const s = this.owner.get(name);
    if (!s) throw missing(this.source, name, this.owner.keys());
    return s;
  }
  info(name: string): TensorInfo {
    return this.shardOf(name).info(name);
  }
  bytes(name: string): Uint8Array {
    return this.shardOf(name).bytes(name);
  }
  close(): void {
    for (const s of this.shards) s.close();
  }
}

/** Opens a .safetensors file, a model.safetensors.index.json, or a directory holding either. */
export function openSafetensors(p: string): TensorStore {
  if (!platform.files.exists(p)) throw new Error(`${p}: no such file or directory`);
  if (platform.files.isDirectory(p)) {
    const index = platform.files.join(p, 'model.safetensors.index.json');
    if (platform.files.exists(index)) return new ShardedSafetensors(index);
    const single = platform.files.join(p, 'model.safetensors');
    if (platform.files.exists(single)) return SafetensorsFile.open(single);
    throw new Error(`${p}: contains neither model.safetensors nor model.safetensors.index.json`);
  }
  if (p.endsWith('.index.json')) return new ShardedSafetensors(p);
  return SafetensorsFile.open(p);
}

// ---------------------------------------------------------------------------------------------
// In-memory tensors (llama2.c checkpoints, synthetic test checkpoints).

export interface MemoryTensor {
  dtype: LoadableDtype;
  shape: readonly number[];
  /** F32 → Float32Array, I32 → Int32Array, F16/BF16 → Uint16Array of raw bits. */
  data: Float32Array | Int32Array | Uint16Array;
}

export function memoryStore(source: string, tensors: ReadonlyMap<string, MemoryTensor>): TensorStore {
  for (const [name, t] of tensors) {
    const n = t.shape.reduce((a, d) => a * d, 1);
    if (n !== t.data.length) throw new Error(`${source}: tensor '${name}' has shape [${t.shape.join(', ')}] but ${t.data.length} elements`);
  }
  return {
    source,
    names: () => [...tensors.keys()],
    has: (name) => tensors.has(name),
    info(name) {
      const t = tensors.get(name);
      if (!t) throw missing(source, name, tensors.keys());
      return { name, dtype: t.dtype, shape: t.shape, byteLength: t.data.byteLength, source };
    },
    bytes(name) {
      const t = tensors.get(name);
      if (!t) throw missing(source, name, tensors.keys());
      return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    },
    close() {},
  };
}

/** Serialises tensors into safetensors bytes (tests, and writing quantized checkpoints). */
export function encodeSafetensors(tensors: ReadonlyMap<string, MemoryTensor>, metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of tensors) {
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8); // keeps the data section 8-byte aligned
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const t of tensors.values()) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), at);
    at += t.data.byteLength;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Conversions. Hosts are little-endian (as the format), so typed-array views read it directly.

let f16Table: Float32Array | null = null;

/** IEEE half ↔ float: the one implementation lives in quant/f16.ts. */
export { f16BitsToF32 as f16ToF32, f32ToF16Bits as f32ToF16 } from '../quant/f16.js';

function halfTable(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16BitsToF32(h);
  }
  return f16Table;
}

function aligned(bytes: Uint8Array, align: number): Uint8Array {
  return bytes.byteOffset % align === 0 ? bytes : bytes.slice();
}

/** Raw F16/BF16 bits as a Uint16Array view or copy. */
export function bytesAsU16(bytes: Uint8Array): Uint16Array {
  const b = aligned(bytes, 2);
  return new Uint16Array(b.buffer, b.byteOffset, b.byteLength >> 1);
}

/** Converts raw tensor bytes of a loadable float dtype to float32. */
export function toFloat32(dtype: string, bytes: Uint8Array, what = 'tensor'): Float32Array {
  switch (dtype) {
    case 'F32': {
      const b = aligned(bytes, 4);
      return new Float32Array(b.buffer, b.byteOffset, b.byteLength >> 2);
    }
    case 'F16': {
      const h = bytesAsU16(bytes), t = halfTable();
      const out = new Float32Array(h.length);
      for (let i = 0; i < h.length; i++) out[i] = t[h[i]!]!;
      return out;
    }
    case 'BF16': {
      const h = bytesAsU16(bytes);
      const bits = new Uint32Array(h.length);
      for (let i = 0; i < h.length; i++) bits[i] = h[i]! << 16;
      return new Float32Array(bits.buffer);
    }
    default:
      throw new Error(`${what}: dtype ${dtype} cannot be read as float32 (Kiln loads F32, F16, BF16)`);
  }
}

function checkLoadable(info: TensorInfo): void {
  if (!(LOADABLE_DTYPES as readonly string[]).includes(info.dtype)) {
    throw new Error(`${info.source}: tensor '${info.name}' has dtype ${info.dtype}, which Kiln does not load (supported: ${LOADABLE_DTYPES.join(', ')})`);
  }
}

/** Reads a float tensor (F32/F16/BF16) as float32. */
export function readFloat32(store: TensorStore, name: string): Float32Array {
  const info = store.info(name);
  checkLoadable(info);
  return toFloat32(info.dtype, store.bytes(name), `${info.source}: tensor '${name}'`);
}

/** Reads an I32 tensor. */
export function readInt32(store: TensorStore, name: string): Int32Array {
  const info = store.info(name);
  checkLoadable(info);
  if (info.dtype !== 'I32') throw new Error(`${info.source}: tensor '${name}' is ${info.dtype}, expected I32`);
  const b = aligned(store.bytes(name), 4);
  return new Int32Array(b.buffer, b.byteOffset, b.byteLength >> 2);
}

/** Reads an F16 tensor as raw half bits (for uploading to devices unchanged). */
export function readFloat16Bits(store: TensorStore, name: string): Uint16Array {
  const info = store.info(name);
  checkLoadable(info);
  if (info.dtype !== 'F16') throw new Error(`${info.source}: tensor '${name}' is ${info.dtype}, expected F16`);
  return bytesAsU16(store.bytes(name));
}
