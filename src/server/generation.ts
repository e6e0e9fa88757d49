// The two generation endpoints, /v1/completions and /v1/chat/completions: a checked request
// becomes one engine request; its tokens go out as one JSON response or as server-sent events.
// A client that goes away aborts its engine request (through its AbortSignal), which frees its
// KV blocks at the engine's next step boundary.
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { AdmissionError, type Engine, EngineError, QueueFullError, type RequestHandle, type RequestResult } from '../engine.js';
import type { LLM } from '../llm.js';
import { ApiError, invalidParam } from './errors.js';
import type { ServerMetrics } from './metrics.js';
import { chunkBody, finishReason, type Kind, Logprobs, responseBody, usageChunk } from './openai.js';
import { type ApiRequest, parseRequest, type SamplingDefaults } from './params.js';

/** What a generation handler needs from its server. */
export interface GenerationContext {
  llm: LLM;
  engine: Engine;
  modelName: string;
  metrics: ServerMetrics;
  defaults: SamplingDefaults;
  /** Seconds a client is told to wait after a 429. */
  retryAfterS: number;
  /** In-flight requests' controllers: the server aborts them when its shutdown grace runs out. */
  inflight: Set<AbortController>;
  /** Why in-flight requests were aborted by the server (shutdown), if they were. */
  abortReason(): string | null;
}

// The engine's names for request fields, and OpenAI's: an engine refusal names the client's field.
const ENGINE_FIELDS: [RegExp, string][] = [
  [/^maxTokens\b/, 'max_tokens'], [/^temperature\b/, 'temperature'], [/^topP\b/, 'top_p'], [/^topK\b/, 'top_k'],
  [/^minP\b/, 'min_p'], [/^seed\b/, 'seed'], [/^stop\b|stop strings/, 'stop'], [/^logprobs\b/, 'logprobs'], [/prompt/, 'prompt'],
];

function engineError(e: unknown, kind: Kind): ApiError {
  if (e instanceof QueueFullError) return new ApiError(429, `the server is at capacity: ${e.message}`, 'rate_limit_error', null, 'queue_full');
  if (e instanceof AdmissionError) return invalidParam('max_tokens', `the request cannot fit the KV cache: ${e.message}`, 'context_length_exceeded');
  if (e instanceof EngineError) {
    const msg = e.message;
    if (/closed/.test(msg)) return new ApiError(503, 'the server is shutting down', 'server_error', null, 'shutting_down');
    let param = ENGINE_FIELDS.find(([re]) => re.test(msg))?.[1] ?? null;
    if (param === 'prompt' && kind === 'chat') param = 'messages';
    return new ApiError(400, msg, 'invalid_request_error', param, 'invalid_value');
  }
  throw e;
}

/** The prompt's token ids, checked against the context; and max_tokens resolved. */
function promptIds(ctx: GenerationContext, p: ApiRequest): { ids: number[]; maxTokens: number } {
  const { llm } = ctx;
  let ids: number[];
  if (p.kind === 'chat') {
    try {
      ids = llm.chatIds(p.messages!);
    } catch (e) {
      if (e instanceof EngineError && /chat_template|no tokenizer/.test(e.message)) {
        throw invalidParam('messages', `model ${ctx.modelName} has no chat template, so /v1/chat/completions cannot render messages: use /v1/completions with a prompt`, 'no_chat_template');
      }
      throw invalidParam('messages', `the chat template failed on these messages: ${(e as Error).message}`);
    }
  } else if (typeof p.prompt === 'string') {
    if (!llm.tokenizer) throw invalidParam('prompt', `model ${ctx.modelName} has no tokenizer: send the prompt as a list of token ids`);
    ids = llm.tokenizer.encode(p.prompt);
  } else {
    ids = p.prompt!;
    const V = llm.spec.vocabSize;
    const bad = ids.findIndex((t) => t >= V);
    if (bad >= 0) throw invalidParam('prompt', `prompt token ${bad} = ${ids[bad]} is outside the vocabulary (0..${V - 1})`);
  }
  const ctxLen = llm.spec.maxPositions;
  const field = p.kind === 'chat' ? 'messages' : 'prompt';
  if (ids.length >= ctxLen) {
    throw invalidParam(field, `this model's maximum context length is ${ctxLen} tokens; the ${field} has ${ids.length} tokens, leaving no room to generate`, 'context_length_exceeded');
  }
  if (p.maxTokens !== undefined && ids.length + p.maxTokens > ctxLen) {
    throw invalidParam('max_tokens', `this model's maximum context length is ${ctxLen} tokens; the ${field} has ${ids.length} tokens and max_tokens asks for ${p.maxTokens} more`, 'context_length_exceeded');
  }
  // OpenAI's defaults: 16 for completions, the rest of the context for chat.
  const maxTokens = p.maxTokens ?? (p.kind === 'chat' ? ctxLen - ids.length : Math.min(16, ctxLen - ids.length));
  return { ids, maxTokens };
}

