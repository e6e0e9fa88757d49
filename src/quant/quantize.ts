// quantize(model, options) and `kiln quantize`: a Hugging Face Llama-family model → an AutoAWQ
// GEMM checkpoint, by AWQ (calibration on the device kernels, scale and clipping search, folding:
// calibrate.ts, awqSearch.ts, awqLayer.ts) or by RTN. Every argument is checked before the
// calibration starts, so a bad option or a busy output directory fails at once.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BackendKind, Device } from '../backend/device.js';
import { createDevice } from '../backend/index.js';
import { openModel } from '../io/index.js';
import { readFloat32 } from '../io/safetensors.js';
import { EMBED } from '../model/spec.js';
import { freeWeights, type ModelWeights, uploadWeights } from '../model/weights.js';
import { flag, num, type ParsedArgs, rejectUnknown, str } from '../util/args.js';
import { type AwqTensors } from './awq.js';
import { quantizeLayerAwq, readLayer, type LayerResult } from './awqLayer.js';
import { calibrationSequences, LayerCalibrator } from './calibrate.js';
import { checkOutDir, checkQuantizeArgs, humanBytes, type PrecomputedTensors, type QuantizeResult, WEIGHTS_FILE, writeAwqCheckpoint } from './writeAwq.js';

/** Calibration defaults: 64 sequences of 256 tokens (16,384 tokens; brown-calib.txt has ~25k). */
export const DEFAULT_SAMPLES = 64;
export const DEFAULT_SEQ_LEN = 256;
/** Tokens of whole calibration sequences the module-output losses run on. */
const MODULE_SAMPLE_TOKENS = 1024;

/** ../shared/data/brown-calib.txt beside the package (a checkout of the project), if present. */
export function defaultCalibrationFile(): string | null {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++, dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'package.json'))) {
      const f = path.resolve(dir, '../shared/data/brown-calib.txt');
      return fs.existsSync(f) ? f : null;
    }
  }
  return null;
}

export interface QuantizeModelOptions {
  out: string;
  /** 'awq' (default) or 'rtn'. */
  method?: 'awq' | 'rtn';
  /** Group size along K: 32, 64 or 128 (default 128). */
  groupSize?: number;
  /** Calibration text file (default ../shared/data/brown-calib.txt when present). */
  calib?: string;
  /** Calibration sequences and their length (default 64 × 256). */
  samples?: number;
  seqLen?: number;
  /** Where calibration runs (default 'auto'). */
  device?: BackendKind | 'auto' | Device;
  /** AutoAWQ's duo scaling (default true); false: the paper's s = x_mean^α. */
  duo?: boolean;
  /** Points on the α grid (default 20). */
  grid?: number;
  /** Clipping search (default true). */
  clip?: boolean;
  /** Score q/k/v and gate/up by their block's output on a ~1024-token sample, as AutoAWQ (default false: their own outputs, all tokens). */
  moduleLoss?: boolean;
  /** Write into a non-empty output directory. */
  force?: boolean;
  /** Return AWQ's tensors too (QuantizeModelResult.tensors), as written. */
  keepTensors?: boolean;
  /** Progress: AWQ layers done of all (RTN: tensors written). */
  onProgress?: (done: number, total: number) => void;
}

export interface AwqReport {
  samples: number;
  seqLen: number;
  calibFile: string;
  device: string;
  /** Per layer: the chosen α of each group and the group's output error, RTN vs AWQ. */
  layers: Pick<LayerResult, 'alphas' | 'loss'>[];
  /** Calibration and search time, and the part of it spent running layers on the device and
   *  accumulating their input statistics. */
  searchMs: number;
  calibrationMs: number;
}

export interface QuantizeModelResult extends QuantizeResult {
  method: 'awq' | 'rtn';
  awq: AwqReport | null;
  /** Peak resident memory of this process so far (bytes). */
  peakRss: number;
  /** With keepTensors (AWQ): the quantized linears and the dense tensors folding changed. */
  tensors?: PrecomputedTensors;
}

