// The helper functions generated JavaScript kernels call, as source text: each kernel's JS is
// self-contained (a worker thread compiles it with `new Function`), so the emitter copies in the
// helpers a kernel uses. Plain JS, evaluated as written — except f16, which is the text of the
// type-checked codegen/dsl/f16.ts.
import { makeF16 } from '../dsl/f16.js';

/** Helper name → its source and the helpers it needs. */
export const HELPERS: Record<string, { deps: string[]; src: string }> = {
  bits: {
    deps: [],
    src: `const $F32 = new Float32Array(1), $U32 = new Uint32Array($F32.buffer);
// f32 value <-> its bits, through one scratch word.
function $f32bits(x) { $F32[0] = x; return $U32[0]; }
function $bitsf32(u) { $U32[0] = u; return $F32[0]; }`,
  },
  f16: {
    deps: [],
    // The host's own conversions (codegen/dsl/f16.ts), by their text: one implementation.
    src: `// f32 <-> f16 bits, round to nearest even, and the value of every f16 bit pattern.
const $f16c = (${makeF16.toString()})();
const $f16bits = $f16c.bits, $F16 = $f16c.table;
// Round a number to the nearest f16 value (through f32: innocuous for f16 operands, 24 >= 2*11+2).
function $f16r(x) { return $F16[$f16bits(x)]; }`,
  },
  idiv: { deps: [], src: `// WGSL integer division: x / 0 = x; INT_MIN / -1 = INT_MIN (wraps).
function $idiv(a, b) { return b === 0 ? a : (a / b) | 0; }
function $irem(a, b) { return b === 0 ? 0 : (a % b) | 0; }
function $udiv(a, b) { return b === 0 ? a : (a / b) >>> 0; }
function $urem(a, b) { return b === 0 ? 0 : a % b; }` },
  f2i: { deps: [], src: `// float -> integer: truncate, saturate, NaN -> 0.
function $f2i(x) { return x >= 2147483647 ? 2147483647 : x <= -2147483648 ? -2147483648 : x | 0; }
function $f2u(x) { return x >= 4294967295 ? 4294967295 : x > 0 ? x >>> 0 : 0; }` },
  roundEven: { deps: [], src: `// round half to even.
function $roundEven(x) { const r = Math.round(x); return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r; }` },
  atomicMinMax: { deps: [], src: `// atomic max/min on Int32Array/Uint32Array: compare-and-swap loops; return the old value.
function $atomicMax(a, i, v) { for (;;) { const o = Atomics.load(a, i); if (o >= v || Atomics.compareExchange(a, i, o, v) === o) return o; } }
function $atomicMin(a, i, v) { for (;;) { const o = Atomics.load(a, i); if (o <= v || Atomics.compareExchange(a, i, o, v) === o) return o; } }` },
  workgroup: { deps: [], src: `// Whether any invocation of a mask is active.
function $any(mask) { for (let i = 0; i < mask.length; i++) if (mask[i] !== 0) return true; return false; }` },
  subgroup: {
    deps: ['f16'],
    src: `// Subgroup emulation: invocations [b, b + sg) of the workgroup form a subgroup. Each active
// invocation has deposited its operand in src; results go to dst for the active ones.
// Reductions follow the shuffle-xor butterfly a GPU runs (lane 0's view of it), rounding per step.
// kind: 0 f32, 1 f16, 2 i32, 3 u32. op: 0 add, 1 max, 2 min.
const $sgTmp = new Float64Array(128);
function $sgRound(kind, x) { return kind === 0 ? Math.fround(x) : kind === 1 ? $f16r(x) : kind === 2 ? x | 0 : x >>> 0; }
function $sgReduce(op, kind, src, dst, mask, n, sg) {
  const id = op === 0 ? 0 : op === 1 ? -Infinity : Infinity;
  for (let b = 0; b < n; b += sg) {
    let any = false;
    for (let l = 0; l < sg; l++) {
      const i = b + l;
      if (i < n && mask[i] !== 0) { $sgTmp[l] = src[i]; any = true; } else $sgTmp[l] = id;
    }
    if (!any) continue;
    for (let off = sg >> 1; off >= 1; off >>= 1) {
      for (let l = 0; l < off; l++) {
        const x = $sgTmp[l], y = $sgTmp[l + off];
        $sgTmp[l] = op === 0 ? $sgRound(kind, x + y) : op === 1 ? Math.max(x, y) : Math.min(x, y);
      }
    }
    const r = $sgTmp[0];
    for (let i = b; i < b + sg && i < n; i++) if (mask[i] !== 0) dst[i] = r;
  }
}
// shuffleXor (xor = true: lane ^ lanes[i]) or broadcast (lane lanes[i]). A lane outside the
// subgroup reads its own value; check(i, from) is told of reads from lanes that are not active.
function $sgShuffle(xor, src, lanes, dst, mask, n, sg, check) {
  for (let i = 0; i < n; i++) {
    if (mask[i] === 0) continue;
    const b = i - (i % sg), lane = xor ? (i - b) ^ lanes[i] : lanes[i];
    const from = b + lane;
    if (lane >= 0 && lane < sg && from < n) {
      if (check && mask[from] === 0) check(i, from);
      dst[i] = src[from];
    } else {
      if (check) check(i, from);
      dst[i] = src[i];
    }
  }
}`,
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

/**
 * Checking-mode runtime, emitted inside `make(ctx)` (it reports into ctx). `$describe(li)` names an
 * invocation; `$wid` is the running workgroup; `$epoch` counts barrier intervals.
 * Per workgroup-array cell the tracker keeps 7 ints: write epoch, writer, read epoch, first reader,
 * a second distinct reader, atomic epoch, atomic invocation.
 */
export const CHECK_RUNTIME = `function $report(key, msg) {
  $ctx.count++;
  if ($ctx.findings.length < $ctx.limit && !$ctx.keys.has(key)) { $ctx.keys.add(key); $ctx.findings.push(msg); }
}
const $ACCESS = ['read', 'write', 'atomic access'];
function $ckS(id, arr, i, li, kind) {
  if (i >= 0 && i < arr.length) return i;
  $report('oob:' + $BUF[id] + ':' + i, 'out-of-bounds ' + $ACCESS[kind] + ' of storage buffer \\'' + $BUF[id] + '\\' at index ' + i +
    ' (length ' + arr.length + ') by ' + $describe(li) + ' in workgroup ' + $wid);
  return -1;
}
function $ckP(id, i, li, kind) {
  if (i >= 0 && i < $PRIV_LEN[id]) return i;
  $report('oob:' + $PRIV[id] + ':' + i, 'out-of-bounds ' + $ACCESS[kind] + ' of private array \\'' + $PRIV[id] + '\\' at index ' + i +
    ' (length ' + $PRIV_LEN[id] + ') by ' + $describe(li) + ' in workgroup ' + $wid);
  return 1073741824; // past the end even when added to an invocation's base in a shared backing array
}
function $race(id, i, a, aWhat, b, bWhat) {
  $report('race:' + $SH[id] + ':' + i, 'race on workgroup array \\'' + $SH[id] + '\\' at index ' + i + ': ' + $describe(a) + ' ' + aWhat +
    ' it and ' + $describe(b) + ' ' + bWhat + ' it with no barrier in between (workgroup ' + $wid + ')');
}
// kind: 0 read, 1 write, 2 atomic.
function $ckW(id, i, li, kind) {
  if (!(i >= 0 && i < $SH_LEN[id])) {
    $report('oob:' + $SH[id] + ':' + i, 'out-of-bounds ' + $ACCESS[kind] + ' of workgroup array \\'' + $SH[id] + '\\' at index ' + i +
      ' (length ' + $SH_LEN[id] + ') by ' + $describe(li) + ' in workgroup ' + $wid);
    return -1;
  }
  const t = $SH_TRACK[id], o = i * 7, e = $epoch;
  const otherReader = t[o + 2] === e && (t[o + 3] !== li || t[o + 4] !== -1) ? (t[o + 3] !== li ? t[o + 3] : t[o + 4]) : -1;
  if (kind === 0) {
    if (t[o] === e && t[o + 1] !== li) $race(id, i, t[o + 1], 'writes', li, 'reads');
    else if (t[o + 5] === e && t[o + 6] !== li) $race(id, i, t[o + 6], 'updates (atomically)', li, 'reads');
    if (t[o + 2] !== e) { t[o + 2] = e; t[o + 3] = li; t[o + 4] = -1; }
    else if (t[o + 3] !== li && t[o + 4] === -1) t[o + 4] = li;
  } else {
    const what = kind === 1 ? 'writes' : 'updates (atomically)';
    if (t[o] === e && t[o + 1] !== li) $race(id, i, t[o + 1], 'writes', li, what);
    else if (otherReader >= 0) $race(id, i, otherReader, 'reads', li, what);
    else if (kind === 1 && t[o + 5] === e && t[o + 6] !== li) $race(id, i, t[o + 6], 'updates (atomically)', li, what);
    if (kind === 1) { t[o] = e; t[o + 1] = li; } else { t[o + 5] = e; t[o + 6] = li; }
  }
  return i;
}
// A barrier must be reached by every invocation that has not returned.
function $ckBarrier(which, mask, alive) {
  let reached = -1, missing = -1;
  for (let i = 0; i < mask.length; i++) {
    if (mask[i] !== 0) { if (reached < 0) reached = i; }
    else if (alive[i] !== 0 && missing < 0) missing = i;
  }
  if (reached >= 0 && missing >= 0) {
    $report('barrier:' + which, 'barrier #' + which + ' is reached by ' + $describe(reached) + ' but not by ' + $describe(missing) +
      ', which has not returned (workgroup ' + $wid + '): barriers must be in uniform control flow');
  }
}
// A subgroup operation must be reached by every invocation of the subgroup that has not returned.
function $ckSubgroup(which, mask, alive, sg) {
  for (let b = 0; b < mask.length; b += sg) {
    const end = Math.min(b + sg, mask.length);
    let reached = -1, missing = -1;
    for (let i = b; i < end; i++) {
      if (mask[i] !== 0) { if (reached < 0) reached = i; }
      else if (alive[i] !== 0 && missing < 0) missing = i;
    }
    if (reached >= 0 && missing >= 0) {
      $report('subgroup:' + which, 'subgroup operation #' + which + ' is reached by ' + $describe(reached) + ' but not by ' +
        $describe(missing) + ' of the same subgroup (workgroup ' + $wid + '): subgroup operations must be in uniform control flow');
      return;
    }
  }
}
function $ckShuffle(which) {
  return (i, from) => $report('shuffle:' + which, 'subgroup shuffle #' + which + ' in ' + $describe(i) + ' reads lane ' + from +
    ', which is inactive or outside the subgroup (workgroup ' + $wid + ')');
}`;
