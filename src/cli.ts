// `kiln generate | eval | bench | tune` (`kiln codegen` is codegen/cli.ts).
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { windowedPerplexity } from './eval.js';
import { createEngine, type Engine } from './engine.js';
import { DEFAULT_MODEL, type GenerateOptions, type LLM, type LoadOptions, loadModel, type Quant } from './llm.js';
import { flag, num, type ParsedArgs, parseArgs, rejectUnknown, str } from './util/args.js';

const HELP = `kiln — LLM serving on kernels generated from one TypeScript DSL

  kiln generate [--model DIR] --prompt TEXT   stream a completion (default model: models/brown-target)
      --prompt-ids 1,2,3               token ids instead of text (models without tokenizer.json)
      --chat                           the prompt is a user message, rendered by the model's chat template
      --device auto|cpu|webgpu|cuda   --quant none|f32|f16|int4-rtn   --group-size G   --kv f32|f16
      --max-tokens N   --temperature T   --top-k K   --top-p P   --min-p P   --seed S   --stop TEXT
      --draft DIR|ngram   --spec-k K      speculative decoding: a draft model (same tokenizer) or n-gram lookup, K drafts (4)
  kiln eval ppl [--model DIR] --text FILE     held-out perplexity (windows of 256, no context)
      --device ...   --quant ...   --group-size G   --windows N   --window W
  kiln eval compare --model DIR --reference DIR --text FILE   KL(reference‖model), top-1 agreement (same windows)
  kiln quantize --model DIR --out DIR         INT4 AutoAWQ GEMM checkpoint: --method awq|rtn (default awq)
      --group-size 128   --calib FILE (default ../shared/data/brown-calib.txt)   --samples 64 × --seq-len 256
      --device D   --force   (kiln quantize --help for all)
  kiln serve [--model DIR] [--port 8000]      OpenAI-compatible HTTP server (kiln serve --help for all)
  kiln bench <name> [...]                     benchmarks (dsl, int4, attention, accept, generate, ...)
  kiln tune <kernel> --device D --shape ...   time kernel variants, write the variant cache
  kiln codegen ...                            ahead-of-time WGSL / CUDA (kiln codegen --help)
`;

const LOAD_OPTS = ['model', 'device', 'quant', 'group-size', 'kv'];

