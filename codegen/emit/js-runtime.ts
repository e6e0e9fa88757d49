// The helper functions generated JavaScript kernels call, as source text: each kernel's JS is
// self-contained (a worker thread compiles it with `new Function`), so the emitter copies in the
// helpers a kernel uses — the text of type-checked functions (js-helpers.ts, codegen/dsl/f16.ts).
import { makeF16 } from '../dsl/f16.js';
import { CHECKING, functionsText, KEEP_NAMES_SHIM, PROFILING, RUNTIME } from './js-helpers.js';

/** Helper name → its source and the helpers it needs. */
export const HELPERS: Record<string, { deps: string[]; src: string }> = {
  bits: {
    deps: [],
    src: `const $F32 = new Float32Array(1), $U32 = new Uint32Array($F32.buffer);\n${functionsText(RUNTIME, ['$f32bits', '$bitsf32'])}`,
  },
  f16: {
    deps: [],
    // The host's own conversions (codegen/dsl/f16.ts), by their text: one implementation.
    src: `${KEEP_NAMES_SHIM}
const $f16c = (${makeF16.toString()})();
const $f16bits = $f16c.bits, $F16 = $f16c.table;
// Round a number to the nearest f16 value (through f32: innocuous for f16 operands, 24 >= 2*11+2).
function $f16r(x) { return $F16[$f16bits(x)]; }`,
  },
  idiv: { deps: [], src: functionsText(RUNTIME, ['$idiv', '$irem', '$udiv', '$urem']) },
  f2i: { deps: [], src: functionsText(RUNTIME, ['$f2i', '$f2u']) },
  roundEven: { deps: [], src: functionsText(RUNTIME, ['$roundEven']) },
  fmaf: { deps: [], src: functionsText(RUNTIME, ['$fmaPC']) },
  atomicMinMax: { deps: [], src: functionsText(RUNTIME, ['$atomicMax', '$atomicMin']) },
  workgroup: { deps: [], src: functionsText(RUNTIME, ['$any']) },
  subgroup: {
    deps: ['f16'],
    src: `const $sgTmp = new Float64Array(128);\n${functionsText(RUNTIME, ['$sgRound', '$sgReduce', '$sgShuffle'])}`,
  },
};

/** Source of the named helpers and everything they need, each once, in dependency order. */
export function helperSource(names: Iterable<string>): string {
  const done = new Set<string>();
  const out: string[] = [];
  const add = (n: string) => {
    if (done.has(n)) return;
    const h = HELPERS[n];
    if (!h) throw new Error(`unknown JS helper '${n}'`);
    done.add(n);
    for (const d of h.deps) add(d);
    out.push(h.src);
  };
  for (const n of names) add(n);
  return out.join('\n');
}

/** Checking-mode runtime, emitted inside `make(ctx)` (js-helpers.ts CHECKING says what it checks). */
export const CHECK_RUNTIME = `const $ACCESS = ['read', 'write', 'atomic access'];
${functionsText(CHECKING, ['$report', '$ckS', '$ckP', '$race', '$ckW', '$ckBarrier', '$ckSubgroup', '$ckShuffle'])}`;

/** Profiling-mode runtime, emitted inside `make(ctx)` (js-helpers.ts PROFILING says what it counts). */
export const PROFILE_RUNTIME = functionsText(PROFILING, ['$pf', '$pfGlobal', '$pfShared', '$pfFlush']);
