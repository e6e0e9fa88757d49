// `kiln serve`: load a model (and a drafter), start the OpenAI-compatible server, shut down
// gracefully on SIGINT/SIGTERM (stop accepting, let in-flight requests finish within --grace
// seconds, abort the rest, exit 0).
import type { BackendKind } from '../backend/device.js';
import { createEngine, type Engine, type EngineOptions } from '../engine.js';
import { DEFAULT_MODEL, type LLM, loadModel, type Quant } from '../llm.js';
import { type ParsedArgs, parseArgs, rejectUnknown, str } from '../util/args.js';
import { readGenerationDefaults } from '../util/generationConfig.js';
import { chooseDevice } from '../util/autoDevice.js';
import { startServer } from './server.js';

export const SERVE_HELP = `kiln serve — an OpenAI-compatible HTTP server (completions, chat, SSE streaming, metrics)

  kiln serve [--model DIR] [options]

  model
    -m, --model DIR          model directory or llama2.c .bin (default: models/brown-target)
    --device D               auto | cpu | webgpu | cuda (default auto)
    --quant Q                none | f32 | f16 | int4-rtn (default none: the checkpoint's precision; AWQ stays INT4)
    --group-size G           INT4 group size for int4-rtn (default 128)
    --kv f32|f16             KV cache precision (default: f32 on cpu)
    --draft DIR|ngram        speculative decoding: a draft model with the same tokenizer, or n-gram prompt lookup
    --spec-k K               drafts per step, 1–16 (default 4)
    --served-model-name N    the model id clients send and /v1/models lists (default: the directory's name)
  engine
    --max-seqs N             sequences per step (default 64; 8 on cpu and llvmpipe)
    --max-batched-tokens N   tokens per step (default 256)
    --max-waiting N          queued requests at most; one more gets 429 (default unbounded)
    --kv-blocks N            KV pool in blocks of 16 tokens (default: room for max-seqs full contexts, capped by memory)
    --scheduling S           continuous | static (default continuous); static runs fixed batches to completion
    --static-batch-size N    batch size of static scheduling (default 8)
    --no-prefix-caching      do not share KV blocks of identical prompt prefixes
  http
    --host H                 address to bind (default 127.0.0.1)
    --port P                 port (default 8000; 0 picks a free one)
    --api-key KEY            require Authorization: Bearer KEY on every route but /health (or KILN_API_KEY)
    --max-body BYTES         largest request body; larger gets 413 (default 1048576)
    --grace S                seconds in-flight requests get to finish on SIGINT/SIGTERM (default 10)
    --quiet                  no line per request

  Requests that leave temperature/top_p/top_k out get the model's generation_config.json
  defaults, as Hugging Face does (do_sample false or absent: greedy).
  Endpoints: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics;
  GET / is the playground page (server or in-browser generation), GET /model/<file> the model's files for it.
`;

const OPTS = ['model', 'device', 'quant', 'group-size', 'kv', 'draft', 'spec-k', 'served-model-name', 'max-seqs', 'max-batched-tokens',
  'max-waiting', 'kv-blocks', 'scheduling', 'static-batch-size', 'no-prefix-caching', 'host', 'port', 'api-key', 'max-body', 'grace', 'quiet', 'help'];

function int(a: ParsedArgs, name: string, lo: number, hi = Number.MAX_SAFE_INTEGER): number | undefined {
  const v = str(a, name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!/^\s*\d+\s*$/.test(v) || !Number.isInteger(n) || n < lo || n > hi) {
    throw new Error(`--${name} must be an integer in [${lo}, ${hi === Number.MAX_SAFE_INTEGER ? '∞' : hi}], got '${v}'`);
  }
  return n;
}

function oneOf<T extends string>(a: ParsedArgs, name: string, allowed: readonly T[]): T | undefined {
  const v = str(a, name);
  if (v !== undefined && !allowed.includes(v as T)) throw new Error(`--${name} must be one of ${allowed.join(', ')}, got '${v}'`);
  return v as T | undefined;
}

