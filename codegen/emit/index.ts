// The emitters: KernelIR → target source text.
export { emitWGSL } from './wgsl.js';
export { emitCUDA } from './cuda.js';
export { emitJS } from './js.js';
