// `kiln serve` through the official `openai` client against real servers on 127.0.0.1 (port 0):
// completions and chat, whole and streamed, match the engine's own output for the same seed;
// every refusal arrives as the client's typed error with the right status and field; 200
// concurrent streams of which a third hang up early all end cleanly with every KV block freed;
// SIGTERM on the `kiln serve` process lets an in-flight stream finish and exits 0.
import { type ChildProcess, spawn } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI, { APIError, APIUserAbortError, AuthenticationError, BadRequestError, NotFoundError, RateLimitError } from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Device } from '../src/backend/device.js';
import { createDevice } from '../src/backend/index.js';
import { type LLM, loadModel } from '../src/llm.js';
import { type KilnServer, startServer } from '../src/server/index.js';
import { brownDir } from './runtimeGolden.js';

const KEY = 'sk-kiln-test';
const ROOT = join(import.meta.dirname, '..');

/** brown-draft with a small chat template added (the brown models have none). */
function chatFixture(): string {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-serve-'));
  cpSync(brownDir('draft'), dir, { recursive: true });
  const file = join(dir, 'tokenizer_config.json');
  const cfg = JSON.parse(readFileSync(file, 'utf8'));
  cfg.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";
  writeFileSync(file, JSON.stringify(cfg));
  return dir;
}

const client = (s: KilnServer, apiKey = KEY) => new OpenAI({ baseURL: `${s.address.url}/v1`, apiKey, maxRetries: 0, timeout: 60_000 });

/** The engine's own text for a request (what the server must send). */
async function direct(llm: LLM, prompt: string | number[], opts: { maxTokens: number; temperature: number; seed?: number; stop?: string[] }): Promise<string> {
  let text = '';
  for await (const t of llm.generate(prompt, opts)) text += t.text;
  return text;
}

