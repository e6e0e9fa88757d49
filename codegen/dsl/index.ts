export * from './types.js';
export * from './ir.js';
export * from './builder.js';
export * from './plan.js';
export { show } from './show.js';
export { dims, DimsError, type Dims } from './dims.js';
