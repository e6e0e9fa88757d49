// `kiln generate | eval | bench | tune` (`kiln codegen` is codegen/cli.ts).
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { windowedPerplexity } from './eval.js';
import { createEngine, type Engine } from './engine.js';
import { DEFAULT_MODEL, type GenerateOptions, type LLM, type LoadOptions, loadModel, type Quant } from './llm.js';
import type { BackendKind, Device } from './backend/device.js';
import { flag, num, type ParsedArgs, parseArgs, rejectUnknown, str, strs } from './util/args.js';
import { chooseDevice } from './util/autoDevice.js';
import { readGenerationDefaults } from './util/generationConfig.js';

const HELP = `kiln — LLM serving on kernels generated from one TypeScript DSL

  kiln generate [-m DIR] -p TEXT              stream a completion (default model: models/brown-target; kiln generate -h)
  kiln eval ppl [--model DIR] --text FILE     held-out perplexity (windows of 256, no context)
      --device ...   --quant ...   --group-size G   --windows N   --window W
  kiln eval compare --model DIR --reference DIR --text FILE   KL(reference‖model), top-1 agreement (same windows)
  kiln quantize --model DIR --out DIR         INT4 AutoAWQ GEMM checkpoint: --method awq|rtn (default awq)
      --group-size 128   --calib FILE (default ../shared/data/brown-calib.txt)   --samples 64 × --seq-len 256
      --device D   --force   (kiln quantize --help for all)
  kiln serve [--model DIR] [--port 8000]      OpenAI-compatible HTTP server (kiln serve --help for all)
  kiln build-playground DIR [--model DIR]     the playground page (served by kiln serve at /) as static files
  kiln bench <name> [...]                     benchmarks (generate, engine, llamacpp, ...; 'kiln bench' lists them)
  kiln tune <kernel> --device D --shape ...   time kernel variants, write the variant cache
  kiln profile <family> [--shape K=..,N=..]   GPU memory-access model on the CPU: sectors, bank conflicts, occupancy
  kiln codegen ...                            ahead-of-time WGSL / CUDA (kiln codegen --help)

  kiln <command> --help (or -h) lists a command's options and their defaults.
`;

const GENERATE_HELP = `kiln generate — stream a completion

  kiln generate [-m DIR] -p TEXT [options]      (or the prompt as the last arguments)

  -m, --model DIR        HF directory, AutoAWQ checkpoint or llama2.c .bin (default: models/brown-target)
  -p, --prompt TEXT      the prompt
  --prompt-ids 1,2,3     token ids instead of text (models without tokenizer.json; output as ids)
  --chat                 the prompt is a user message, rendered by the model's chat template
  --device D             auto | cpu | webgpu | cuda (default auto: cuda, else webgpu on a real GPU, else cpu;
                         the summary says why)
  --quant Q              none | f32 | f16 | int4-rtn (default none: the checkpoint's precision)
  --group-size G         INT4 group size for int4-rtn (default 128)
  --kv f32|f16           KV cache precision (default f32 on cpu)
  -n, --max-tokens N     new tokens at most (default 128)
  --temperature T        ≥ 0; 0 = greedy        } defaults: the model's generation_config.json, as
  --top-k K              ≥ 0; 0 = off           } Hugging Face reads it (do_sample false or absent:
  --top-p P              in (0, 1]; 1 = off     } greedy; else its temperature, top_p, top_k);
  --min-p P              in [0, 1]; 0 = off     } without one: temperature 0.8, no filters
  --seed S               integer in [0, 2^32) (default: random)
  --stop TEXT            end before this text; repeat for several (needs a tokenizer)
  --draft DIR|ngram      speculative decoding: a draft model with the same tokenizer, or n-gram lookup
  --spec-k K             drafts per step, 1–16 (default 4)

  Prints the completion on stdout; on stderr the model, the device and why it was chosen, then
  load, warm-up (kernel compilation), prefill and decode times.
`;

