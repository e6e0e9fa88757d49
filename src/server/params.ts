// Request bodies of /v1/completions and /v1/chat/completions, checked field by field into one
// shape the handlers use. Every refusal is a 400 naming the OpenAI field (not the engine's name
// for it), so a client sees which of its parameters was wrong.
import type { ChatMessage } from '../io/tokenizer.js';
import { invalidParam } from './errors.js';

/** Sampling defaults when a request leaves a field out (the model's generation_config.json). */
export interface SamplingDefaults {
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
}

export interface ApiRequest {
  kind: 'completion' | 'chat';
  model?: string;
  /** Completions: text or token ids. */
  prompt?: string | number[];
  /** Chat: the conversation. */
  messages?: ChatMessage[];
  /** Undefined: the endpoint's default (16 for completions, the rest of the context for chat). */
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  seed?: number;
  stop: string[];
  /** Alternatives per token to return; −1: no logprobs at all. */
  logprobs: number;
  /** vLLM's extension: generate max_tokens whatever EOS says (benchmarks). */
  ignoreEos: boolean;
  stream: boolean;
  includeUsage: boolean;
}

type Body = Record<string, unknown>;

const present = (b: Body, k: string) => b[k] !== undefined && b[k] !== null;

function number(b: Body, k: string, check: (v: number) => boolean, range: string): number | undefined {
  if (!present(b, k)) return undefined;
  const v = b[k];
  if (typeof v !== 'number' || !Number.isFinite(v) || !check(v)) throw invalidParam(k, `${k} must be ${range}, got ${JSON.stringify(v)}`);
  return v;
}

function integer(b: Body, k: string, lo: number, hi: number): number | undefined {
  return number(b, k, (v) => Number.isInteger(v) && v >= lo && v <= hi, hi === Number.MAX_SAFE_INTEGER ? `an integer ≥ ${lo}` : `an integer in [${lo}, ${hi}]`);
}

function boolean(b: Body, k: string): boolean | undefined {
  if (!present(b, k)) return undefined;
  if (typeof b[k] !== 'boolean') throw invalidParam(k, `${k} must be true or false, got ${JSON.stringify(b[k])}`);
  return b[k] as boolean;
}

function stopList(b: Body): string[] {
  if (!present(b, 'stop')) return [];
  const v = b.stop;
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list) || list.some((s) => typeof s !== 'string')) throw invalidParam('stop', 'stop must be a string or a list of strings');
  if (list.length > 16) throw invalidParam('stop', `stop has ${list.length} strings; at most 16`);
  if (list.some((s) => s === '')) throw invalidParam('stop', 'stop strings must not be empty');
  return list as string[];
}

/** Fields we do not implement: refused when set to anything but their no-op value. */
function refuseUnsupported(b: Body): void {
  if (present(b, 'n') && b.n !== 1) throw invalidParam('n', `n = ${JSON.stringify(b.n)}: only n = 1 is supported`);
  if (present(b, 'best_of') && b.best_of !== 1) throw invalidParam('best_of', 'best_of is not supported (only 1)');
  if (b.echo === true) throw invalidParam('echo', 'echo is not supported');
  for (const k of ['presence_penalty', 'frequency_penalty']) {
    if (present(b, k) && b[k] !== 0) throw invalidParam(k, `${k} is not supported (only 0)`);
  }
  if (present(b, 'logit_bias') && (typeof b.logit_bias !== 'object' || Object.keys(b.logit_bias as object).length)) {
    throw invalidParam('logit_bias', 'logit_bias is not supported');
  }
  if (present(b, 'tools') && Array.isArray(b.tools) && b.tools.length) throw invalidParam('tools', 'tools are not supported');
  if (present(b, 'response_format')) {
    const rf = b.response_format as Body;
    if (typeof rf !== 'object' || rf.type !== 'text') throw invalidParam('response_format', 'response_format: only { "type": "text" } is supported');
  }
}

function promptField(b: Body): string | number[] {
  if (!present(b, 'prompt')) throw invalidParam('prompt', 'prompt is required', 'missing_required_parameter');
  let p = b.prompt;
  // A list holding one prompt (a string or a list of ids) is one prompt; more is a batch.
  if (Array.isArray(p) && p.length === 1 && (typeof p[0] === 'string' || Array.isArray(p[0]))) p = p[0];
  if (typeof p === 'string') {
    if (!p.length) throw invalidParam('prompt', 'prompt must not be empty');
    return p;
  }
  if (Array.isArray(p) && p.length && p.every((x) => typeof x === 'number')) {
    if (!p.every((x) => Number.isInteger(x) && x >= 0)) throw invalidParam('prompt', 'prompt token ids must be non-negative integers');
    return p as number[];
  }
  if (Array.isArray(p) && p.length > 1 && p.every((x) => typeof x === 'string' || Array.isArray(x))) {
    throw invalidParam('prompt', `prompt holds ${p.length} prompts: send one prompt per request`);
  }
  throw invalidParam('prompt', 'prompt must be a non-empty string or a non-empty list of token ids');
}

