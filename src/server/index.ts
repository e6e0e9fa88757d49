// `kiln serve` as a library: an OpenAI-compatible HTTP server over a loaded model's engine.
export { createServer, KilnServer, startServer } from './server.js';
export type { ServerOptions } from './server.js';
export { ApiError } from './errors.js';
export type { SamplingDefaults } from './params.js';
export { ServerMetrics } from './metrics.js';