const EVAL_HELP = `kiln eval — model quality

  kiln eval ppl [-m DIR] --text FILE          held-out perplexity: windows of --window tokens (default 256), no context
      --windows N (default: all)   --device D (auto)   --quant Q (none)   --group-size G (128)   --kv f32|f16
  kiln eval compare -m DIR --reference DIR --text FILE
                                              KL(reference‖model) and top-1 agreement on the same windows
`;

const TUNE_HELP = `kiln tune — time a kernel family's variants on a device; the winner goes to the variant cache

  kiln tune <family> --shape K=4096,N=4096 [--device auto] [--cache FILE] [--reps N] [--samples N]
      families: int4Linear, denseLinear, rmsNorm, rope, embedding, siluMul, argmaxRows (kiln tune with no family lists their shape keys)
      --cache default: ~/.cache/kiln/tune.json (or KILN_TUNE_CACHE)
`;

const BENCH_HELP = `kiln bench — benchmarks that print tables (run from a checkout)

  kiln bench <name> [options]   generate, engine, llamacpp, simd, gemm-tiles, …: 'kiln bench' alone lists them all
  kiln bench serve [--requests 24] [--configs naive,continuous,awq,speculative,combined] [--json]
      the seed's five serving configurations through a real kiln serve process each
`;

const COMMAND_HELP: Record<string, string> = { generate: GENERATE_HELP, eval: EVAL_HELP, tune: TUNE_HELP, bench: BENCH_HELP };

const LOAD_OPTS = ['model', 'device', 'quant', 'group-size', 'kv'];

/** Load options, checked before anything loads (errors name the flag). */
function loadOptions(a: ParsedArgs): LoadOptions {
  const kv = str(a, 'kv');
  if (kv !== undefined && kv !== 'f32' && kv !== 'f16') throw new Error(`--kv must be f32 or f16, got '${kv}'`);
  const device = str(a, 'device') ?? 'auto';
  if (!['auto', 'cpu', 'webgpu', 'cuda'].includes(device)) throw new Error(`--device must be auto, cpu, webgpu or cuda, got '${device}'`);
  const quant = str(a, 'quant') ?? 'none';
  if (!['none', 'f32', 'f16', 'int4-rtn'].includes(quant)) throw new Error(`--quant must be none, f32, f16 or int4-rtn, got '${quant}'`);
  const groupSize = num(a, 'group-size');
  if (groupSize !== undefined && (!Number.isInteger(groupSize) || groupSize < 1)) throw new Error(`--group-size must be a positive integer, got ${groupSize}`);
  return { device: device as LoadOptions['device'], quant: quant as Quant, groupSize, kvDtype: kv as 'f32' | 'f16' | undefined, onProgress: progressBar('loading') };
}

/** The device of --device (auto: chosen here, with the reason, without a stray native probe warning). */
async function openDevice(o: LoadOptions): Promise<{ device: Device; why: string }> {
  return chooseDevice((o.device ?? 'auto') as BackendKind | 'auto');
}

/** A one-line progress bar on stderr (plain lines when stderr is not a terminal). */
function progressBar(label: string): (done: number, total: number) => void {
  const tty = process.stderr.isTTY;
  return (done, total) => {
    if (!tty) { if (done === total) process.stderr.write(`${label}: ${total}/${total}\n`); return; }
    const width = 30, fill = Math.round((done / total) * width);
    process.stderr.write(`\r${label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${done}/${total}`);
    if (done === total) process.stderr.write('\n');
  };
}

/** A number option checked against its range, the error naming the flag. */
function ranged(a: ParsedArgs, name: string, ok: (v: number) => boolean, range: string): number | undefined {
  const v = num(a, name);
  if (v !== undefined && !ok(v)) throw new Error(`--${name} must be ${range}, got ${v}`);
  return v;
}

