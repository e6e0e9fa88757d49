// Host side of the linear layers: upload weights in the kernels' layout, and run a LinearOp after
// checking every tensor against the shape the op expects — a wrong shape or dtype is reported
// with the tensor's name and its expected shape before any device work.
import type { DeviceClass } from '../../codegen/kernels/deviceProfile.js';
import type { FusedLinearOp } from '../../codegen/kernels/fusedLinear.js';
import { toWeightLayout, type WeightLayout } from '../../codegen/kernels/weightLayout.js';
import type { LinearChoiceInput, LinearOp } from '../../codegen/kernels/linearOp.js';
import type { Device, DeviceBuffer } from '../backend/device.js';
import { type AwqTensors, checkAwqShape } from '../quant/awq.js';
import { f32ArrayToF16, packF16Pairs } from '../quant/f16.js';

export type LinearBindings = Record<string, DeviceBuffer>;

export class LinearShapeError extends Error {}

/** Weights are checked for exact size; activations and outputs may live in larger buffers. */
const EXACT = new Set(['qweight', 'qzeros', 'scales', 'w', 'bias']);

/** Throws LinearShapeError naming the tensor and its expected shape. */
export function checkLinearBindings(op: LinearOp, bindings: LinearBindings, M: number, notBound: readonly string[] = []): void {
  if (!Number.isInteger(M) || M < 1) throw new LinearShapeError(`${op.name}: M = ${M} is not a positive integer`);
  const want = op.tensors(M);
  const dims = `K = ${op.K}, N = ${op.N}, Nw = ${op.Nw}, M = ${M}`;
  for (const [name, t] of Object.entries(want)) {
    if (notBound.includes(name)) continue;
    const buf = bindings[name];
    const expect = `${t.dtype} ${t.formula} = [${t.shape.join(', ')}] (${t.elements} elements; ${dims})`;
    if (!buf) throw new LinearShapeError(`${op.name}: tensor '${name}' is missing; expected ${expect}`);
    if (buf.dtype !== t.dtype) throw new LinearShapeError(`${op.name}: tensor '${name}' (buffer '${buf.label}') is ${buf.dtype}; expected ${expect}`);
    const ok = EXACT.has(name) ? buf.length === t.elements : buf.length >= t.elements;
    if (!ok) throw new LinearShapeError(`${op.name}: tensor '${name}' (buffer '${buf.label}') has ${buf.length} elements; expected ${expect}`);
  }
  for (const name of Object.keys(bindings)) {
    if (!(name in want)) throw new LinearShapeError(`${op.name}: unexpected tensor '${name}'; the op takes ${Object.keys(want).join(', ')}`);
  }
}

/** Validate, then queue the op for M rows. */
export function runLinear(dev: Device, op: LinearOp, bindings: LinearBindings, M: number): void {
  checkLinearBindings(op, bindings, M);
  dev.run(op, bindings, { M });
}

/**
 * Validate, then queue a fused linear op (codegen/kernels/fusedLinear.ts): the linear's tensors as
 * runLinear checks them (its output only where the op has one), the norm weights [K], the rest by
 * the op's launches. Sizes: M, and with RoPE maxPos and numBlocks.
 */
export function runFusedLinear(dev: Device, op: FusedLinearOp, bindings: LinearBindings, sizes: Record<string, number> & { M: number }): void {
  const { M } = sizes;
  const linear: LinearBindings = {};
  for (const name of Object.keys(op.linear.tensors(M))) if (bindings[name]) linear[name] = bindings[name];
  // With RoPE the linear's output is the op's own scratch (q and the KV cache are the outputs).
  checkLinearBindings(op.linear, linear, M, op.spec.rope ? ['out'] : []);
  const normW = bindings.normW;
  if (op.spec.norm && (normW?.dtype !== 'f32' || normW.length !== op.linear.K)) {
    throw new LinearShapeError(`${op.name}: tensor 'normW' ${normW ? `(buffer '${normW.label}') is ${normW.dtype} [${normW.length}]` : 'is missing'}; expected f32 [K] = [${op.linear.K}]`);
  }
  dev.run(op, bindings, sizes);
}

export interface Int4DeviceWeights {
  K: number;
  N: number;
  groupSize: number;
  qweight: DeviceBuffer<'u32'>;
  qzeros: DeviceBuffer<'u32'>;
  scales: DeviceBuffer<'u32'>;
}

function expectLength(what: string, name: string, got: number, shape: number[], formula: string): void {
  const n = shape.reduce((a, b) => a * b, 1);
  if (got !== n) throw new LinearShapeError(`${what}: '${name}' has ${got} elements; expected ${formula} = [${shape.join(', ')}] (${n})`);
}

/**
 * Check AutoAWQ tensors on the host, then upload them as the kernels bind them (same bits);
 * qweight in `weightLayout` (the op's: `op.source.layout`; int4WeightLayout decides it).
 */