/** Quantize the model directory `model` into `opts.out` (an AutoAWQ GEMM checkpoint). */
export async function quantize(model: string, opts: QuantizeModelOptions): Promise<QuantizeModelResult> {
  const t0 = performance.now();
  const method = opts.method ?? 'awq';
  const { g } = checkQuantizeArgs(model, { method, groupSize: opts.groupSize });
  if (!opts.out) throw new Error('quantize: give the output directory (out / --out DIR)');
  checkOutDir(model, opts.out, opts.force ?? false);
  if (method === 'rtn') {
    const r = writeAwqCheckpoint(model, opts.out, { groupSize: g, method, force: opts.force, onProgress: opts.onProgress });
    return { ...r, method, awq: null, peakRss: peakRss() };
  }
  const samples = opts.samples ?? DEFAULT_SAMPLES, seqLen = opts.seqLen ?? DEFAULT_SEQ_LEN;
  const calibFile = opts.calib ?? defaultCalibrationFile();
  if (!calibFile) throw new Error('quantize: no calibration text: give one with --calib FILE (plain text, at least samples × seq-len tokens)');
  if (!fs.existsSync(calibFile) || !fs.statSync(calibFile).isFile()) throw new Error(`quantize: calibration file ${calibFile} (--calib) does not exist`);
  const text = fs.readFileSync(calibFile, 'utf8');
  if (!text.trim()) throw new Error(`quantize: calibration file ${calibFile} (--calib) is empty`);

  const files = openModel(model);
  const owns = typeof opts.device !== 'object';
  let dev: Device | null = null, fp: ModelWeights | null = null, calib: LayerCalibrator | null = null;
  const layers: AwqReport['layers'] = [];
  const linears = new Map<string, AwqTensors>(), dense = new Map<string, Float32Array>();
  const tSearch = performance.now();
  let calibrationMs = 0;
  try {
    const { spec, weights: store, tokenizer } = files;
    for (const [what, K] of [['hidden_size', spec.hidden], ['intermediate_size', spec.ffn], ['heads·head_dim', spec.heads * spec.headDim]] as const) {
      if (K % g) throw new Error(`quantize: group size ${g} does not divide ${what} = ${K}; choose a --group-size that divides every input dim`);
    }
    if (!tokenizer) throw new Error(`quantize: ${model} has no tokenizer.json, needed to tokenize the calibration text`);
    const seqs = calibrationSequences(tokenizer.encode(text), samples, seqLen, calibFile);
    dev = typeof opts.device === 'object' ? opts.device : await createDevice(opts.device ?? 'auto');
    fp = uploadWeights(dev, spec, store, { format: 'f32' });
    // Whole sequences (~1024 tokens) whose q/k/v and gate/up inputs feed the module-output losses.
    const moduleSeqs = !opts.moduleLoss ? 0 : Math.min(samples, Math.max(1, Math.floor(MODULE_SAMPLE_TOKENS / seqLen)));
    calib = new LayerCalibrator(dev, spec, fp, seqLen, Math.max(MODULE_SAMPLE_TOKENS, seqLen), moduleSeqs);
    // Layer 0's input: the embeddings of the calibration tokens (a gather, done here).
    const D = spec.hidden, embed = readFloat32(store, EMBED);
    let hidden: Float32Array = new Float32Array(samples * seqLen * D);
    seqs.flat().forEach((id, t) => hidden.set(embed.subarray(id * D, (id + 1) * D), t * D));
    opts.onProgress?.(0, spec.layers);
    for (let l = 0; l < spec.layers; l++) {
      const tc = performance.now();
      const { stats, out } = await calib.runLayer(l, hidden);
      calibrationMs += performance.now() - tc;
      hidden = out;
      const r = quantizeLayerAwq(spec, l, readLayer(spec, store, l), stats, { groupSize: g, grid: opts.grid, duo: opts.duo, clip: opts.clip, moduleLoss: opts.moduleLoss, seqLen });
      for (const [k, v] of r.linears) linears.set(k, v);
      for (const [k, v] of r.dense) dense.set(k, v);
      layers.push({ alphas: r.alphas, loss: r.loss });
      opts.onProgress?.(l + 1, spec.layers);
    }
  } finally {
    calib?.destroy();
    if (dev && fp) freeWeights(dev, fp);
    if (dev && owns) await dev.destroy();
    files.weights.close();
  }
  const searchMs = performance.now() - tSearch;
  const r = writeAwqCheckpoint(model, opts.out, { groupSize: g, method, force: opts.force, precomputed: { linears, dense } });
  return {
    ...r, ms: performance.now() - t0, method, peakRss: peakRss(), ...(opts.keepTensors ? { tensors: { linears, dense } } : {}),
    awq: { samples, seqLen, calibFile, device: dev?.description ?? '', layers, searchMs, calibrationMs },
  };
}