function loadOptions(a: ParsedArgs): LoadOptions {
  const kv = str(a, 'kv');
  if (kv !== undefined && kv !== 'f32' && kv !== 'f16') throw new Error(`--kv must be f32 or f16, got '${kv}'`);
  return {
    device: (str(a, 'device') ?? 'auto') as LoadOptions['device'],
    quant: (str(a, 'quant') ?? 'none') as Quant,
    groupSize: num(a, 'group-size'),
    kvDtype: kv as 'f32' | 'f16' | undefined,
    onProgress: progressBar('loading'),
  };
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

async function generate(a: ParsedArgs): Promise<void> {
  rejectUnknown(a, [...LOAD_OPTS, 'prompt', 'prompt-ids', 'chat', 'max-tokens', 'temperature', 'top-k', 'top-p', 'min-p', 'seed', 'stop', 'draft', 'spec-k'], 'kiln generate');
  const draftArg = str(a, 'draft');
  const specK = num(a, 'spec-k');
  if (specK !== undefined && (!Number.isInteger(specK) || specK < 1 || specK > 16)) throw new Error(`--spec-k must be an integer in [1, 16], got ${specK}`);
  if (specK !== undefined && !draftArg) throw new Error('--spec-k needs --draft DIR|ngram');
  const idsArg = str(a, 'prompt-ids');
  const ids = idsArg?.split(',').map((x) => {
    const n = Number(x.trim());
    if (!Number.isInteger(n) || n < 0) throw new Error(`--prompt-ids: '${x}' is not a token id`);
    return n;
  });
  const prompt = str(a, 'prompt') ?? a.positional.join(' ');
  if (!prompt && !ids) throw new Error('kiln generate: give a prompt with --prompt "..." (or token ids with --prompt-ids 1,2,3)');
  const model = str(a, 'model', DEFAULT_MODEL);
  const llm = await loadModel(model, loadOptions(a));
  let draft: LLM | null = null;
  let engine: Engine | null = null;
  try {
    if (!ids && !llm.tokenizer) throw new Error(`${llm.source} comes without a tokenizer.json: give the prompt as token ids with --prompt-ids`);
    if (draftArg) {
      // Speculative decoding: the draft model shares the target's device (or n-gram lookup).
      if (draftArg !== 'ngram') draft = await loadModel(draftArg, { ...loadOptions(a), device: llm.device, onProgress: progressBar('loading draft') });
      engine = createEngine(llm, { speculative: { drafter: draft ?? 'ngram', k: specK ?? 4 } });
    }
    process.stderr.write(`model ${llm.source} · ${llm.weights.format}${llm.weights.groupSize ? ` g${llm.weights.groupSize}` : ''} · ${llm.device.description}\n`);
    const stop = str(a, 'stop');
    const opts: GenerateOptions = {
      maxTokens: num(a, 'max-tokens', 128), temperature: num(a, 'temperature'), topK: num(a, 'top-k'),
      topP: num(a, 'top-p'), minP: num(a, 'min-p'), seed: num(a, 'seed'), stop: stop ? [stop] : undefined,
    };
    // Text when the model has a tokenizer; token ids otherwise.
    const show = (text: string, id: number) => (llm.tokenizer ? text : id >= 0 ? ` ${id}` : '');
    // --chat: the prompt is one user message, rendered by the model's chat template.
    const input = ids ?? (flag(a, 'chat') ? llm.chatIds([{ role: 'user', content: prompt }]) : prompt);
    process.stdout.write(typeof input === 'string' ? input : llm.tokenizer ? llm.decode(input) : input.join(' '));
    const h = engine ? engine.generate({ ...opts, prompt: input }) : llm.generate(input, opts);
    for await (const t of h) process.stdout.write(show(t.text, t.tokenId));
    process.stdout.write('\n');
    const r = await h.result();
    if (r.finishReason === 'error') throw new Error(r.error);
    const s = r.usage, tm = r.timings;
    const rate = (n: number, ms: number) => (ms > 0 ? (n / ms) * 1000 : 0).toFixed(1);
    process.stderr.write(`prefill ${s.promptTokens - s.cachedTokens} tokens at ${rate(s.promptTokens - s.cachedTokens, tm.prefillMs)} tok/s · `
      + `decode ${s.generatedTokens} tokens at ${rate(Math.max(0, s.generatedTokens - 1), tm.decodeMs)} tok/s · ${r.finishReason}\n`);
    if (r.speculation) {
      const sp = r.speculation;
      process.stderr.write(`speculation (${draftArg}): ${sp.accepted}/${sp.drafted} drafts accepted (${sp.drafted ? ((100 * sp.accepted) / sp.drafted).toFixed(0) : 0}%) in ${sp.steps} verify steps\n`);
    }
  } finally {
    await engine?.close();
    await draft?.close();
    await llm.close();
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
  const llm = await loadModel(str(a, 'model', DEFAULT_MODEL), loadOptions(a));
  try {
    const ids = llm.encode(text);
    const r = await windowedPerplexity(llm, ids, { window: num(a, 'window', 256), maxWindows: num(a, 'windows'), onWindow: progressBar('windows') });
    const quant = `${llm.weights.format}${llm.weights.groupSize ? ` g${llm.weights.groupSize}` : ''}`;
    console.log(`perplexity ${r.perplexity.toFixed(4)} over ${r.predictions} predictions (${r.windows} windows) · ${llm.source} · ${quant} · ${llm.device.kind} · ${(r.ms / 1000).toFixed(1)} s`);
  } finally {
    await llm.close();
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
  const opts = loadOptions(a);
  const llm = await loadModel(model, opts);
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
  }
}

async function main(argv: string[]): Promise<void> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === '--help' || cmd === 'help' || cmd === '-h') { process.stdout.write(HELP); return; }
  switch (cmd) {
    case 'generate': return generate(parseArgs(rest, ['chat']));
    case 'eval': return evalCmd(parseArgs(rest));
    case 'bench': return benchCommand(rest);
    case 'quantize': { await (await import('./quant/quantize.js')).quantizeCommand(parseArgs(rest, ['force', 'help', 'paper-scales', 'no-clip', 'module-loss']), progressBar('quantizing')); return; }
    case 'tune': return (await import('./tune.js')).tuneCommand(parseArgs(rest, ['force']));
    case 'serve': return (await import('./server/command.js')).serveCommand(rest);
    default: throw new Error(`kiln: unknown command '${cmd}'\n${HELP}`);
  }
}

main(process.argv.slice(2)).catch((e: unknown) => {
  process.stderr.write(`kiln: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});

