// Prometheus metrics of one server: counters and histograms the request handlers feed, and
// gauges read from the engine's stats at scrape time. Each server has its own registry, so
// several servers in one process (tests) never share or clash.
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { EngineStats } from '../engine.js';

// Latency buckets from 10 ms to 2 min: a tiny model on cpu answers in tens of ms, a large one
// under load in tens of seconds.
const SECONDS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

export class ServerMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<'endpoint' | 'status'>;
  private readonly promptTokens: Counter;
  private readonly generatedTokens: Counter;
  private readonly ttft: Histogram<'endpoint'>;
  private readonly latency: Histogram<'endpoint'>;

  constructor(stats: () => EngineStats, labels: { model: string }) {
    const r = this.registry;
    r.setDefaultLabels(labels);
    this.requests = new Counter({ name: 'kiln_requests_total', help: 'HTTP requests answered, by endpoint and status code', labelNames: ['endpoint', 'status'], registers: [r] });
    this.promptTokens = new Counter({ name: 'kiln_prompt_tokens_total', help: 'Prompt tokens of requests that ran', registers: [r] });
    this.generatedTokens = new Counter({ name: 'kiln_generation_tokens_total', help: 'Tokens generated', registers: [r] });
    this.ttft = new Histogram({ name: 'kiln_time_to_first_token_seconds', help: 'From receiving a request to its first generated token', labelNames: ['endpoint'], buckets: SECONDS, registers: [r] });
    this.latency = new Histogram({ name: 'kiln_request_latency_seconds', help: 'From receiving a generation request to its last byte', labelNames: ['endpoint'], buckets: SECONDS, registers: [r] });
    // Engine state is read once per scrape (one stats() call feeds every gauge of it).
    let snap: EngineStats | null = null, snapAt = 0;
    const gauge = (name: string, help: string, read: (s: EngineStats) => number) =>
      new Gauge({
        name, help, registers: [r],
        collect() {
          if (!snap || performance.now() - snapAt > 50) { snap = stats(); snapAt = performance.now(); }
          this.set(read(snap));
        },
      });
    gauge('kiln_requests_running', 'Requests being computed', (s) => s.running);
    gauge('kiln_requests_waiting', 'Requests waiting to be scheduled', (s) => s.waiting);
    gauge('kiln_kv_blocks_used', 'KV cache blocks held by requests', (s) => s.kvBlocks.used);
    gauge('kiln_kv_blocks_cached', 'KV cache blocks kept only by the prefix cache', (s) => s.kvBlocks.cached);
    gauge('kiln_kv_blocks_total', 'KV cache blocks in the pool', (s) => s.kvBlocks.total);
    gauge('kiln_kv_usage_ratio', 'Fraction of KV blocks held by requests', (s) => (s.kvBlocks.total ? s.kvBlocks.used / s.kvBlocks.total : 0));
    gauge('kiln_prefix_cache_hit_rate', 'Prompt tokens served from the prefix cache / prompt tokens, over finished requests', (s) => s.prefixCacheHitRate);
    gauge('kiln_preemptions', 'Requests preempted for KV blocks and recomputed', (s) => s.preemptions);
    gauge('kiln_spec_acceptance_rate', 'Speculative decoding: accepted / drafted tokens (0 without speculation)', (s) => s.speculation?.acceptRate ?? 0);
    gauge('kiln_spec_draft_tokens', 'Speculative decoding: tokens drafted', (s) => s.speculation?.drafted ?? 0);
    gauge('kiln_spec_accepted_tokens', 'Speculative decoding: drafted tokens accepted', (s) => s.speculation?.accepted ?? 0);
  }

  /** One HTTP answer (every endpoint, every status, including refusals). */
  answered(endpoint: string, status: number): void {
    this.requests.inc({ endpoint, status: String(status) });
  }

  /** A generation request that ran: its tokens and times (seconds; ttft < 0 if none came). */
  generation(endpoint: string, promptTokens: number, generatedTokens: number, ttftS: number, latencyS: number): void {
    this.promptTokens.inc(promptTokens);
    this.generatedTokens.inc(generatedTokens);
    if (ttftS >= 0) this.ttft.observe({ endpoint }, ttftS);
    this.latency.observe({ endpoint }, latencyS);
  }

  text(): Promise<string> { return this.registry.metrics(); }
  get contentType(): string { return this.registry.contentType; }
}