function peakRss(): number {
  return process.resourceUsage().maxRSS * 1024;
}

export const QUANTIZE_HELP = `kiln quantize --model DIR --out DIR [options]   → an AutoAWQ GEMM checkpoint (INT4, zero points)
  --method awq|rtn     AWQ (default): calibration, scale and clipping search; rtn: round to nearest
  --group-size G       32, 64 or 128 (default 128)
  --calib FILE         calibration text (default ../shared/data/brown-calib.txt when present)
  --samples N          calibration sequences (default ${DEFAULT_SAMPLES})
  --seq-len L          tokens per sequence (default ${DEFAULT_SEQ_LEN}); the text must hold N × L tokens
  --device D           where calibration runs: auto|cpu|webgpu|cuda (default auto)
  --paper-scales       s = x_mean^α (the paper) instead of AutoAWQ's duo scaling
  --no-clip            skip the clipping search
  --module-loss        score q/k/v and gate/up by their block's output (attention, MLP) on ~1024
                       tokens, as AutoAWQ does, instead of their own outputs on all tokens (slower)
  --force              write into a non-empty output directory
`;

/** `kiln quantize ...` */
export async function quantizeCommand(
  a: ParsedArgs, onProgress?: (done: number, total: number) => void, log: (line: string) => void = (l) => process.stdout.write(l + '\n'),
): Promise<QuantizeModelResult | null> {
  // --help: print and write nothing (null: no result).
  if (flag(a, 'help')) { log(QUANTIZE_HELP); return null; }
  rejectUnknown(a, ['model', 'out', 'group-size', 'method', 'force', 'calib', 'samples', 'seq-len', 'device', 'paper-scales', 'no-clip', 'module-loss'], 'kiln quantize');
  const model = str(a, 'model');
  const out = str(a, 'out');
  if (!model) throw new Error('kiln quantize: give the model directory with --model DIR');
  if (!out) throw new Error('kiln quantize: give the output directory with --out DIR');
  if (a.positional.length) throw new Error(`kiln quantize: unexpected argument '${a.positional[0]}'`);
  const method = str(a, 'method') ?? 'awq';
  if (method !== 'awq' && method !== 'rtn') throw new Error(`quantize: method '${method}' is not available (--method: awq, rtn; rtn is round-to-nearest INT4)`);
  const r = await quantize(model, {
    out, method, groupSize: num(a, 'group-size'), force: flag(a, 'force'), calib: str(a, 'calib'),
    samples: num(a, 'samples'), seqLen: num(a, 'seq-len'), device: str(a, 'device') as BackendKind | 'auto' | undefined,
    duo: !flag(a, 'paper-scales'), clip: !flag(a, 'no-clip'), moduleLoss: flag(a, 'module-loss'), onProgress,
  });
  log(`wrote ${path.join(out, WEIGHTS_FILE)}: AutoAWQ GEMM, 4-bit, group size ${r.groupSize}, ${r.quantizedLinears} linear layers (${r.method.toUpperCase()})`);
  if (r.awq) {
    const w = r.awq;
    log(`calibration: ${w.samples} × ${w.seqLen} tokens of ${w.calibFile} on ${w.device}; ${(w.searchMs / 1000).toFixed(1)} s (layers on the device + input statistics ${(w.calibrationMs / 1000).toFixed(1)} s, searches ${((w.searchMs - w.calibrationMs) / 1000).toFixed(1)} s)`);
    w.layers.forEach((l, i) => log(`  layer ${i}: α ${(['qkv', 'o', 'gateUp', 'down'] as const).map((k) => `${k} ${Number.isNaN(l.alphas[k]) ? 'none' : l.alphas[k].toFixed(2)}`).join(', ')}; output error vs RTN ${l.loss.map((x) => `${x.group} ${(x.awq / x.rtn).toFixed(3)}×`).join(', ')}`));
  }
  log(`size ${humanBytes(r.bytesBefore)} → ${humanBytes(r.bytesAfter)} (${(r.bytesBefore / r.bytesAfter).toFixed(2)}× smaller) in ${(r.ms / 1000).toFixed(1)} s · peak memory ${humanBytes(r.peakRss)}`);
  log(`config.json with quantization_config${r.copiedFiles.length ? `; copied ${r.copiedFiles.join(', ')}` : ''}`);
  if (r.droppedTensors.length) log(`not written (unused by the model): ${r.droppedTensors.join(', ')}`);
  return r;
}