async function generate(a: ParsedArgs): Promise<void> {
  // Everything is checked before the model loads, and before anything is printed.
  rejectUnknown(a, [...LOAD_OPTS, 'prompt', 'prompt-ids', 'chat', 'max-tokens', 'temperature', 'top-k', 'top-p', 'min-p', 'seed', 'stop', 'draft', 'spec-k'], 'kiln generate');
  const lo = loadOptions(a);
  const draftArg = str(a, 'draft');
  const specK = ranged(a, 'spec-k', (v) => Number.isInteger(v) && v >= 1 && v <= 16, 'an integer in [1, 16]');
  if (specK !== undefined && !draftArg) throw new Error('--spec-k needs --draft DIR|ngram');
  const maxTokens = ranged(a, 'max-tokens', (v) => Number.isInteger(v) && v >= 1, 'a positive integer') ?? 128;
  const temperature = ranged(a, 'temperature', (v) => v >= 0, '≥ 0 (0 = greedy)');
  const topK = ranged(a, 'top-k', (v) => Number.isInteger(v) && v >= 0, 'a non-negative integer (0 = off)');
  const topP = ranged(a, 'top-p', (v) => v > 0 && v <= 1, 'in (0, 1]');
  const minP = ranged(a, 'min-p', (v) => v >= 0 && v <= 1, 'in [0, 1]');
  const seed = ranged(a, 'seed', (v) => Number.isInteger(v) && v >= 0 && v < 2 ** 32, 'an integer in [0, 2^32)');
  const stop = strs(a, 'stop');
  if (stop.some((x) => !x)) throw new Error('--stop must not be empty');
  const idsArg = str(a, 'prompt-ids');
  const ids = idsArg?.split(',').map((x, i) => {
    const t = x.trim();
    if (!/^\d+$/.test(t)) throw new Error(`--prompt-ids: entry ${i + 1} '${x}' is not a token id (give ids as 1,2,3)`);
    return Number(t);
  });
  const prompt = str(a, 'prompt') ?? a.positional.join(' ');
  if (!prompt && !ids) throw new Error('kiln generate: give a prompt with -p "..." (or token ids with --prompt-ids 1,2,3)');
  const model = str(a, 'model', DEFAULT_MODEL);
  const isDir = existsSync(model) && statSync(model).isDirectory();
  if (!existsSync(model)) throw new Error(`--model: ${model} does not exist`);
  if (stop.length && (!isDir || !existsSync(join(model, 'tokenizer.json')))) {
    throw new Error(`--stop needs a tokenizer to match text, and ${model} has no tokenizer.json`);
  }
  if (!ids && (!isDir || !existsSync(join(model, 'tokenizer.json')))) throw new Error(`${model} comes without a tokenizer.json: give the prompt as token ids with --prompt-ids`);
  // Sampling defaults as Hugging Face takes them from generation_config.json; flags override.
  const gen = readGenerationDefaults(model);
  const opts: GenerateOptions = {
    maxTokens, temperature: temperature ?? gen.temperature, topK: topK ?? gen.topK, topP: topP ?? gen.topP, minP, seed,
    stop: stop.length ? stop : undefined,
  };
  const t0 = performance.now();
  const { device, why } = await openDevice(lo);
  let llm: LLM | null = null;
  let draft: LLM | null = null;
  let engine: Engine | null = null;
  try {
    llm = await loadModel(model, { ...lo, device });
    if (draftArg) {
      // Speculative decoding: the draft model shares the target's device (or n-gram lookup).
      if (draftArg !== 'ngram') draft = await loadModel(draftArg, { ...lo, device, onProgress: progressBar('loading draft') });
      engine = createEngine(llm, { speculative: { drafter: draft ?? 'ngram', k: specK ?? 4 } });
    }
    const loadMs = performance.now() - t0;
    const sampling = opts.temperature === 0 ? 'greedy' : `temperature ${opts.temperature ?? 0.8}`;
    process.stderr.write(`model ${llm.source} · ${llm.weights.format}${llm.weights.groupSize ? ` g${llm.weights.groupSize}` : ''} · ${llm.device.description} (${why}) · ${sampling}${gen.source && temperature === undefined ? ' (generation_config.json)' : ''}\n`);
    const gen1 = (input: number[], o: GenerateOptions) => (engine ? engine.generate({ ...o, prompt: input }) : llm!.generate(input, o));
    // --chat: the prompt is one user message, rendered by the model's chat template.
    const input = ids ?? (flag(a, 'chat') ? llm.chatIds([{ role: 'user', content: prompt }]) : llm.encode(prompt));
    // Warm-up: compile the prefill and decode kernels on a throwaway request of the same length
    // (other tokens, so the prefix cache does not serve the real one), so prefill's rate is the model's.
    const tw = performance.now();
    for await (const _ of gen1(input.map(() => llm!.spec.bosId ?? 0), { maxTokens: 2, temperature: 0, stopTokenIds: [] })) { /* discard */ }
    const warmMs = performance.now() - tw;
    // Text when the model has a tokenizer; token ids otherwise.
    const tok = llm.tokenizer;
    const show = (text: string, id: number) => (tok ? text : id >= 0 ? ` ${id}` : '');
    process.stdout.write(!ids && !flag(a, 'chat') ? prompt : tok ? llm.decode(input) : input.join(' '));
    const h = gen1(input, opts);
    for await (const t of h) process.stdout.write(show(t.text, t.tokenId));
    process.stdout.write('\n');
    const r = await h.result();
    if (r.finishReason === 'error') throw new Error(r.error);
    const s = r.usage, tm = r.timings;
    const sec = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
    const rate = (n: number, ms: number) => (ms > 0 ? (n / ms) * 1000 : 0).toFixed(1);
    const pre = s.promptTokens - s.cachedTokens;
    process.stderr.write(`load ${sec(loadMs)} · warm-up ${sec(warmMs)} · prefill ${pre} tokens in ${sec(tm.prefillMs)} (${rate(pre, tm.prefillMs)} tok/s) · `
      + `decode ${s.generatedTokens} tokens in ${sec(tm.decodeMs)} (${rate(Math.max(0, s.generatedTokens - 1), tm.decodeMs)} tok/s) · ${r.finishReason}\n`);
    if (r.speculation) {
      const sp = r.speculation;
      process.stderr.write(`speculation (${draftArg}): ${sp.accepted}/${sp.drafted} drafts accepted (${sp.drafted ? ((100 * sp.accepted) / sp.drafted).toFixed(0) : 0}%) in ${sp.steps} verify steps\n`);
    }
  } finally {
    await engine?.close();
    await draft?.close();
    await llm?.close();
    await device.destroy();
  }
}