function messagesField(b: Body): ChatMessage[] {
  if (!present(b, 'messages')) throw invalidParam('messages', 'messages is required', 'missing_required_parameter');
  const m = b.messages;
  if (!Array.isArray(m) || !m.length) throw invalidParam('messages', 'messages must be a non-empty list');
  return m.map((x, i) => {
    if (typeof x !== 'object' || x === null) throw invalidParam(`messages[${i}]`, `messages[${i}] must be an object with role and content`);
    const { role, content } = x as Body;
    if (typeof role !== 'string' || !role) throw invalidParam(`messages[${i}].role`, `messages[${i}].role must be a non-empty string`);
    // Content parts: only text parts can be rendered by a text model's template.
    let text: string;
    if (typeof content === 'string') text = content;
    else if (Array.isArray(content)) {
      text = content.map((part, j) => {
        const p = part as Body;
        if (typeof p !== 'object' || p === null || p.type !== 'text' || typeof p.text !== 'string') {
          throw invalidParam(`messages[${i}].content[${j}]`, `messages[${i}].content[${j}] must be a text part ({ "type": "text", "text": ... })`);
        }
        return p.text;
      }).join('');
    } else if ((content === null || content === undefined) && role === 'assistant') text = '';
    else throw invalidParam(`messages[${i}].content`, `messages[${i}].content must be a string or a list of text parts`);
    return { role, content: text };
  });
}

/** Check a request body (already parsed JSON) for one endpoint. */
export function parseRequest(kind: 'completion' | 'chat', body: unknown, defaults: SamplingDefaults = {}): ApiRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw invalidParam('body', 'the request body must be a JSON object', 'invalid_body');
  }
  const b = body as Body;
  refuseUnsupported(b);
  if (present(b, 'model') && typeof b.model !== 'string') throw invalidParam('model', 'model must be a string');
  const maxKey = kind === 'chat' && present(b, 'max_completion_tokens') ? 'max_completion_tokens' : 'max_tokens';
  const stream = boolean(b, 'stream') ?? false;
  let includeUsage = false;
  if (present(b, 'stream_options')) {
    const so = b.stream_options as Body;
    if (!stream) throw invalidParam('stream_options', 'stream_options is only allowed with stream: true');
    if (typeof so !== 'object' || Array.isArray(so)) throw invalidParam('stream_options', 'stream_options must be an object');
    includeUsage = boolean(so, 'include_usage') ?? false;
  }
  let logprobs = -1;
  if (kind === 'completion') {
    const n = integer(b, 'logprobs', 0, 20);
    if (n !== undefined) logprobs = n;
  } else {
    const on = boolean(b, 'logprobs') ?? false;
    const top = integer(b, 'top_logprobs', 0, 20);
    if (top !== undefined && !on) throw invalidParam('top_logprobs', 'top_logprobs needs logprobs: true');
    if (on) logprobs = top ?? 0;
  }
  // vLLM's convention: top_k −1 means no top-k filter.
  const topK = integer(b, 'top_k', -1, Number.MAX_SAFE_INTEGER);
  return {
    kind,
    model: b.model as string | undefined,
    ...(kind === 'completion' ? { prompt: promptField(b) } : { messages: messagesField(b) }),
    maxTokens: integer(b, maxKey, 1, Number.MAX_SAFE_INTEGER),
    temperature: number(b, 'temperature', (v) => v >= 0 && v <= 2, 'a number in [0, 2]') ?? defaults.temperature,
    topP: number(b, 'top_p', (v) => v > 0 && v <= 1, 'a number in (0, 1]') ?? defaults.topP,
    topK: topK === undefined ? defaults.topK : Math.max(topK, 0),
    minP: number(b, 'min_p', (v) => v >= 0 && v <= 1, 'a number in [0, 1]') ?? defaults.minP,
    seed: integer(b, 'seed', 0, 0xffffffff),
    stop: stopList(b),
    logprobs,
    ignoreEos: boolean(b, 'ignore_eos') ?? false,
    stream,
    includeUsage,
  };
}
