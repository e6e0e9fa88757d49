export * from './types.js';
export * from './ir.js';
export * from './builder.js';
export * from './plan.js';
export { show } from './show.js';
