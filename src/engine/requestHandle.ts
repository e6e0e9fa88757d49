// What engine.generate() returns: an async iterator of the request's tokens that also carries
// its id and its final result. The engine pushes; the consumer pulls. Leaving a `for await` early
// (break, throw) aborts the request, so its KV blocks are freed at the next step boundary.

export type FinishReason = 'stop' | 'length' | 'eos' | 'abort' | 'error';

export interface EngineToken {
  /** The token, or −1 for a last chunk of text held back (stop strings, an unfinished character). */
  tokenId: number;
  /** Text this token completes ('' mid-character or while a stop string could be starting). */
  text: string;
  /** log p(token) under the model's distribution (temperature 1, no filters), when logprobs > 0. */
  logprob?: number;
  /** The most likely tokens at this position and their log-probabilities, when logprobs > 0. */
  topLogprobs?: { tokenId: number; logprob: number }[];
}

export interface RequestResult {
  requestId: number;
  finishReason: FinishReason;
  /** Why, when finishReason is 'error'. */
  error?: string;
  usage: { promptTokens: number; cachedTokens: number; generatedTokens: number };
  /** Milliseconds: waiting before the first step, to the first token, and in all. */
  timings: { queuedMs: number; ttftMs: number; totalMs: number; prefillMs: number; decodeMs: number };
  /** Speculative decoding, when it ran for this request. */
  speculation?: { drafted: number; accepted: number; steps: number };
  /** Times the request was preempted and recomputed. */
  preemptions: number;
}

export class RequestHandle implements AsyncIterableIterator<EngineToken, RequestResult> {
  private readonly queue: EngineToken[] = [];
  private waiter: ((r: IteratorResult<EngineToken, RequestResult>) => void) | null = null;
  private final: RequestResult | null = null;
  private resolveResult!: (r: RequestResult) => void;
  private readonly done: Promise<RequestResult>;

  constructor(readonly requestId: number, private readonly onAbort: (id: number) => void) {
    this.done = new Promise((res) => { this.resolveResult = res; });
  }

  /** The request's outcome, once it has ended (whether or not the tokens were consumed). */
  result(): Promise<RequestResult> { return this.done; }

  get finished(): boolean { return this.final !== null; }

  /** Engine side: one more token. */
  push(t: EngineToken): void {
    if (this.final) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w({ value: t, done: false });
    } else this.queue.push(t);
  }

  /** Engine side: the request has ended. */
  end(r: RequestResult): void {
    if (this.final) return;
    this.final = r;
    this.resolveResult(r);
    if (this.waiter && !this.queue.length) {
      const w = this.waiter;
      this.waiter = null;
      w({ value: r, done: true });
    }
  }

  next(): Promise<IteratorResult<EngineToken, RequestResult>> {
    const t = this.queue.shift();
    if (t) return Promise.resolve({ value: t, done: false });
    if (this.final) return Promise.resolve({ value: this.final, done: true });
    return new Promise((res) => { this.waiter = res; });
  }

  /** The consumer left early: abort the request and finish the iteration. */
  async return(_value?: unknown): Promise<IteratorResult<EngineToken, RequestResult>> {
    if (!this.final) this.onAbort(this.requestId);
    this.queue.length = 0;
    return { value: await this.done, done: true };
  }

  [Symbol.asyncIterator](): this { return this; }
}
