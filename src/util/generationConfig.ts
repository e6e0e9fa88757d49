// Sampling defaults from a model's generation_config.json, as Hugging Face's generate() reads
// them: do_sample false (or absent, HF's own default) means greedy; otherwise temperature,
// top_p and top_k as given.
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface GenerationDefaults {
  temperature?: number;
  topP?: number;
  topK?: number;
  /** Where they came from, for --help and logs ('' when the model has no generation_config.json). */
  source: string;
}

export function readGenerationDefaults(modelPath: string): GenerationDefaults {
  const file = path.join(modelPath, 'generation_config.json');
  let cfg: Record<string, unknown>;
  try {
    if (!fs.statSync(modelPath).isDirectory() || !fs.existsSync(file)) return { source: '' };
    cfg = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    return { source: '' };
  }
  const num = (k: string) => (typeof cfg[k] === 'number' && Number.isFinite(cfg[k]) ? (cfg[k] as number) : undefined);
  if (cfg.do_sample !== true) return { temperature: 0, source: file };
  const topK = num('top_k');
  return { temperature: num('temperature') ?? 1, topP: num('top_p'), ...(topK !== undefined ? { topK } : {}), source: file };
}
