// The emitters: KernelIR → target source text.
export { emitWGSL } from './wgsl.js';
export { emitCUDA } from './cuda.js';
export { emitJS } from './js.js';
export {
  CUDA_TARGET, type LegalizeTarget, WGSL_TARGET, expandLanes, expandNibblePair, expandNibbleValues, legalize, legalizeExpr, legalizeStmts,
} from './legalize.js';
