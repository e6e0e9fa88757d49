// The playground page's script: a prompt, sampling controls and streamed output, generated either
// by the server that served the page (its OpenAI API, streamed) or in this page (kiln/browser on
// WebGPU, or the cpu device). For automated use, URL parameters fill the controls and autorun=1
// runs once: the completion (without the prompt) goes into #output, which then gets data-done="1",
// or data-error="message" on failure.
import { cpuWorkersAvailable, createEngine, type LLM, loadModel } from '../browser/index.js';

// The slice of the DOM used here (the project's tsconfig has no DOM types).
interface El {
  value: string;
  textContent: string | null;
  disabled: boolean;
  setAttribute(name: string, value: string): void;
  removeAttribute(name: string): void;
  addEventListener(type: string, fn: () => void): void;
  append(...nodes: (El | string)[]): void;
  className: string;
}
interface Doc {
  getElementById(id: string): El | null;
  createElement(tag: string): El;
}
// The one cast here: the page's globals, typed by the slices above (the project's type libraries
// have no DOM, and the page uses a handful of its members).
const g = globalThis as unknown as { document: Doc; location: { search: string; href: string }; kilnPlayground?: unknown };
const doc = g.document;
const $ = (id: string): El => {
  const e = doc.getElementById(id);
  if (!e) throw new Error(`the page has no #${id}`);
  return e;
};

interface Settings {
  prompt: string;
  mode: 'server' | 'browser';
  device: 'auto' | 'webgpu' | 'cpu';
  model: string;
  maxTokens: number;
  temperature: number;
  topP: number;
  topK: number;
  seed: number | undefined;
}

const FIELDS = ['prompt', 'mode', 'device', 'model', 'maxTokens', 'temperature', 'topP', 'topK', 'seed'] as const;

function numberField(name: string, raw: string, min: number, integer: boolean): number {
  const v = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(v) || v < min || (integer && !Number.isInteger(v))) {
    throw new Error(`${name} must be ${integer ? 'an integer' : 'a number'} ≥ ${min}, not '${raw}'`);
  }
  return v;
}

function readSettings(): Settings {
  const mode = $('mode').value, device = $('device').value;
  if (mode !== 'server' && mode !== 'browser') throw new Error(`mode must be server or browser, not '${mode}'`);
  if (device !== 'auto' && device !== 'webgpu' && device !== 'cpu') throw new Error(`device must be auto, webgpu or cpu, not '${device}'`);
  const seed = $('seed').value.trim();
  return {
    prompt: $('prompt').value, mode, device, model: $('model').value.trim() || 'model/',
    maxTokens: numberField('maxTokens', $('maxTokens').value, 1, true),
    temperature: numberField('temperature', $('temperature').value, 0, false),
    topP: numberField('topP', $('topP').value, 0, false),
    topK: numberField('topK', $('topK').value, 0, true),
    seed: seed === '' ? undefined : numberField('seed', seed, 0, true),
  };
}

const output = $('output'), status = $('status'), errorBox = $('error');
let stopRequested: AbortController | null = null;

/** Tokens per second over the decode phase (from the first token on). */
class Meter {
  private first = 0;
  tokens = 0;
  constructor(private readonly started = performance.now()) {}
  token(n = 1): void {
    if (this.tokens === 0) this.first = performance.now();
    this.tokens += n;
  }
  text(): string {
    const now = performance.now();
    const decode = this.tokens > 1 ? ((this.tokens - 1) / ((now - this.first) / 1000)).toFixed(1) : '–';
    return `${this.tokens} tokens, ${decode} tokens/s decoding, first token after ${((this.first || now) - this.started).toFixed(0)} ms`;
  }
}

// ---- in this browser ------------------------------------------------------------------------
let loaded: { key: string; llm: LLM } | null = null;

async function browserModel(s: Settings): Promise<LLM> {
  const key = `${s.model}|${s.device}`;
  if (loaded?.key === key) return loaded.llm;
  if (loaded) { await loaded.llm.close(); loaded = null; }
  const llm = await loadModel(s.model, {
    device: s.device,
    onDownload: (p) => { status.textContent = `downloading ${p.file}: ${(p.loaded / 2 ** 20).toFixed(1)}${p.total ? ` of ${(p.total / 2 ** 20).toFixed(1)}` : ''} MiB`; },
    onUpload: (done, total) => { status.textContent = `uploading weights: ${done} of ${total} tensors`; },
  });
  loaded = { key, llm };
  // For scripts and tests driving the page: the loaded model, and engines over it.
  g.kilnPlayground = { llm, createEngine };
  return llm;
}

