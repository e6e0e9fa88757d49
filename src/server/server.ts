// The OpenAI-compatible HTTP server over one model's engine (node:http): routing, bearer-token
// auth, body limits, metrics, and a graceful shutdown that stops accepting, lets in-flight
// requests finish within a grace period and aborts the rest.
import { createHash, timingSafeEqual } from 'node:crypto';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { createEngine, Engine, type EngineOptions } from '../engine.js';
import type { LLM } from '../llm.js';
import { ApiError } from './errors.js';
import { type GenerationContext, handleGeneration } from './generation.js';
import { ServerMetrics } from './metrics.js';
import type { SamplingDefaults } from './params.js';
import { isPlaygroundRoute, servePlayground } from './playground.js';

export interface ServerOptions {
  /** The loaded model. */
  llm: LLM;
  /** An engine to serve with, or options for one the server creates (and closes). Default: a new engine with default options. */
  engine?: Engine | EngineOptions;
  /** Default 127.0.0.1. */
  host?: string;
  /** Default 8000; 0 picks a free port. */
  port?: number;
  /** Require `Authorization: Bearer <apiKey>` on every route but /health. */
  apiKey?: string;
  /** The model's id in /v1/models and responses (default: the model directory's name). */
  modelName?: string;
  /** Largest request body in bytes (default 1 MiB); larger gets 413. */
  maxBodyBytes?: number;
  /** Seconds a 429 tells the client to wait (default 1). */
  retryAfterS?: number;
  /** Sampling defaults for fields a request leaves out (e.g. from generation_config.json). */
  defaults?: SamplingDefaults;
  /** How long close() lets in-flight requests finish before aborting them (default 10 s). */
  shutdownGraceMs?: number;
  /** One line per request (default: none). */
  log?: (line: string) => void;
  /** Serve the playground page at / and the model's files at /model/ (default true). */
  playground?: boolean;
}

const ENDPOINTS: Record<string, string> = {
  '/v1/completions': 'completion', '/v1/chat/completions': 'chat', '/v1/models': 'models', '/health': 'health', '/metrics': 'metrics',
};

/** A server over one model. `listen()` starts it; `close()` shuts it down gracefully. */
export class KilnServer {
  readonly engine: Engine;
  readonly metrics: ServerMetrics;
  readonly modelName: string;
  readonly http: http.Server;
  private readonly ownsEngine: boolean;
  private readonly keyDigest: Buffer | null;
  private readonly ctx: GenerationContext;
  private readonly maxBody: number;
  private readonly handlers = new Set<Promise<void>>();
  private draining = false;
  private abortReason: string | null = null;
  private closing: Promise<void> | null = null;

  constructor(private readonly opts: ServerOptions) {
    const { llm } = opts;
    this.ownsEngine = !(opts.engine instanceof Engine);
    this.engine = opts.engine instanceof Engine ? opts.engine : createEngine(llm, opts.engine ?? {});
    this.modelName = opts.modelName ?? path.basename(llm.source.replace(/[\\/]+$/, ''));
    this.metrics = new ServerMetrics(() => this.engine.stats(), { model: this.modelName });
    this.maxBody = opts.maxBodyBytes ?? 1 << 20;
    if (!(Number.isInteger(this.maxBody) && this.maxBody > 0)) throw new RangeError(`maxBodyBytes = ${opts.maxBodyBytes} must be a positive integer`);
    if (opts.apiKey !== undefined && !opts.apiKey) throw new RangeError('apiKey must not be empty');
    // Compare digests, so the check takes the same time whatever the key's length or prefix.
    this.keyDigest = opts.apiKey ? createHash('sha256').update(opts.apiKey).digest() : null;
    this.ctx = {
      llm, engine: this.engine, modelName: this.modelName, metrics: this.metrics, defaults: opts.defaults ?? {},
      retryAfterS: opts.retryAfterS ?? 1, inflight: new Set(), abortReason: () => this.abortReason,
    };
    this.http = http.createServer((req, res) => {
      const p = this.handle(req, res).catch((e) => this.log(`internal error: ${(e as Error).stack ?? e}`));
      this.handlers.add(p);
      void p.finally(() => this.handlers.delete(p));
    });
    // Generation can outlast Node's default request timeout (5 min); the client decides when to give up.
    this.http.requestTimeout = 0;
  }