async function evalCmd(a: ParsedArgs): Promise<void> {
  const what = a.positional[0];
  if (what === 'compare') return evalCompare(a);
  if (what !== 'ppl') throw new Error(`kiln eval: unknown evaluation '${what ?? ''}' (available: ppl, compare)`);
  rejectUnknown(a, [...LOAD_OPTS, 'text', 'windows', 'window'], 'kiln eval ppl');
  const file = str(a, 'text');
  if (!file) throw new Error('kiln eval ppl: give the text file with --text FILE');
  const text = readFileSync(file, 'utf8');
  const lo = loadOptions(a);
  const { device } = await openDevice(lo);
  const llm = await loadModel(str(a, 'model', DEFAULT_MODEL), { ...lo, device }).catch(async (e) => { await device.destroy(); throw e; });
  try {
    const ids = llm.encode(text);
    const r = await windowedPerplexity(llm, ids, { window: num(a, 'window', 256), maxWindows: num(a, 'windows'), onWindow: progressBar('windows') });
    const quant = `${llm.weights.format}${llm.weights.groupSize ? ` g${llm.weights.groupSize}` : ''}`;
    console.log(`perplexity ${r.perplexity.toFixed(4)} over ${r.predictions} predictions (${r.windows} windows) · ${llm.source} · ${quant} · ${llm.device.kind} · ${(r.ms / 1000).toFixed(1)} s`);
  } finally {
    await llm.close();
    await device.destroy();
  }
}

/** `kiln bench`: the benchmarks are a program of their own in bench/ (a checkout only, never in the
 *  package), run through tsx; product code does not import them. */