async function runInBrowser(s: Settings, ac: AbortController): Promise<void> {
  const llm = await browserModel(s);
  status.textContent = `generating on ${llm.device.description}${llm.device.kind === 'cpu' ? (cpuWorkersAvailable() ? '' : ' (not cross-origin isolated: main thread)') : ''}…`;
  const meter = new Meter();
  const ids: number[] = [];
  const h = llm.generate(s.prompt, {
    maxTokens: s.maxTokens, temperature: s.temperature, topP: s.topP, topK: s.topK, signal: ac.signal,
    ...(s.seed !== undefined ? { seed: s.seed } : {}),
  });
  let text = '';
  for await (const t of h) {
    text += t.text;
    output.textContent = text;
    if (t.tokenId < 0) continue; // held-back text, not a token
    ids.push(t.tokenId);
    meter.token();
    status.textContent = `${llm.device.description}: ${meter.text()}`;
  }
  const r = await h.result();
  if (r.finishReason === 'error') throw new Error(r.error ?? 'generation failed');
  output.setAttribute('data-ids', ids.join(','));
  status.textContent = `${llm.device.description}: ${meter.text()} (${r.finishReason})`;
}

// ---- through the server's OpenAI API --------------------------------------------------------
async function runOnServer(s: Settings, ac: AbortController): Promise<void> {
  const base = new URL('./', g.location.href);
  const meter = new Meter();
  const res = await fetch(new URL('v1/completions', base), {
    method: 'POST', signal: ac.signal, headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({
      prompt: s.prompt, max_tokens: s.maxTokens, temperature: s.temperature, top_p: s.topP, stream: true, stream_options: { include_usage: true },
      ...(s.topK > 0 ? { top_k: s.topK } : {}), ...(s.seed !== undefined ? { seed: s.seed } : {}),
    }),
  });
  if (!res.ok) {
    let msg = `HTTP ${res.status}`;
    try { msg = ((await res.json()) as { error?: { message?: string } }).error?.message ?? msg; } catch { /* not JSON */ }
    throw new Error(`the server answered ${res.status}: ${msg}`);
  }
  if (!res.body) throw new Error('the server sent no body');
  status.textContent = 'generating on the server…';
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '', text = '', finish = '';
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buffer += value;
    let end: number;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split('\n')) {
        if (!line.startsWith('data:')) continue;
        const data = line.slice(5).trim();
        if (data === '[DONE]') continue;
        const chunk = JSON.parse(data) as { choices?: { text?: string; finish_reason?: string | null }[]; error?: { message?: string }; usage?: { completion_tokens?: number } };
        if (chunk.error) throw new Error(chunk.error.message ?? 'the server reported an error');
        // The last chunk counts the tokens (a chunk of text may hold several, or wait for more).
        if (typeof chunk.usage?.completion_tokens === 'number') meter.tokens = chunk.usage.completion_tokens;
        const c = chunk.choices?.[0];
        if (c?.text) { text += c.text; meter.token(); }
        if (c?.finish_reason) finish = c.finish_reason;
      }
      output.textContent = text;
      status.textContent = `server: ${meter.text()}`;
    }
  }
  status.textContent = `server: ${meter.text()}${finish ? ` (${finish})` : ''}`;
}

// ---- the controls ---------------------------------------------------------------------------
async function run(): Promise<void> {
  output.removeAttribute('data-done');
  output.removeAttribute('data-error');
  output.removeAttribute('data-ids');
  output.textContent = '';
  errorBox.textContent = '';
  const ac = new AbortController();
  stopRequested = ac;
  $('run').disabled = true;
  $('stop').disabled = false;
  try {
    const s = readSettings();
    await (s.mode === 'browser' ? runInBrowser(s, ac) : runOnServer(s, ac));
    output.setAttribute('data-done', '1');
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    errorBox.textContent = msg;
    status.textContent = 'failed';
    output.setAttribute('data-error', msg);
  } finally {
    stopRequested = null;
    $('run').disabled = false;
    $('stop').disabled = true;
  }
}

function applyUrlParams(): URLSearchParams {
  const params = new URLSearchParams(g.location.search);
  for (const f of FIELDS) {
    const v = params.get(f);
    if (v !== null) $(f).value = v;
  }
  return params;
}

/** A static host (kiln build-playground) has no API: default to running in this browser there. */
async function defaultMode(): Promise<void> {
  try {
    const r = await fetch(new URL('health', new URL('./', g.location.href)));
    if (r.ok) return;
  } catch { /* no server */ }
  $('mode').value = 'browser';
  status.textContent = 'no Kiln server behind this page: the model runs in this browser';
}

$('run').addEventListener('click', () => { void run(); });
$('stop').addEventListener('click', () => stopRequested?.abort());
const params = applyUrlParams();
if (params.get('autorun') === '1') void run();
else if (params.get('mode') === null) void defaultMode();
