// `npm run bench -- <name> [args…]`: runs bench/<module>.ts, which exports `main(args)`.
// Adding a benchmark is one line in BENCHES.
type Bench = { main(args: string[]): Promise<void> };

const BENCHES: Record<string, () => Promise<Bench>> = {
  dsl: () => import('./dsl.js'),
  int4: () => import('./int4.js'),
  attention: () => import('./attention.js'),
  accept: () => import('./accept.js'),
  generate: () => import('./generate.js'),
  launch: () => import('./launch.js'),
  simd: () => import('./simd.js'),
  'gemm-tiles': () => import('./gemmTiles.js'),
  engine: () => import('./engine.js'),
  spec: () => import('./spec.js'),
  serve: () => import('./serve.js'),
  pointwise: () => import('./pointwise.js'),
  'gpu-prep': () => import('./gpu/prep.js'),
  browser: () => import('./browser.js'),
  'decode-steps': () => import('./decodeSteps.js'),
  'cpu-attention': () => import('./cpuAttention.js'),
  llamacpp: () => import('./llamacpp.js'),
};

const [name, ...args] = process.argv.slice(2);
const load = name ? BENCHES[name] : undefined;
if (!load) {
  console.error(`usage: npm run bench -- <${Object.keys(BENCHES).join(' | ')}> [args…]` +
    (name ? `\nunknown benchmark '${name}'` : ''));
  process.exit(2);
}
await (await load()).main(args);
