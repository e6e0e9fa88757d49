// Tokenizers: Hugging Face tokenizer.json (through @huggingface/tokenizers), chat templates
// (through @huggingface/jinja), streaming decode, and llama2.c's tokenizer.bin.

import { platform } from '../platform/index.js';
import { Tokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import type { ModelSpec } from '../model/spec.js';

export interface ChatMessage {
  role: string;
  content: string;
}

/** What streaming decode needs from a tokenizer. */
export interface Decoder {
  decode(ids: readonly number[], opts?: { skipSpecialTokens?: boolean }): string;
}

type Json = Record<string, unknown>;

/** tokenizer_config.json writes special tokens as strings or as AddedToken objects. */
function tokenText(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as Json).content === 'string') return (v as Json).content as string;
  return null;
}

export class HfTokenizer implements Decoder {
  readonly source: string;
  /** Largest id the tokenizer can produce, plus one (added tokens included). */
  readonly vocabSize: number;
  /** Distinct ids it has (fewer than vocabSize when ids are missing, e.g. a truncated vocab). */
  readonly idCount: number;
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly bosId: number | null;
  readonly eosId: number | null;
  readonly chatTemplate: string | null;
  private readonly tok: Tokenizer;
  private readonly specialIds: Set<number>;
  private compiledTemplate: Template | null = null;

  constructor(tokenizerJson: unknown, tokenizerConfig: unknown = {}, opts: { source?: string; chatTemplate?: string } = {}) {
    this.source = opts.source ?? 'tokenizer.json';
    if (typeof tokenizerJson !== 'object' || tokenizerJson === null) throw new Error(`${this.source}: must be a JSON object`);
    const cfg = (tokenizerConfig ?? {}) as Json;
    try {
      this.tok = new Tokenizer(tokenizerJson, cfg);
    } catch (e) {
      throw new Error(`${this.source}: cannot build the tokenizer (${(e as Error).message})`);
    }
    let maxId = -1;
    const ids = new Set<number>();
    for (const id of this.tok.get_vocab(true).values()) { maxId = Math.max(maxId, id); ids.add(id); }
    this.vocabSize = maxId + 1;
    this.idCount = ids.size;
    this.specialIds = new Set([...this.tok.get_added_tokens_decoder()].filter(([, t]) => t.special).map(([id]) => id));
    this.bosToken = tokenText(cfg.bos_token);
    this.eosToken = tokenText(cfg.eos_token);
    this.bosId = this.bosToken === null ? null : this.tok.token_to_id(this.bosToken) ?? null;
    this.eosId = this.eosToken === null ? null : this.tok.token_to_id(this.eosToken) ?? null;
    this.chatTemplate = opts.chatTemplate ?? pickTemplate(cfg.chat_template, this.source);
  }

  /** Reads dir/tokenizer.json, dir/tokenizer_config.json and, if present, dir/chat_template.jinja. */
  static fromDir(dir: string): HfTokenizer {
    const tjPath = platform.files.join(dir, 'tokenizer.json');
    if (!platform.files.exists(tjPath)) throw new Error(`${dir}: no tokenizer.json`);
    const read = (p: string): unknown => {
      try {
        return JSON.parse(platform.files.readText(p));
      } catch (e) {
        throw new Error(`${p}: cannot read JSON (${(e as Error).message})`);
      }
    };
    const cfgPath = platform.files.join(dir, 'tokenizer_config.json');
    const cfg = platform.files.exists(cfgPath) ? read(cfgPath) : {};
    const jinjaPath = platform.files.join(dir, 'chat_template.jinja');
    const chatTemplate = platform.files.exists(jinjaPath) ? platform.files.readText(jinjaPath) : undefined;
    return new HfTokenizer(read(tjPath), cfg, { source: tjPath, chatTemplate });
  }

