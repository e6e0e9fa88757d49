// OpenAI's response objects: completions and chat completions, whole and as stream chunks,
// with usage and logprobs in the shapes the `openai` client types.
import type { EngineToken, FinishReason, RequestResult } from '../engine.js';

export type Kind = 'completion' | 'chat';

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

export function usageOf(r: RequestResult): Usage {
  const u = r.usage;
  return {
    prompt_tokens: u.promptTokens, completion_tokens: u.generatedTokens, total_tokens: u.promptTokens + u.generatedTokens,
    prompt_tokens_details: { cached_tokens: u.cachedTokens },
  };
}

/** OpenAI has 'stop' (EOS or a stop string) and 'length'; aborts and errors never reach a finish_reason. */
export function finishReason(r: FinishReason): 'stop' | 'length' {
  return r === 'length' ? 'length' : 'stop';
}

/** Text of one token id, for logprobs (the tokenizer's piece; '' for a model without one). */
export type TokenText = (id: number) => string;

/** Logprobs accumulated over a request, in the endpoint's shape. */
export class Logprobs {
  private readonly tokens: string[] = [];
  private readonly lps: number[] = [];
  private readonly tops: { token: string; logprob: number }[][] = [];
  private readonly offsets: number[] = [];

  constructor(private readonly kind: Kind, private readonly top: number, private readonly text: TokenText) {}

  /** Add a token (those without a logprob, the held-back text flushes, are skipped). */
  add(t: EngineToken, textOffset: number): void {
    if (t.tokenId < 0 || t.logprob === undefined) return;
    this.tokens.push(this.text(t.tokenId));
    this.lps.push(t.logprob);
    this.tops.push((t.topLogprobs ?? []).slice(0, this.top).map((x) => ({ token: this.text(x.tokenId), logprob: x.logprob })));
    this.offsets.push(textOffset);
  }

  get length(): number { return this.tokens.length; }

  /** The entries from index `from` on (a stream chunk's share), or all of them. */
  json(from = 0): unknown {
    const idx = this.tokens.map((_, i) => i).slice(from);
    if (this.kind === 'chat') {
      const bytes = (s: string) => [...Buffer.from(s, 'utf8')];
      return {
        content: idx.map((i) => ({
          token: this.tokens[i]!, logprob: this.lps[i]!, bytes: bytes(this.tokens[i]!),
          top_logprobs: this.tops[i]!.map((x) => ({ token: x.token, logprob: x.logprob, bytes: bytes(x.token) })),
        })),
      };
    }
    return {
      tokens: idx.map((i) => this.tokens[i]!),
      token_logprobs: idx.map((i) => this.lps[i]!),
      // Two alternatives may decode to the same text: keep the likelier one (they come sorted).
      top_logprobs: idx.map((i) => {
        const o: Record<string, number> = {};
        for (const x of this.tops[i]!) if (!(x.token in o)) o[x.token] = x.logprob;
        return o;
      }),
      text_offset: idx.map((i) => this.offsets[i]!),
    };
  }
}

interface Common { id: string; created: number; model: string }

/** The whole response of a non-streaming request. */
export function responseBody(kind: Kind, c: Common, text: string, r: RequestResult, lp: Logprobs | null): unknown {
  const finish_reason = finishReason(r.finishReason);
  const logprobs = lp ? lp.json() : null;
  if (kind === 'chat') {
    return {
      ...c, object: 'chat.completion',
      choices: [{ index: 0, message: { role: 'assistant', content: text, refusal: null }, logprobs, finish_reason }],
      usage: usageOf(r),
    };
  }
  return { ...c, object: 'text_completion', choices: [{ index: 0, text, logprobs, finish_reason }], usage: usageOf(r) };
}

/** One stream chunk: new text (and its logprobs), or the last one with a finish_reason. */
export function chunkBody(kind: Kind, c: Common, delta: { role?: 'assistant'; text?: string; logprobs?: unknown; finish?: 'stop' | 'length' }, withUsage: boolean): unknown {
  const finish_reason = delta.finish ?? null;
  const logprobs = delta.logprobs ?? null;
  const usage = withUsage ? { usage: null } : {};
  if (kind === 'chat') {
    const d: Record<string, string> = {};
    if (delta.role) d.role = delta.role;
    if (delta.text !== undefined) d.content = delta.text;
    return { ...c, object: 'chat.completion.chunk', choices: [{ index: 0, delta: d, logprobs, finish_reason }], ...usage };
  }
  return { ...c, object: 'text_completion', choices: [{ index: 0, text: delta.text ?? '', logprobs, finish_reason }], ...usage };
}

/** The extra last chunk of stream_options.include_usage: no choices, the usage. */
export function usageChunk(kind: Kind, c: Common, r: RequestResult): unknown {
  return { ...c, object: kind === 'chat' ? 'chat.completion.chunk' : 'text_completion', choices: [], usage: usageOf(r) };
}
