// Model loading: one entry point for Hugging Face directories and llama2.c checkpoints.

import { platform } from '../platform/index.js';
import type { ModelSpec } from '../model/spec.js';
import { loadHfConfig, validateWeights } from './hfConfig.js';
import { openSafetensors, type TensorStore } from './safetensors.js';
import { loadLlama2c } from './llama2c.js';
import { HfTokenizer, checkTokenizerVocab } from './tokenizer.js';

export * from './safetensors.js';
export * from './hfConfig.js';
export * from './tokenizer.js';
export * from './llama2c.js';
export * from './awq.js';

export interface LoadedModel {
  /** The directory or file it came from. */
  source: string;
  format: 'hf' | 'llama2c';
  spec: ModelSpec;
  /** Validated against the spec; tensors are read on demand. Close when done. */
  weights: TensorStore;
  /** tokenizer.json when the directory has one (llama2.c checkpoints come without). */
  tokenizer: HfTokenizer | null;
}

/**
 * Opens a model: a Hugging Face directory (config.json + safetensors, optional tokenizer.json;
 * AWQ when config.json says so) or a llama2.c .bin checkpoint.
 */
export function openModel(p: string, opts: { allowUnusedTensors?: boolean } = {}): LoadedModel {
  if (!platform.files.exists(p)) throw new Error(`${p}: no such file or directory`);
  if (!platform.files.isDirectory(p)) {
    if (p.endsWith('.bin')) {
      const ckpt = loadLlama2c(p);
      return { source: p, format: 'llama2c', spec: ckpt.spec, weights: ckpt.weights, tokenizer: null };
    }
    throw new Error(`${p}: expected a model directory (config.json + *.safetensors) or a llama2.c .bin file`);
  }
  const spec = loadHfConfig(p);
  const weights = openSafetensors(p);
  try {
    validateWeights(spec, weights, opts);
    const tokenizer = platform.files.exists(platform.files.join(p, 'tokenizer.json')) ? HfTokenizer.fromDir(p) : null;
    if (tokenizer) checkTokenizerVocab(tokenizer, spec);
    return { source: p, format: 'hf', spec, weights, tokenizer };
  } catch (e) {
    weights.close();
    throw e;
  }
}
