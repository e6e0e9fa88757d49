// A request's output as text: incremental detokenization plus stop strings. Text that could
// still become a stop string is held back until it cannot, so a stop string never reaches the
// consumer; when one completes, generation ends before it.
import type { HfTokenizer } from '../io/tokenizer.js';

export class TextStream {
  private readonly streamer;
  private held = '';
  /** Set once a stop string has been seen: the text before it was the last to go out. */
  stopped = false;

  constructor(tokenizer: HfTokenizer | null, context: readonly number[], private readonly stops: readonly string[]) {
    this.streamer = tokenizer?.streamer({ context }) ?? null;
  }

  /** Text that goes out with this token ('' while held back or mid-character). */
  push(id: number): string {
    const text = this.streamer ? this.streamer.push(id) : '';
    if (!this.stops.length) return text;
    this.held += text;
    const hit = firstStop(this.held, this.stops);
    if (hit >= 0) {
      this.stopped = true;
      const out = this.held.slice(0, hit);
      this.held = '';
      return out;
    }
    const keep = stopPrefixTail(this.held, this.stops);
    const out = this.held.slice(0, this.held.length - keep);
    this.held = this.held.slice(this.held.length - keep);
    return out;
  }

  /** What is still held back, at the end of a generation that did not stop on a stop string. */
  flush(): string {
    if (this.stopped) return '';
    const rest = this.held + (this.streamer?.flush() ?? '');
    this.held = '';
    return rest;
  }
}

/** Index of the earliest stop string in `text`, or −1. */
export function firstStop(text: string, stops: readonly string[]): number {
  let best = -1;
  for (const s of stops) {
    const i = text.indexOf(s);
    if (i >= 0 && (best < 0 || i < best)) best = i;
  }
  return best;
}

/** Length of the longest tail of `text` that is a proper prefix of some stop string. */
export function stopPrefixTail(text: string, stops: readonly string[]): number {
  let keep = 0;
  for (const s of stops) {
    for (let n = Math.min(s.length - 1, text.length); n > keep; n--) {
      if (text.endsWith(s.slice(0, n))) { keep = n; break; }
    }
  }
  return keep;
}