function benchCommand(rest: string[]): void {
  const script = fileURLToPath(new URL('../bench/run.ts', import.meta.url));
  if (!existsSync(script)) throw new Error(`kiln bench runs from a checkout: ${script} is not here (benchmarks are not in the package)`);
  const r = spawnSync(process.execPath, ['--import', 'tsx', script, ...rest], { stdio: 'inherit' });
  if (r.error) throw r.error;
  process.exitCode = r.status ?? 1;
}

/** `kiln eval compare --model A --reference B --text FILE`: KL(B‖A), top-1 agreement, both perplexities. */
async function evalCompare(a: ParsedArgs): Promise<void> {
  rejectUnknown(a, [...LOAD_OPTS, 'reference', 'text', 'windows', 'window'], 'kiln eval compare');
  const file = str(a, 'text'), ref = str(a, 'reference'), model = str(a, 'model');
  if (!file) throw new Error('kiln eval compare: give the text file with --text FILE');
  if (!model || !ref) throw new Error('kiln eval compare: give the model with --model DIR and the reference with --reference DIR');
  const { compareModels } = await import('./quant/compare.js');
  const text = readFileSync(file, 'utf8');
  const lo = loadOptions(a);
  const { device } = await openDevice(lo);
  const opts = { ...lo, device };
  const llm = await loadModel(model, opts).catch(async (e) => { await device.destroy(); throw e; });
  try {
    const reference = await loadModel(ref, { ...opts, quant: 'none', device: llm.device });
    try {
      const ids = llm.encode(text);
      if (reference.encode(text).join() !== ids.join()) throw new Error(`kiln eval compare: ${model} and ${ref} tokenize the text differently`);
      const r = await compareModels(llm, reference, ids, { window: num(a, 'window', 256), maxWindows: num(a, 'windows'), onWindow: progressBar('windows') });
      console.log(`KL(reference‖model) ${r.kl.toFixed(5)} nats/token · top-1 agreement ${(100 * r.top1).toFixed(2)}% · perplexity ${r.pplModel.toFixed(4)} vs ${r.pplReference.toFixed(4)} · ${r.predictions} predictions (${r.windows} windows) · ${(r.ms / 1000).toFixed(1)} s`);
    } finally {
      await reference.close();
    }
  } finally {
    await llm.close();
    await device.destroy();
  }
}

async function main(argv: string[]): Promise<void> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === '--help' || cmd === 'help' || cmd === '-h') { process.stdout.write(HELP); return; }
  // `kiln <command> --help` / `-h`: that command's options (quantize and serve print their own).
  const help = COMMAND_HELP[cmd];
  if (help && rest.some((x) => x === '--help' || x === '-h')) { process.stdout.write(help); return; }
  switch (cmd) {
    case 'generate': return generate(parseArgs(rest, ['chat']));
    case 'eval': return evalCmd(parseArgs(rest));
    case 'bench': return benchCommand(rest);
    case 'quantize': { await (await import('./quant/quantize.js')).quantizeCommand(parseArgs(rest, ['force', 'help', 'paper-scales', 'no-clip', 'module-loss']), progressBar('quantizing')); return; }
    case 'tune': return (await import('./tune.js')).tuneCommand(parseArgs(rest, ['force']));
    case 'serve': return (await import('./server/command.js')).serveCommand(rest);
    case 'build-playground': return (await import('./server/playground.js')).buildPlaygroundCommand(rest, DEFAULT_MODEL);
    case 'profile': return (await import('./profile.js')).profileCommand(rest);
    default: throw new Error(`kiln: unknown command '${cmd}'\n${HELP}`);
  }
}

main(process.argv.slice(2)).catch((e: unknown) => {
  const msg = e instanceof Error ? e.message : String(e);
  // Messages that already say which command failed ('kiln generate: …') get no second prefix.
  process.stderr.write(`${/^kiln\b/.test(msg) ? msg : `kiln: ${msg}`}\n`);
  process.exitCode = 1;
});