/** Options checked before anything loads: a bad flag fails in milliseconds, naming itself. */
function parseServe(argv: string[]) {
  const a = parseArgs(argv.map((x) => (x === '-m' ? '--model' : x === '-h' ? '--help' : x)), ['no-prefix-caching', 'quiet', 'help']);
  if (a.options.has('help')) return null;
  rejectUnknown(a, OPTS, 'kiln serve');
  if (a.positional.length) throw new Error(`kiln serve: unexpected argument '${a.positional[0]}' (options start with --)`);
  const draft = str(a, 'draft');
  const specK = int(a, 'spec-k', 1, 16);
  if (specK !== undefined && !draft) throw new Error('--spec-k needs --draft DIR|ngram');
  const apiKey = str(a, 'api-key') ?? process.env.KILN_API_KEY;
  if (apiKey !== undefined && !apiKey.trim()) throw new Error('--api-key must not be empty');
  const grace = str(a, 'grace');
  if (grace !== undefined && !(Number(grace) >= 0)) throw new Error(`--grace must be a number of seconds ≥ 0, got '${grace}'`);
  const engine: EngineOptions = {
    maxSeqs: int(a, 'max-seqs', 1), maxBatchedTokens: int(a, 'max-batched-tokens', 1), maxWaiting: int(a, 'max-waiting', 0),
    kvBlocks: int(a, 'kv-blocks', 1), scheduling: oneOf(a, 'scheduling', ['continuous', 'static'] as const),
    staticBatchSize: int(a, 'static-batch-size', 1), ...(a.options.has('no-prefix-caching') ? { prefixCaching: false } : {}),
  };
  for (const k of Object.keys(engine) as (keyof EngineOptions)[]) if (engine[k] === undefined) delete engine[k];
  return {
    model: str(a, 'model') ?? DEFAULT_MODEL,
    device: (oneOf(a, 'device', ['auto', 'cpu', 'webgpu', 'cuda'] as const) ?? 'auto') as BackendKind | 'auto',
    quant: (oneOf(a, 'quant', ['none', 'f32', 'f16', 'int4-rtn'] as const) ?? 'none') as Quant,
    groupSize: int(a, 'group-size', 1),
    kvDtype: oneOf(a, 'kv', ['f32', 'f16'] as const),
    draft, specK: specK ?? 4, engine,
    name: str(a, 'served-model-name'),
    host: str(a, 'host') ?? '127.0.0.1',
    port: int(a, 'port', 0, 65535) ?? 8000,
    apiKey, maxBody: int(a, 'max-body', 1), graceMs: grace === undefined ? 10_000 : Number(grace) * 1000,
    quiet: a.options.has('quiet'),
  };
}

export async function serveCommand(argv: string[]): Promise<void> {
  const o = parseServe(argv);
  if (!o) { process.stdout.write(SERVE_HELP); return; }
  const t0 = performance.now();
  // The model's own engine gets the server's options: without speculation it is the one served.
  const { device, why } = await chooseDevice(o.device);
  let llm: LLM;
  try {
    llm = await loadModel(o.model, { device, quant: o.quant, groupSize: o.groupSize, kvDtype: o.kvDtype, engine: o.engine });
  } catch (e) {
    await device.destroy();
    throw e;
  }
  let draft: LLM | null = null;
  let engine: Engine;
  try {
    if (o.draft && o.draft !== 'ngram') draft = await loadModel(o.draft, { device, quant: o.quant, groupSize: o.groupSize, kvDtype: o.kvDtype, engine: { maxSeqs: 1, kvBlocks: 1 } });
    if (o.draft) {
      // Speculation needs an engine made with its drafter: free the unused pool of the model's own first.
      await llm.engine.close();
      engine = createEngine(llm, { speculative: { drafter: draft ?? 'ngram', k: o.specK } });
    } else engine = llm.engine;
  } catch (e) {
    await draft?.close();
    await llm.close();
    await device.destroy();
    throw e;
  }
  const defaults = readGenerationDefaults(o.model);
  const log = o.quiet ? undefined : (line: string) => process.stderr.write(`${new Date().toISOString()} ${line}\n`);
  const server = await startServer({
    llm, engine, host: o.host, port: o.port, apiKey: o.apiKey, modelName: o.name, maxBodyBytes: o.maxBody,
    defaults: { temperature: defaults.temperature, topP: defaults.topP, topK: defaults.topK }, shutdownGraceMs: o.graceMs, log,
  }).catch(async (e) => {
    await engine.close();
    await draft?.close();
    await llm.close();
    await device.destroy();
    throw e;
  });
  const eo = engine.options;
  process.stderr.write(`kiln serve: ${server.modelName} (${llm.source}) · ${llm.weights.format}${llm.weights.groupSize ? ` g${llm.weights.groupSize}` : ''} · ${llm.device.description} (${why})\n`
    + `  engine: ${eo.scheduling}${eo.scheduling === 'static' ? ` (batches of ${eo.staticBatchSize})` : ''}, max ${eo.maxSeqs} seqs × ${eo.maxBatchedTokens} tokens per step, ${eo.kvBlocks} KV blocks${o.draft ? `, speculative ${o.draft} k=${o.specK}` : ''}${o.apiKey ? ', API key required' : ''}\n`
    + `  defaults: ${defaults.source ? `${defaults.temperature === 0 ? 'greedy' : `temperature ${defaults.temperature}`} (${defaults.source})` : 'temperature 0.8 (no generation_config.json)'}\n`
    + `  ready in ${((performance.now() - t0) / 1000).toFixed(1)} s: listening on ${server.address.url} (playground: ${server.address.url}/)\n`);
  await new Promise<void>((resolve) => {
    let stopping = false;
    const stop = (sig: string) => {
      if (stopping) { process.stderr.write(`kiln serve: ${sig} again: exiting now\n`); process.exit(1); }
      stopping = true;
      process.stderr.write(`kiln serve: ${sig}: no new requests; ${server.inflight} in flight get ${o.graceMs / 1000} s to finish\n`);
      void (async () => {
        await server.close(o.graceMs);
        await engine.close();
        await draft?.close();
        await llm.close();
        await device.destroy();
        process.stderr.write('kiln serve: stopped\n');
        resolve();
      })();
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
  // Native handles (Dawn's instance after --device auto probed it) can keep Node's loop alive after
  // every resource is closed: the server is done, so exit with success.
  process.exit(0);
}