  /**
   * Token ids for text; special tokens (e.g. BOS) are added as the post-processor specifies.
   * Throws when the vocabulary does not cover the text (characters the ids cannot give back,
   * e.g. a truncated tokenizer.json that encodes a sentence to BOS alone).
   */
  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    const add = opts.addSpecialTokens ?? true;
    const ids = this.tok.encode(text, { add_special_tokens: add }).ids;
    this.checkCovers(text, add ? this.tok.encode(text, { add_special_tokens: false }).ids : ids);
    return ids;
  }

  /** decode(encode(text)) must give the text back, whitespace aside (normalizers may move it). */
  private checkCovers(text: string, ids: number[]): void {
    const squash = (t: string) => t.normalize('NFKC').replace(/\s+/g, '');
    const want = squash(text);
    if (!want) return;
    const got = squash(ids.length ? this.tok.decode(ids, { skip_special_tokens: false }) : '');
    if (got === want) return;
    let i = 0;
    while (i < want.length && want[i] === got[i]) i++;
    const lost = [...new Set([...want].filter((c) => !got.includes(c)))].slice(0, 8);
    throw new Error(`${this.source}: the tokenizer's vocabulary does not cover the text: ${ids.length} ids give back ${got.length} of its ${want.length} non-space characters`
      + ` (first difference at ${JSON.stringify(want.slice(i, i + 12))}${lost.length ? `; characters lost: ${lost.map((c) => JSON.stringify(c)).join(' ')}` : ''}); is tokenizer.json truncated or another model's?`);
  }

  decode(ids: readonly number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    if (ids.length === 0) return ''; // the library rejects empty input
    return this.tok.decode([...ids], { skip_special_tokens: opts.skipSpecialTokens ?? false });
  }

  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.tok.id_to_token(id);
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  /** Renders messages with the model's chat template (tokenizer_config.json chat_template). */
  applyChatTemplate(messages: readonly ChatMessage[], opts: { addGenerationPrompt?: boolean; extra?: Record<string, unknown> } = {}): string {
    if (this.chatTemplate === null) throw new Error(`${this.source}: the tokenizer has no chat_template`);
    this.compiledTemplate ??= compileTemplate(this.chatTemplate, this.source);
    return this.compiledTemplate.render({
      messages,
      add_generation_prompt: opts.addGenerationPrompt ?? true,
      bos_token: this.bosToken ?? '',
      eos_token: this.eosToken ?? '',
      ...opts.extra,
    });
  }

  /** A streaming decoder for a new sequence; `context` (e.g. the prompt) fixes leading spaces. */
  streamer(opts: { context?: readonly number[]; skipSpecialTokens?: boolean } = {}): IncrementalDecoder {
    return new IncrementalDecoder(this, opts);
  }
}

function pickTemplate(raw: unknown, source: string): string | null {
  if (raw === undefined || raw === null) return null;
  if (typeof raw === 'string') return raw;
  // A list of named templates: use 'default'.
  if (Array.isArray(raw)) {
    const named = raw as { name?: unknown; template?: unknown }[];
    const def = named.find((t) => t.name === 'default') ?? named[0];
    if (def && typeof def.template === 'string') return def.template;
  }
  throw new Error(`${source}: chat_template must be a string or a list of {name, template}`);
}

function compileTemplate(text: string, source: string): Template {
  try {
    return new Template(text);
  } catch (e) {
    throw new Error(`${source}: chat_template does not parse (${(e as Error).message})`);
  }
}

/**
 * Streaming detokenization: push ids as they are generated, get back only the new text.
 * Text is re-decoded over a short window of recent ids, since a token's text can depend on its
 * neighbours (leading-space rules); text ending in an incomplete UTF-8 sequence (U+FFFD) is held
 * back until the bytes that complete it arrive.
 */
export class IncrementalDecoder {
  private readonly ids: number[];
  private prefixOffset: number;
  private readOffset: number;
  private readonly skip: boolean;

  constructor(private readonly tok: Decoder, opts: { context?: readonly number[]; skipSpecialTokens?: boolean } = {}) {
    this.ids = [...(opts.context ?? [])];
    this.readOffset = this.ids.length;
    this.prefixOffset = Math.max(0, this.ids.length - 6);
    this.skip = opts.skipSpecialTokens ?? true;
  }

  /** Adds generated ids; returns the text they complete (possibly ''). */
  push(...ids: number[]): string {
    this.ids.push(...ids);
    const opts = { skipSpecialTokens: this.skip };
    const prefixText = this.tok.decode(this.ids.slice(this.prefixOffset, this.readOffset), opts);
    const fullText = this.tok.decode(this.ids.slice(this.prefixOffset), opts);
    if (fullText.length <= prefixText.length || fullText.endsWith('\uFFFD')) return '';
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    return fullText.slice(prefixText.length);
  }

  /** Text still held back (an incomplete character at the end of generation). */
  flush(): string {
    const opts = { skipSpecialTokens: this.skip };
    const prefixText = this.tok.decode(this.ids.slice(this.prefixOffset, this.readOffset), opts);
    const fullText = this.tok.decode(this.ids.slice(this.prefixOffset), opts);
    this.prefixOffset = this.readOffset = this.ids.length;
    return fullText.length > prefixText.length ? fullText.slice(prefixText.length) : '';
  }
}

/** The model must have a logit row for every id the tokenizer can produce. */
export function checkTokenizerVocab(tok: { vocabSize: number; idCount?: number; source: string }, spec: ModelSpec): void {
  if (tok.vocabSize > spec.vocabSize) {
    throw new Error(`${tok.source}: the tokenizer has ${tok.vocabSize} ids but the model's vocab_size is ${spec.vocabSize}`);
  }
  // Checkpoints pad vocab_size past the tokenizer (to a multiple of 64 or 128; Qwen2 by ~300
  // ids); a tokenizer far smaller than the model's vocabulary is another model's, or truncated.
  const have = tok.idCount ?? tok.vocabSize, gap = spec.vocabSize - have;
  if (gap > Math.max(512, 0.01 * spec.vocabSize)) {
    throw new Error(`${tok.source}: the tokenizer has ${have} ids but the model's vocab_size is ${spec.vocabSize} (${gap} ids it can never produce); is tokenizer.json truncated or another model's?`);
  }
}