async function idle(s: KilnServer): Promise<void> {
  // Aborts take effect at the engine's next step boundary: give it a moment, bounded.
  for (let i = 0; i < 200; i++) {
    const st = s.engine.stats();
    if (!st.running && !st.waiting && !st.kvBlocks.used && !s.inflight) return;
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function expectApiError<T extends APIError>(p: Promise<unknown>, cls: new (...a: never[]) => T, status: number): Promise<T> {
  const e = await p.then(() => null, (x: unknown) => x);
  expect(e, `expected ${cls.name}`).toBeInstanceOf(cls);
  expect((e as APIError).status).toBe(status);
  return e as T;
}

describe('kiln serve (OpenAI client, cpu, brown-draft)', () => {
  let dev: Device;
  let llm: LLM;
  let plain: LLM;
  let server: KilnServer;
  let openai: OpenAI;
  const fixture = chatFixture();
  const prompt = 'The jury said that';

  beforeAll(async () => {
    dev = await createDevice('cpu');
    llm = await loadModel(fixture, { device: dev, engine: { maxSeqs: 1, kvBlocks: 64 } });
    plain = await loadModel(brownDir('draft'), { device: dev, engine: { maxSeqs: 1, kvBlocks: 8 } });
    server = await startServer({ llm, port: 0, apiKey: KEY, modelName: 'brown-chat', maxBodyBytes: 64 << 10, engine: { maxSeqs: 64, kvBlocks: 512 } });
    openai = client(server);
  });
  afterAll(async () => {
    await server?.close(0);
    await plain?.close();
    await llm?.close();
    await dev?.destroy();
    rmSync(fixture, { recursive: true, force: true });
  });

  it('completions: the engine\'s text for the same seed, usage, logprobs, stop strings', async () => {
    const want = await direct(llm, prompt, { maxTokens: 12, temperature: 0.8, seed: 7 });
    const r = await openai.completions.create({ model: 'brown-chat', prompt, max_tokens: 12, temperature: 0.8, seed: 7 });
    expect(r.object).toBe('text_completion');
    expect(r.choices[0]!.text).toBe(want);
    expect(r.choices[0]!.finish_reason).toBe('length');
    const ids = llm.encode(prompt);
    expect(r.usage).toMatchObject({ prompt_tokens: ids.length, completion_tokens: 12, total_tokens: ids.length + 12 });

    // Extensions top_k / min_p reach the sampler: top_k 1 is greedy whatever the temperature.
    const greedy = await direct(llm, prompt, { maxTokens: 10, temperature: 0 });
    const k1 = await openai.completions.create({ model: 'brown-chat', prompt, max_tokens: 10, temperature: 1.5, seed: 3, top_k: 1, min_p: 0.05 } as OpenAI.CompletionCreateParamsNonStreaming);
    expect(k1.choices[0]!.text).toBe(greedy);

    const lp = await openai.completions.create({ model: 'brown-chat', prompt, max_tokens: 6, temperature: 0, logprobs: 3 });
    const l = lp.choices[0]!.logprobs!;
    expect(l.tokens).toHaveLength(6);
    expect(l.token_logprobs!.every((x) => x <= 0)).toBe(true);
    expect(l.top_logprobs!.every((o) => Object.keys(o).length >= 1 && Object.keys(o).length <= 3)).toBe(true);
    // Greedy: each chosen token is the most likely one.
    l.top_logprobs!.forEach((o, i) => expect(Math.max(...Object.values(o))).toBeCloseTo(l.token_logprobs![i]!, 5));
    expect(l.tokens!.join('')).toBe(lp.choices[0]!.text);

    // A stop string cuts the text before it and ends with 'stop'.
    const cut = greedy.indexOf(' ', 3);
    const stop = greedy.slice(cut, cut + 3);
    const s = await openai.completions.create({ model: 'brown-chat', prompt, max_tokens: 10, temperature: 0, stop });
    expect(s.choices[0]!.text).toBe(greedy.slice(0, greedy.indexOf(stop)));
    expect(s.choices[0]!.finish_reason).toBe('stop');
    // ignore_eos (vLLM's extension): exactly max_tokens, EOS or not.
    const all = await openai.completions.create({ model: 'brown-chat', prompt, max_tokens: 20, temperature: 1, seed: 9, ignore_eos: true } as OpenAI.CompletionCreateParamsNonStreaming);
    expect(all.usage!.completion_tokens).toBe(20);
    // Token ids as the prompt.
    const byIds = await openai.completions.create({ model: 'brown-chat', prompt: ids, max_tokens: 10, temperature: 0 });
    expect(byIds.choices[0]!.text).toBe(greedy);
  });

  it('completions stream: the same text as one response, [DONE], usage in the last chunk when asked', async () => {
    const want = await direct(llm, prompt, { maxTokens: 16, temperature: 0.9, seed: 11 });
    const stream = await openai.completions.create({ model: 'brown-chat', prompt, max_tokens: 16, temperature: 0.9, seed: 11, stream: true, stream_options: { include_usage: true } });
    let text = '', finish: string | null = null, chunks = 0;
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const c of stream) {
      chunks++;
      if (c.choices[0]) { text += c.choices[0].text; finish = c.choices[0].finish_reason ?? finish; }
      if (c.usage) usage = c.usage;
    }
    expect(text).toBe(want);
    expect(chunks).toBeGreaterThan(2);
    expect(finish).toBe('length');
    expect(usage?.completion_tokens).toBe(16);
    // Raw: the stream ends with data: [DONE], and without include_usage no chunk carries usage.
    const raw = await fetch(`${server.address.url}/v1/completions`, { method: 'POST', headers: { Authorization: `Bearer ${KEY}` }, body: JSON.stringify({ prompt, max_tokens: 3, stream: true }) });
    expect(raw.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const body = await raw.text();
    expect(body.trimEnd().endsWith('data: [DONE]')).toBe(true);
    expect(body).not.toMatch(/"usage":\{/);
  });

  it('chat: rendered by the model\'s template, whole and streamed, with logprobs', async () => {
    const messages = [{ role: 'system' as const, content: 'Answer briefly.' }, { role: 'user' as const, content: 'Who said that?' }];
    let want = '';
    for await (const t of llm.chat(messages, { maxTokens: 10, temperature: 0.7, seed: 5 })) want += t.text;
    const r = await openai.chat.completions.create({ model: 'brown-chat', messages, max_tokens: 10, temperature: 0.7, seed: 5 });
    expect(r.object).toBe('chat.completion');
    expect(r.choices[0]!.message).toMatchObject({ role: 'assistant', content: want });
    expect(r.usage!.prompt_tokens).toBe(llm.chatIds(messages).length);
    const stream = await openai.chat.completions.create({ model: 'brown-chat', messages, max_tokens: 10, temperature: 0.7, seed: 5, stream: true, stream_options: { include_usage: true } });
    let text = '', role = '', usage = 0;
    for await (const c of stream) {
      const d = c.choices[0]?.delta;
      if (d?.role) role = d.role;
      text += d?.content ?? '';
      if (c.usage) usage = c.usage.completion_tokens;
    }
    expect(role).toBe('assistant');
    expect(text).toBe(want);
    expect(usage).toBe(r.usage!.completion_tokens);
    const lp = await openai.chat.completions.create({ model: 'brown-chat', messages, max_tokens: 4, temperature: 0, logprobs: true, top_logprobs: 2 });
    const content = lp.choices[0]!.logprobs!.content!;
    expect(content).toHaveLength(lp.usage!.completion_tokens);
    expect(content.every((c) => c.logprob <= 0 && c.top_logprobs.length === 2)).toBe(true);
  });

  it('refusals arrive as the client\'s typed errors, naming the field', async () => {
    const bad = (p: Record<string, unknown>) => openai.completions.create({ model: 'brown-chat', prompt, max_tokens: 4, ...p } as unknown as OpenAI.CompletionCreateParamsNonStreaming);
    for (const [field, value] of [['top_p', 3], ['temperature', -1], ['max_tokens', 0], ['seed', 1.5], ['stop', ['']], ['logprobs', 99], ['top_k', 'x'], ['min_p', 2], ['n', 2], ['ignore_eos', 'yes']] as const) {
      const e = await expectApiError(bad({ [field]: value }), BadRequestError, 400);
      expect(e.param, field).toBe(field);
      expect(e.message).toContain(field);
    }
    // Prompt longer than the context: 400 with the limit.
    const long = await expectApiError(bad({ prompt: 'the jury said '.repeat(300) }), BadRequestError, 400);
    expect(long.param).toBe('prompt');
    expect(long.code).toBe('context_length_exceeded');
    expect(long.message).toContain('512');
    const room = await expectApiError(bad({ max_tokens: 600 }), BadRequestError, 400);
    expect(room.param).toBe('max_tokens');
    // Body over the limit (64 KiB here): 413.
    await expectApiError(bad({ prompt: 'x'.repeat(100 << 10) }), APIError, 413);
    // Another model's name: 404.
    await expectApiError(openai.completions.create({ model: 'gpt-4', prompt, max_tokens: 2 }), NotFoundError, 404);
    // Missing and wrong bearer tokens: 401; /health stays open.
    await expectApiError(client(server, 'sk-wrong').models.list(), AuthenticationError, 401);
    const noAuth = await fetch(`${server.address.url}/v1/models`);
    expect(noAuth.status).toBe(401);
    expect(((await noAuth.json()) as { error: { code: string } }).error.code).toBe('invalid_api_key');
    const health = await fetch(`${server.address.url}/health`);
    expect(health.status).toBe(200);
    // Not JSON: 400 in the error shape.
    const nj = await fetch(`${server.address.url}/v1/completions`, { method: 'POST', headers: { Authorization: `Bearer ${KEY}` }, body: '{"prompt":' });
    expect(nj.status).toBe(400);
    expect(((await nj.json()) as { error: { code: string } }).error.code).toBe('invalid_json');
    // Models lists the one served.
    const models = await openai.models.list();
    expect(models.data.map((m) => m.id)).toEqual(['brown-chat']);
  });

  it('a model without a chat template: chat is a 400 saying so', async () => {
    const s = await startServer({ llm: plain, port: 0, engine: { maxSeqs: 4, kvBlocks: 32 } });
    try {
      const e = await expectApiError(client(s).chat.completions.create({ model: 'brown-draft', messages: [{ role: 'user', content: 'hi' }] }), BadRequestError, 400);
      expect(e.param).toBe('messages');
      expect(e.message).toMatch(/no chat template/);
      // Completions still work there.
      const r = await client(s).completions.create({ model: 'brown-draft', prompt, max_tokens: 3 });
      expect(r.usage!.completion_tokens).toBeGreaterThan(0);
    } finally {
      await s.close(0);
    }
  });

  it('queue full: 429 with Retry-After', async () => {
    const s = await startServer({ llm, port: 0, modelName: 'brown-chat', retryAfterS: 2, engine: { maxSeqs: 1, maxWaiting: 1, kvBlocks: 64 } });
    const c = client(s);
    try {
      const ac = new AbortController();
      // One running (it has streamed a token), one waiting: the next is refused.
      // ignore_eos: an early EOS would free the slot and let the waiting one run.
      const body = { model: 'brown-chat', prompt, max_tokens: 400, stream: true, ignore_eos: true } as const;
      const running = await c.completions.create(body as typeof body & { stream: true }, { signal: ac.signal });
      const it = running[Symbol.asyncIterator]();
      await it.next();
      const waiting = c.completions.create({ model: 'brown-chat', prompt, max_tokens: 2 });
      for (let i = 0; i < 200 && s.engine.stats().waiting < 1; i++) await new Promise((r) => setTimeout(r, 10));
      expect(s.engine.stats().waiting).toBe(1);
      const e = await expectApiError(c.completions.create({ model: 'brown-chat', prompt, max_tokens: 2 }), RateLimitError, 429);
      expect(e.headers?.get('retry-after')).toBe('2');
      ac.abort();
      expect((await waiting).choices[0]!.finish_reason).toBe('length');
      await idle(s);
      expect(s.engine.stats().kvBlocks.used).toBe(0);
    } finally {
      await s.close(0);
    }
  });

  it('200 concurrent streams, a third hanging up early: the rest complete, every block is freed, metrics count them', async () => {
    const s = await startServer({ llm, port: 0, modelName: 'brown-chat', engine: { maxSeqs: 64, kvBlocks: 1024 } });
    const c = client(s);
    try {
      const N = 200;
      const outcome = await Promise.all(Array.from({ length: N }, async (_, i) => {
        const ac = new AbortController();
        const hangUp = i % 3 === 0;
        try {
          const stream = await c.completions.create({ model: 'brown-chat', prompt: `${prompt} ${i}`, max_tokens: hangUp ? 64 : 6, temperature: 0.8, seed: i, stream: true }, { signal: ac.signal });
          let finish: string | null = null, n = 0;
          for await (const ch of stream) {
            if (ch.choices[0]?.text) n++;
            finish = ch.choices[0]?.finish_reason ?? finish;
            if (hangUp && n === 2) ac.abort();
          }
          // The client ends an aborted stream's iteration quietly (or throws APIUserAbortError, below).
          return { hangUp, finish, aborted: ac.signal.aborted };
        } catch (e) {
          if (e instanceof APIUserAbortError && hangUp) return { hangUp, finish: null, aborted: true };
          throw e;
        }
      }));
      for (const o of outcome) {
        if (o.hangUp) expect(o.aborted || o.finish !== null).toBe(true);
        else expect(['length', 'stop']).toContain(o.finish); // 'stop': EOS sampled
      }
      expect(outcome.filter((o) => o.aborted).length).toBeGreaterThan(50);
      await idle(s);
      const st = s.engine.stats();
      expect(st).toMatchObject({ running: 0, waiting: 0 });
      expect(st.kvBlocks.used).toBe(0);
      expect(st.requests.finished + st.requests.aborted).toBe(N);
      expect(st.requests.aborted).toBeGreaterThan(50);
      const metrics = await (await fetch(`${s.address.url}/metrics`)).text();
      expect(metrics).toMatch(/kiln_requests_total\{endpoint="completion",status="200",model="brown-chat"\} (\d+)/);
      const ok = Number(/kiln_requests_total\{endpoint="completion",status="200"[^}]*\} (\d+)/.exec(metrics)![1]);
      const gone = Number(/kiln_requests_total\{endpoint="completion",status="499"[^}]*\} (\d+)/.exec(metrics)?.[1] ?? 0);
      expect(ok + gone).toBe(N);
      expect(metrics).toMatch(/kiln_kv_blocks_used\{[^}]*\} 0\n/);
      expect(metrics).toMatch(/kiln_time_to_first_token_seconds_count\{[^}]*\} [1-9]/);
      for (const m of ['kiln_prompt_tokens_total', 'kiln_generation_tokens_total', 'kiln_request_latency_seconds_bucket', 'kiln_requests_running', 'kiln_requests_waiting', 'kiln_prefix_cache_hit_rate', 'kiln_spec_acceptance_rate']) {
        expect(metrics).toContain(m);
      }
    } finally {
      await s.close(0);
    }
  });

  it('close(): no new requests; an in-flight stream past the grace period ends with an error event', async () => {
    const s = await startServer({ llm, port: 0, modelName: 'brown-chat', engine: { maxSeqs: 4, kvBlocks: 64 } });
    const c = client(s);
    const url = s.address.url;
    // ignore_eos and a 10 ms grace, so the stream cannot finish on its own first: with a 100 ms
    // grace a fast cpu run (fused fma) once completed its tokens inside the grace (CI, 2026-12-07).
    const body = { model: 'brown-chat', prompt, max_tokens: 480, stream: true, ignore_eos: true } as const;
    const stream = await c.completions.create(body as typeof body & { stream: true });
    const it = stream[Symbol.asyncIterator]();
    await it.next();
    const closing = s.close(10);
    const health = await fetch(`${url}/health`).then((r) => r.status, () => 'refused');
    expect(health === 503 || health === 'refused').toBe(true);
    const err = await (async () => { for (;;) { const x = await it.next(); if (x.done) return null; } })().then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(APIError);
    expect(String((err as Error).message)).toMatch(/shut down/);
    await closing;
    expect(s.engine.isClosed).toBe(true);
  });
});