const sse = (res: ServerResponse, data: unknown) => res.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);

/**
 * Serve one generation request. Returns the status recorded for it (499: the client went away).
 * Errors before any byte is sent are thrown as ApiError for the server to answer.
 */
export async function handleGeneration(ctx: GenerationContext, kind: Kind, body: unknown, req: IncomingMessage, res: ServerResponse, t0: number): Promise<number> {
  const p = parseRequest(kind, body, ctx.defaults);
  if (p.model !== undefined && p.model !== ctx.modelName) {
    throw new ApiError(404, `the model '${p.model}' does not exist: this server serves '${ctx.modelName}'`, 'invalid_request_error', 'model', 'model_not_found');
  }
  const { ids, maxTokens } = promptIds(ctx, p);
  const ac = new AbortController();
  let handle: RequestHandle;
  try {
    handle = ctx.engine.generate({
      prompt: ids, maxTokens, temperature: p.temperature, topP: p.topP, topK: p.topK, minP: p.minP, seed: p.seed,
      stop: p.stop, logprobs: p.logprobs < 0 ? 0 : Math.max(1, p.logprobs), signal: ac.signal,
      ...(p.ignoreEos ? { stopTokenIds: [] } : {}),
    });
  } catch (e) {
    const err = engineError(e, kind);
    if (err.status === 429) throw new ApiError(429, err.message, err.type, err.param, err.code, { 'Retry-After': String(ctx.retryAfterS) });
    throw err;
  }
  ctx.inflight.add(ac);
  // The response closing before we finished it means the client went away.
  let gone = false;
  const onClose = () => { if (!res.writableFinished) { gone = true; ac.abort(); } };
  res.on('close', onClose);
  req.on('aborted', onClose);
  const common = { id: `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID()}`, created: Math.floor(Date.now() / 1000), model: ctx.modelName };
  const tokText = (id: number) => ctx.llm.tokenizer?.decode([id]) ?? String(id);
  const lp = p.logprobs >= 0 ? new Logprobs(kind, p.logprobs, tokText) : null;
  let firstTokenS = -1;
  let status = 200;
  try {
    let text = '';
    if (p.stream) {
      res.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-cache', Connection: 'keep-alive', 'X-Accel-Buffering': 'no' });
      if (kind === 'chat') sse(res, chunkBody(kind, common, { role: 'assistant', text: '' }, p.includeUsage));
    }
    for await (const t of handle) {
      if (t.tokenId >= 0 && firstTokenS < 0) firstTokenS = (performance.now() - t0) / 1000;
      if (gone) continue;
      const before = lp?.length ?? 0;
      lp?.add(t, text.length);
      text += t.text;
      // Tokens that complete no text (mid-character, a possible stop string) go out with a later one.
      if (p.stream && (t.text || (lp && lp.length > before))) {
        sse(res, chunkBody(kind, common, { text: t.text, logprobs: lp && lp.length > before ? lp.json(before) : undefined }, p.includeUsage));
      }
    }
    const r: RequestResult = await handle.result();
    status = finalize(ctx, kind, p, res, common, text, r, lp, gone);
    ctx.metrics.generation(kind, r.usage.promptTokens, r.usage.generatedTokens, firstTokenS, (performance.now() - t0) / 1000);
    return status;
  } finally {
    ctx.inflight.delete(ac);
    res.off('close', onClose);
    req.off('aborted', onClose);
  }
}

/** The end of a request: the JSON body, or the stream's last chunks; returns the status recorded. */
function finalize(ctx: GenerationContext, kind: Kind, p: ApiRequest, res: ServerResponse, common: { id: string; created: number; model: string }, text: string, r: RequestResult, lp: Logprobs | null, gone: boolean): number {
  if (gone || res.destroyed) return 499;
  let failure: ApiError | null = null;
  if (r.finishReason === 'error') failure = new ApiError(500, `generation failed: ${r.error ?? 'unknown error'}`, 'server_error', null, 'generation_failed');
  else if (r.finishReason === 'abort') {
    failure = new ApiError(503, `the request was aborted: ${ctx.abortReason() ?? 'the engine closed'}`, 'server_error', null, 'aborted');
  }
  if (!p.stream) {
    if (failure) throw failure;
    const body = JSON.stringify(responseBody(kind, common, text, r, lp));
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
    return 200;
  }
  // Headers are out: a failure mid-stream is an error event, as OpenAI's streams send them.
  if (failure) sse(res, failure.body());
  else {
    sse(res, chunkBody(kind, common, { finish: finishReason(r.finishReason), text: kind === 'chat' ? undefined : '' }, p.includeUsage));
    if (p.includeUsage) sse(res, usageChunk(kind, common, r));
  }
  sse(res, '[DONE]');
  res.end();
  return failure ? failure.status : 200;
}