// ---------------------------------------------------------------------------------------------
// llama2.c tokenizer.bin: int32 max_token_length, then per token: f32 score, int32 len, bytes.
// The file does not store the token count: pass the model's vocab size, or read to the end.

export class Llama2cTokenizer implements Decoder {
  readonly source: string;
  readonly maxTokenLength: number;
  /** Raw bytes of each piece (sentencepiece '▁' already replaced by ' '). */
  readonly pieces: Uint8Array[];
  readonly scores: Float32Array;
  readonly bosId = 1;
  readonly eosId = 2;
  private readonly lookup = new Map<string, number>();

  constructor(bytes: Uint8Array, opts: { vocabSize?: number; source?: string } = {}) {
    this.source = opts.source ?? 'tokenizer.bin';
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (bytes.byteLength < 4) throw new Error(`${this.source}: truncated: no max_token_length header`);
    this.maxTokenLength = dv.getInt32(0, true);
    const pieces: Uint8Array[] = [];
    const scores: number[] = [];
    let at = 4;
    while (opts.vocabSize === undefined ? at < bytes.byteLength : pieces.length < opts.vocabSize) {
      const id = pieces.length;
      if (at + 8 > bytes.byteLength) throw new Error(`${this.source}: truncated at token ${id} (score and length need 8 bytes at byte ${at})`);
      scores.push(dv.getFloat32(at, true));
      const len = dv.getInt32(at + 4, true);
      at += 8;
      if (len < 0 || at + len > bytes.byteLength) throw new Error(`${this.source}: truncated at token ${id} (length ${len} at byte ${at - 4})`);
      pieces.push(bytes.slice(at, at + len));
      at += len;
    }
    if (opts.vocabSize !== undefined && at !== bytes.byteLength) {
      throw new Error(`${this.source}: ${bytes.byteLength - at} bytes left after ${opts.vocabSize} tokens; vocab size mismatch`);
    }
    this.pieces = pieces;
    this.scores = Float32Array.from(scores);
    pieces.forEach((p, id) => {
      const key = latin1(p);
      if (!this.lookup.has(key)) this.lookup.set(key, id);
    });
  }

  static load(filePath: string, vocabSize?: number): Llama2cTokenizer {
    return new Llama2cTokenizer(new Uint8Array(platform.files.readBytes(filePath)), { vocabSize, source: filePath });
  }

  get vocabSize(): number {
    return this.pieces.length;
  }

  /** llama2.c's encode: dummy-prefix space, per-character lookup with byte fallback (id = byte + 3),
   * then repeatedly merge the adjacent pair whose concatenation has the highest score. */
  encode(text: string, opts: { bos?: boolean; eos?: boolean } = {}): number[] {
    const ids: number[] = [];
    if (opts.bos ?? true) ids.push(this.bosId);
    if (text.length > 0) {
      const space = this.lookup.get(' ');
      if (space !== undefined) ids.push(space);
    }
    const utf8 = new TextEncoder();
    for (const ch of text) {
      const b = utf8.encode(ch);
      const id = this.lookup.get(latin1(b));
      if (id !== undefined) ids.push(id);
      else for (const byte of b) ids.push(byte + 3);
    }
    const start = opts.bos ?? true ? 1 : 0; // BOS never merges
    for (;;) {
      let best = -Infinity, bestId = -1, bestAt = -1;
      for (let i = start; i + 1 < ids.length; i++) {
        const id = this.lookup.get(latin1(this.pieces[ids[i]!]!) + latin1(this.pieces[ids[i + 1]!]!));
        if (id !== undefined && this.scores[id]! > best) {
          best = this.scores[id]!;
          bestId = id;
          bestAt = i;
        }
      }
      if (bestAt < 0) break;
      ids.splice(bestAt, 2, bestId);
    }
    if (opts.eos) ids.push(this.eosId);
    return ids;
  }

  /** Bytes of one token as run.c prints it after `prev`: no leading space right after BOS,
   * raw-byte pieces '<0xXX>' become that byte. */
  tokenBytes(prev: number, id: number): Uint8Array {
    const piece = this.pieces[id];
    if (piece === undefined) throw new Error(`${this.source}: token id ${id} is outside the vocabulary (${this.pieces.length})`);
    const s = latin1(piece);
    const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(s);
    if (m) return Uint8Array.of(parseInt(m[1]!, 16));
    return prev === this.bosId && piece[0] === 0x20 ? piece.subarray(1) : piece;
  }

  decode(ids: readonly number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    const parts: Uint8Array[] = [];
    let prev = -1;
    for (const id of ids) {
      if ((opts.skipSpecialTokens ?? false) && (id === this.bosId || id === this.eosId)) {
        prev = id;
        continue;
      }
      parts.push(this.tokenBytes(prev, id));
      prev = id;
    }
    const total = parts.reduce((a, p) => a + p.length, 0);
    const all = new Uint8Array(total);
    let at = 0;
    for (const p of parts) {
      all.set(p, at);
      at += p.length;
    }
    return new TextDecoder().decode(all);
  }
}

function latin1(bytes: Uint8Array): string {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return s;
}