describe('kiln serve process', () => {
  it('SIGTERM: the in-flight stream finishes, new connections are refused, exit code 0', async () => {
    const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'serve', '--model', brownDir('draft'), '--device', 'cpu', '--port', '0', '--quiet', '--grace', '20'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      const url = await new Promise<string>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no 'listening on' within 60 s:\n${err}`)), 60_000);
        const poll = setInterval(() => {
          const m = /listening on (http:\/\/\S+)/.exec(err);
          if (m) { clearInterval(poll); clearTimeout(t); resolve(m[1]!); }
        }, 50);
        void exited.then(() => { clearInterval(poll); clearTimeout(t); reject(new Error(`kiln serve exited:\n${err}`)); });
      });
      const c = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none', maxRetries: 0 });
      const stream = await c.completions.create({ model: 'brown-draft', prompt: 'The jury said', max_tokens: 40, temperature: 0.8, seed: 1, stream: true });
      const it = stream[Symbol.asyncIterator]();
      await it.next();
      child.kill('SIGTERM');
      let finish: string | null = null;
      for (;;) {
        const x = await it.next();
        if (x.done) break;
        finish = x.value.choices[0]?.finish_reason ?? finish;
      }
      expect(finish).toBe('length');
      expect(await exited).toBe(0);
      expect(err).toMatch(/SIGTERM/);
      await expect(fetch(`${url}/health`)).rejects.toThrow();
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
});