  /** Start listening; resolves with the address once bound. */
  listen(): Promise<{ host: string; port: number; url: string }> {
    const host = this.opts.host ?? '127.0.0.1';
    return new Promise((resolve, reject) => {
      this.http.once('error', reject);
      this.http.listen(this.opts.port ?? 8000, host, () => {
        this.http.off('error', reject);
        const a = this.http.address() as AddressInfo;
        const h = a.family === 'IPv6' ? `[${a.address}]` : a.address;
        resolve({ host: a.address, port: a.port, url: `http://${h}:${a.port}` });
      });
    });
  }

  get address(): { port: number; url: string } {
    const a = this.http.address() as AddressInfo;
    return { port: a.port, url: `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}` };
  }

  /** Requests being generated now. */
  get inflight(): number { return this.ctx.inflight.size; }

  /**
   * Stop accepting, let in-flight requests finish for up to graceMs, abort the rest, close the
   * engine if the server made it. The model stays loaded (the caller owns it).
   */
  close(graceMs = this.opts.shutdownGraceMs ?? 10_000): Promise<void> {
    this.closing ??= (async () => {
      this.draining = true;
      const closed = new Promise<void>((r) => this.http.close(() => r()));
      this.http.closeIdleConnections();
      const deadline = performance.now() + graceMs;
      while (this.ctx.inflight.size && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      if (this.ctx.inflight.size) {
        this.abortReason = `the server shut down (grace period of ${graceMs} ms ran out)`;
        for (const ac of this.ctx.inflight) ac.abort();
      }
      // Aborted requests end at the engine's next step; their handlers then answer and return.
      await Promise.race([Promise.allSettled([...this.handlers]), new Promise((r) => setTimeout(r, 5000))]);
      if (this.ownsEngine) await this.engine.close();
      this.http.closeAllConnections();
      await closed;
    })();
    return this.closing;
  }

  private log(line: string): void { this.opts.log?.(line); }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const t0 = performance.now();
    const url = new URL(req.url ?? '/', 'http://x');
    const route = url.pathname.replace(/\/+$/, '') || '/';
    const endpoint = ENDPOINTS[route] ?? (route.startsWith('/v1/models/') ? 'models' : this.opts.playground !== false && isPlaygroundRoute(route) ? 'playground' : 'other');
    let status: number;
    try {
      status = await this.route(req, res, route, endpoint, t0);
    } catch (e) {
      const err = e instanceof ApiError ? e : new ApiError(500, `internal error: ${(e as Error).message}`, 'server_error');
      if (!(e instanceof ApiError)) this.log(`internal error: ${(e as Error).stack ?? e}`);
      status = err.status;
      if (!res.headersSent && !res.destroyed) {
        const body = JSON.stringify(err.body());
        res.writeHead(err.status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body), ...err.headers });
        res.end(body);
      } else if (!res.writableEnded) res.end();
    }
    this.metrics.answered(endpoint, status);
    this.log(`${req.method} ${route} ${status} ${(performance.now() - t0).toFixed(0)} ms`);
  }

  private async route(req: http.IncomingMessage, res: http.ServerResponse, route: string, endpoint: string, t0: number): Promise<number> {
    const method = req.method ?? 'GET';
    if (route === '/health') {
      if (method !== 'GET' && method !== 'HEAD') throw methodNotAllowed(method, route, 'GET');
      return json(res, this.draining ? 503 : 200, { status: this.draining ? 'shutting down' : 'ok' });
    }
    if (endpoint === 'playground') {
      if (method !== 'GET' && method !== 'HEAD') throw methodNotAllowed(method, route, 'GET');
      // The page itself is public; the model's weights are not when an API key is set.
      if (route.startsWith('/model/')) this.authorize(req);
      return servePlayground(req, res, route, this.opts.llm.source);
    }
    this.authorize(req);
    if (endpoint === 'other') throw new ApiError(404, `no route ${method} ${route}`, 'not_found_error', null, 'not_found');
    if (endpoint === 'metrics') {
      if (method !== 'GET') throw methodNotAllowed(method, route, 'GET');
      const text = await this.metrics.text();
      res.writeHead(200, { 'Content-Type': this.metrics.contentType });
      res.end(text);
      return 200;
    }
    if (endpoint === 'models') {
      if (method !== 'GET') throw methodNotAllowed(method, route, 'GET');
      const card = { id: this.modelName, object: 'model', created: 0, owned_by: 'kiln', max_model_len: this.opts.llm.spec.maxPositions };
      if (route === '/v1/models') return json(res, 200, { object: 'list', data: [card] });
      const id = decodeURIComponent(route.slice('/v1/models/'.length));
      if (id !== this.modelName) throw new ApiError(404, `the model '${id}' does not exist: this server serves '${this.modelName}'`, 'invalid_request_error', 'model', 'model_not_found');
      return json(res, 200, card);
    }
    if (method !== 'POST') throw methodNotAllowed(method, route, 'POST');
    if (this.draining) {
      res.setHeader('Connection', 'close');
      throw new ApiError(503, 'the server is shutting down', 'server_error', null, 'shutting_down');
    }
    const body = await this.readBody(req, res);
    return handleGeneration(this.ctx, endpoint as 'completion' | 'chat', body, req, res, t0);
  }

  private authorize(req: http.IncomingMessage): void {
    if (!this.keyDigest) return;
    const h = req.headers.authorization ?? '';
    const m = /^Bearer\s+(.+)$/i.exec(h);
    if (!m) throw new ApiError(401, 'missing API key: send Authorization: Bearer <key>', 'invalid_request_error', null, 'invalid_api_key');
    const got = createHash('sha256').update(m[1]!.trim()).digest();
    if (!timingSafeEqual(got, this.keyDigest)) throw new ApiError(401, 'incorrect API key', 'invalid_request_error', null, 'invalid_api_key');
  }

  /** The JSON body, refused with 413 past maxBodyBytes (by Content-Length, or as it arrives). */
  private readBody(req: http.IncomingMessage, res: http.ServerResponse): Promise<unknown> {
    const limit = this.maxBody;
    const tooLarge = (n: string) => {
      // The client may still be sending: read and drop the rest (bounded) so it sees the answer.
      res.setHeader('Connection', 'close');
      let dropped = 0;
      req.on('data', (c: Buffer) => { dropped += c.length; if (dropped > 64 * limit) req.destroy(); });
      req.resume();
      return new ApiError(413, `the request body is ${n} bytes; the limit is ${limit}`, 'invalid_request_error', null, 'request_too_large');
    };
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > limit) return Promise.reject(tooLarge(String(declared)));
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let n = 0;
      const onData = (c: Buffer) => {
        n += c.length;
        if (n > limit) { cleanup(); reject(tooLarge(`over ${limit}`)); return; }
        chunks.push(c);
      };
      const onEnd = () => {
        cleanup();
        const text = Buffer.concat(chunks).toString('utf8');
        try {
          resolve(text.length ? JSON.parse(text) : undefined);
        } catch (e) {
          reject(new ApiError(400, `the request body is not valid JSON: ${(e as Error).message}`, 'invalid_request_error', null, 'invalid_json'));
        }
      };
      const onError = (e: Error) => { cleanup(); reject(e); };
      const cleanup = () => { req.off('data', onData); req.off('end', onEnd); req.off('error', onError); };
      req.on('data', onData);
      req.on('end', onEnd);
      req.on('error', onError);
    });
  }
}

function json(res: http.ServerResponse, status: number, body: unknown): number {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
  return status;
}

function methodNotAllowed(method: string, route: string, allowed: string): ApiError {
  return new ApiError(405, `${method} is not allowed on ${route} (use ${allowed})`, 'invalid_request_error', null, 'method_not_allowed', { Allow: allowed });
}

/** A server over a loaded model, not yet listening. */
export function createServer(opts: ServerOptions): KilnServer {
  return new KilnServer(opts);
}

/** A server over a loaded model, listening (port 0: a free port; read `server.address`). */
export async function startServer(opts: ServerOptions): Promise<KilnServer> {
  const s = new KilnServer(opts);
  try {
    await s.listen();
  } catch (e) {
    await s.close(0);
    throw e;
  }
  return s;
}