export function uploadInt4(dev: Device, t: AwqTensors, label = 'int4', weightLayout: WeightLayout = 'rows'): Int4DeviceWeights {
  const { K, N, groupSize: g } = t;
  checkAwqShape(K, N, g, `uploadInt4 '${label}'`);
  const what = `uploadInt4 '${label}' (K = ${K}, N = ${N}, g = ${g})`;
  expectLength(what, 'qweight', t.qweight.length, [K, N / 8], '[K, N/8]');
  expectLength(what, 'qzeros', t.qzeros.length, [K / g, N / 8], '[K/g, N/8]');
  expectLength(what, 'scales', t.scales.length, [K / g, N], '[K/g, N]');
  const put = (name: string, data: Uint32Array): DeviceBuffer<'u32'> => {
    const b = dev.alloc('u32', data.length, `${label}.${name}`);
    dev.write(b, data);
    return b;
  };
  return {
    K, N, groupSize: g,
    qweight: put('qweight', toWeightLayout(weightLayout, new Uint32Array(t.qweight.buffer, t.qweight.byteOffset, t.qweight.length), K, N / 8)),
    qzeros: put('qzeros', new Uint32Array(t.qzeros.buffer, t.qzeros.byteOffset, t.qzeros.length)),
    scales: put('scales', packF16Pairs(t.scales)),
  };
}

/**
 * Upload a dense weight for denseLinear: [K, Nw] input-major (layout 'KN'), or torch's [Nw, K]
 * ('NK', transposed here once), as f32 or as f16 pairs [K, Nw/2]; in memory as `weightLayout`
 * (the op's: `op.source.layout`; denseWeightLayout decides it).
 */
export function uploadDense(dev: Device, w: ArrayLike<number>, K: number, Nw: number, dtype: 'f32' | 'f16',
  layout: 'KN' | 'NK', label = 'dense', weightLayout: WeightLayout = 'rows'): DeviceBuffer<'f32'> | DeviceBuffer<'u32'> {
  const what = `uploadDense '${label}' (K = ${K}, N = ${Nw})`;
  expectLength(what, 'w', w.length, layout === 'KN' ? [K, Nw] : [Nw, K], layout === 'KN' ? '[K, N]' : '[N, K]');
  if (dtype === 'f16' && Nw % 2) throw new LinearShapeError(`${what}: f16 weights need an even N (two columns per u32 word: [K, N/2])`);
  const kn = new Float32Array(K * Nw);
  if (layout === 'KN') kn.set(w);
  else for (let n = 0; n < Nw; n++) for (let k = 0; k < K; k++) kn[k * Nw + n] = w[n * K + k]!;
  if (dtype === 'f32') {
    const b = dev.alloc('f32', kn.length, `${label}.w`);
    dev.write(b, toWeightLayout(weightLayout, kn, K, Nw));
    return b;
  }
  const words = toWeightLayout(weightLayout, packF16Pairs(f32ArrayToF16(kn)), K, Nw / 2);
  const b = dev.alloc('u32', words.length, `${label}.w`);
  dev.write(b, words);
  return b;
}

/**
 * What int4Linear/denseLinear should know about a device beyond its caps: how many invocations it
 * wants in flight (its profile), which sets the default split-K. CPU-like devices (the CPU
 * executor, llvmpipe) want ~16 workgroups of 64 per core (so K is split when N is small); GPUs
 * tens of thousands.
 */
export function linearHints(dev: Device): {
  caps: Device['caps']; parallelism: number; deviceClass: DeviceClass; choice?: LinearChoiceInput; weightLayout?: WeightLayout;
} {
  const hints = { caps: dev.caps, parallelism: dev.profile.parallelism, deviceClass: dev.profile.deviceClass };
  // The CPU executor reports GPU-sized limits, but small GEMM tiles run ~2x faster on it (measured
  // with src/ops/tune.ts); a tuned choice replaces this. 16 rows per tile: the GEMM computes whole
  // tiles, so a 9–16-row decode step (the engine's batches past GEMV_MAX_ROWS) with 32-row tiles
  // paid for 32 rows — 16-row tiles cost 0.6–0.7× at 16 rows (bench/notes/cpu.md, 2026-12-06).
  // The device's weight layout (the cpu device: column strips, so that each invocation's weight
  // reads are one sequential stream; bench/notes/cpu.md "Weight strips").
  const layout = dev.profile.weightLayout ? { weightLayout: dev.profile.weightLayout } : {};
  // Past GEMV_MAX_ROWS the cpu device class runs the register GEMM by default (linearGemmRows.ts
  // cpuGemmRows: no workgroup memory; 0.4–0.8x the tiled GEMM's time at 16–128 rows,
  // bench/notes/cpu.md "Register GEMM"); its profile says 'tiled' for A/B timing.
  if (dev.kind === 'cpu') {
    const gemm = { tileM: 16, tileN: 32, tileK: 32, blockM: 4, blockN: 8 };
    return { ...hints, ...layout, choice: dev.profile.gemm === 'tiled' ? { gemm, gemmRows: null } : { gemm } };
  }
  return { ...hints, ...layout };
}
