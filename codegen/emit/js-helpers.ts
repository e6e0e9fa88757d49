// The functions generated JavaScript kernels call, written as type-checked TypeScript. A kernel's
// JS is self-contained (a worker compiles it with `new Function`), so js-runtime.ts copies in the
// text of the ones it uses: each method below becomes `function $name(…) {…}` in the kernel. They
// may therefore use only their arguments, globals, and the names a kernel declares — declared
// here, ambient, so the type checker knows them and no bundler renames them.

// Declared by the helpers' preludes (js-runtime.ts).
declare const $F32: Float32Array;
declare const $U32: Uint32Array;
declare const $sgTmp: Float64Array;
declare function $f16r(x: number): number;
declare function $sgRound(kind: number, x: number): number;
// Declared by a checking-mode kernel (emit/js.ts) around the checking helpers.
declare const $ctx: { count: number; findings: string[]; keys: Set<string>; limit: number };
declare const $ACCESS: readonly string[];
declare const $BUF: readonly string[];
declare const $PRIV: readonly string[];
declare const $PRIV_LEN: readonly number[];
declare const $SH: readonly string[];
declare const $SH_LEN: readonly number[];
declare const $SH_TRACK: readonly Int32Array[];
declare const $wid: string;
declare const $epoch: number;
declare function $describe(li: number): string;
declare function $report(key: string, msg: string): void;
declare function $race(id: number, i: number, a: number, aWhat: string, b: number, bWhat: string): void;

/** Typed arrays the helpers read and write (storage buffers, workgroup arrays, masks). */
type Cells = { length: number; [i: number]: number };

export const RUNTIME = {
  // f32 value <-> its bits, through one scratch word.
  $f32bits(x: number): number { $F32[0] = x; return $U32[0] ?? 0; },
  $bitsf32(u: number): number { $U32[0] = u; return $F32[0] ?? 0; },
  // WGSL integer division: x / 0 = x; INT_MIN / -1 = INT_MIN (wraps).
  $idiv(a: number, b: number): number { return b === 0 ? a : (a / b) | 0; },
  $irem(a: number, b: number): number { return b === 0 ? 0 : (a % b) | 0; },
  $udiv(a: number, b: number): number { return b === 0 ? a : (a / b) >>> 0; },
  $urem(a: number, b: number): number { return b === 0 ? 0 : a % b; },
  // float -> integer: truncate, saturate, NaN -> 0.
  $f2i(x: number): number { return x >= 2147483647 ? 2147483647 : x <= -2147483648 ? -2147483648 : x | 0; },
  $f2u(x: number): number { return x >= 4294967295 ? 4294967295 : x > 0 ? x >>> 0 : 0; },
  // round half to even.
  $roundEven(x: number): number { const r = Math.round(x); return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r; },
  // atomic max/min on Int32Array/Uint32Array: compare-and-swap loops; return the old value.
  $atomicMax(a: Int32Array | Uint32Array, i: number, v: number): number {
    for (;;) { const o = Atomics.load(a, i); if (o >= v || Atomics.compareExchange(a, i, o, v) === o) return o; }
  },
  $atomicMin(a: Int32Array | Uint32Array, i: number, v: number): number {
    for (;;) { const o = Atomics.load(a, i); if (o <= v || Atomics.compareExchange(a, i, o, v) === o) return o; }
  },
  // Whether any invocation of a mask is active.
  $any(mask: Cells): boolean { for (let i = 0; i < mask.length; i++) if (mask[i] !== 0) return true; return false; },

  // Subgroup emulation: invocations [b, b + sg) of the workgroup form a subgroup. Each active
  // invocation has deposited its operand in src; results go to dst for the active ones.
  // kind: 0 f32, 1 f16, 2 i32, 3 u32. op: 0 add, 1 max, 2 min.
  $sgRound(kind: number, x: number): number { return kind === 0 ? Math.fround(x) : kind === 1 ? $f16r(x) : kind === 2 ? x | 0 : x >>> 0; },
  // Reductions follow the shuffle-xor butterfly a GPU runs (lane 0's view of it), rounding per step.
  $sgReduce(op: number, kind: number, src: Cells, dst: Cells, mask: Cells, n: number, sg: number): void {
    const id = op === 0 ? 0 : op === 1 ? -Infinity : Infinity;
    for (let b = 0; b < n; b += sg) {
      let any = false;
      for (let l = 0; l < sg; l++) {
        const i = b + l;
        if (i < n && mask[i] !== 0) { $sgTmp[l] = src[i] ?? 0; any = true; } else $sgTmp[l] = id;
      }
      if (!any) continue;
      for (let off = sg >> 1; off >= 1; off >>= 1) {
        for (let l = 0; l < off; l++) {
          const x = $sgTmp[l] ?? 0, y = $sgTmp[l + off] ?? 0;
          $sgTmp[l] = op === 0 ? $sgRound(kind, x + y) : op === 1 ? Math.max(x, y) : Math.min(x, y);
        }
      }
      const r = $sgTmp[0] ?? 0;
      for (let i = b; i < b + sg && i < n; i++) if (mask[i] !== 0) dst[i] = r;
    }
  },
  // shuffleXor (xor = true: lane ^ lanes[i]) or broadcast (lane lanes[i]). A lane outside the
  // subgroup reads its own value; check(i, from) is told of reads from lanes that are not active.
  $sgShuffle(xor: boolean, src: Cells, lanes: Cells, dst: Cells, mask: Cells, n: number, sg: number,
    check: ((i: number, from: number) => void) | undefined): void {
    for (let i = 0; i < n; i++) {
      if (mask[i] === 0) continue;
      const b = i - (i % sg), lane = xor ? (i - b) ^ (lanes[i] ?? 0) : (lanes[i] ?? 0);
      const from = b + lane;
      if (lane >= 0 && lane < sg && from < n) {
        if (check && mask[from] === 0) check(i, from);
        dst[i] = src[from] ?? 0;
      } else {
        if (check) check(i, from);
        dst[i] = src[i] ?? 0;
      }
    }
  },
};

/**
 * Checking mode, emitted inside `make(ctx)` (it reports into ctx). `$describe(li)` names an
 * invocation; `$wid` is the running workgroup; `$epoch` counts barrier intervals. Per
 * workgroup-array cell the tracker keeps 7 ints: write epoch, writer, read epoch, first reader, a
 * second distinct reader, atomic epoch, atomic invocation.
 */
export const CHECKING = {
  $report(key: string, msg: string): void {
    $ctx.count++;
    if ($ctx.findings.length < $ctx.limit && !$ctx.keys.has(key)) { $ctx.keys.add(key); $ctx.findings.push(msg); }
  },
  $ckS(id: number, arr: Cells, i: number, li: number, kind: number): number {
    if (i >= 0 && i < arr.length) return i;
    $report(`oob:${$BUF[id]}:${i}`, `out-of-bounds ${$ACCESS[kind]} of storage buffer '${$BUF[id]}' at index ${i} (length ${arr.length}) by ${$describe(li)} in workgroup ${$wid}`);
    return -1;
  },
  $ckP(id: number, i: number, li: number, kind: number): number {
    const len = $PRIV_LEN[id] ?? 0;
    if (i >= 0 && i < len) return i;
    $report(`oob:${$PRIV[id]}:${i}`, `out-of-bounds ${$ACCESS[kind]} of private array '${$PRIV[id]}' at index ${i} (length ${len}) by ${$describe(li)} in workgroup ${$wid}`);
    return 1073741824; // past the end even when added to an invocation's base in a shared backing array
  },
  $race(id: number, i: number, a: number, aWhat: string, b: number, bWhat: string): void {
    $report(`race:${$SH[id]}:${i}`, `race on workgroup array '${$SH[id]}' at index ${i}: ${$describe(a)} ${aWhat} it and ${$describe(b)} ${bWhat} it with no barrier in between (workgroup ${$wid})`);
  },
  // kind: 0 read, 1 write, 2 atomic.
  $ckW(id: number, i: number, li: number, kind: number): number {
    const len = $SH_LEN[id] ?? 0;
    if (!(i >= 0 && i < len)) {
      $report(`oob:${$SH[id]}:${i}`, `out-of-bounds ${$ACCESS[kind]} of workgroup array '${$SH[id]}' at index ${i} (length ${len}) by ${$describe(li)} in workgroup ${$wid}`);
      return -1;
    }
    const t = $SH_TRACK[id];
    if (!t) return i;
    const o = i * 7, e = $epoch;
    const w = t[o] ?? -1, writer = t[o + 1] ?? -1, re = t[o + 2] ?? -1, r1 = t[o + 3] ?? -1, r2 = t[o + 4] ?? -1;
    const ae = t[o + 5] ?? -1, atomicBy = t[o + 6] ?? -1;
    const otherReader = re === e && (r1 !== li || r2 !== -1) ? (r1 !== li ? r1 : r2) : -1;
    if (kind === 0) {
      if (w === e && writer !== li) $race(id, i, writer, 'writes', li, 'reads');
      else if (ae === e && atomicBy !== li) $race(id, i, atomicBy, 'updates (atomically)', li, 'reads');
      if (re !== e) { t[o + 2] = e; t[o + 3] = li; t[o + 4] = -1; } else if (r1 !== li && r2 === -1) t[o + 4] = li;
    } else {
      const what = kind === 1 ? 'writes' : 'updates (atomically)';
      if (w === e && writer !== li) $race(id, i, writer, 'writes', li, what);
      else if (otherReader >= 0) $race(id, i, otherReader, 'reads', li, what);
      else if (kind === 1 && ae === e && atomicBy !== li) $race(id, i, atomicBy, 'updates (atomically)', li, what);
      if (kind === 1) { t[o] = e; t[o + 1] = li; } else { t[o + 5] = e; t[o + 6] = li; }
    }
    return i;
  },
  // A barrier must be reached by every invocation that has not returned.
  $ckBarrier(which: number, mask: Cells, alive: Cells): void {
    let reached = -1, missing = -1;
    for (let i = 0; i < mask.length; i++) {
      if (mask[i] !== 0) { if (reached < 0) reached = i; } else if (alive[i] !== 0 && missing < 0) missing = i;
    }
    if (reached >= 0 && missing >= 0) {
      $report(`barrier:${which}`, `barrier #${which} is reached by ${$describe(reached)} but not by ${$describe(missing)}, which has not returned (workgroup ${$wid}): barriers must be in uniform control flow`);
    }
  },
  // A subgroup operation must be reached by every invocation of the subgroup that has not returned.
  $ckSubgroup(which: number, mask: Cells, alive: Cells, sg: number): void {
    for (let b = 0; b < mask.length; b += sg) {
      const end = Math.min(b + sg, mask.length);
      let reached = -1, missing = -1;
      for (let i = b; i < end; i++) {
        if (mask[i] !== 0) { if (reached < 0) reached = i; } else if (alive[i] !== 0 && missing < 0) missing = i;
      }
      if (reached >= 0 && missing >= 0) {
        $report(`subgroup:${which}`, `subgroup operation #${which} is reached by ${$describe(reached)} but not by ${$describe(missing)} of the same subgroup (workgroup ${$wid}): subgroup operations must be in uniform control flow`);
        return;
      }
    }
  },
  $ckShuffle(which: number): (i: number, from: number) => void {
    return (i, from) => $report(`shuffle:${which}`, `subgroup shuffle #${which} in ${$describe(i)} reads lane ${from}, which is inactive or outside the subgroup (workgroup ${$wid})`);
  },
};

/**
 * Function text may call esbuild's `__name(fn, name)` (tsx and other keepNames builds insert it
 * to preserve names): text that runs elsewhere gets this stand-in. `var`, so it may repeat.
 */
export const KEEP_NAMES_SHIM = 'var __name = (f) => f;';

/** `function $name(…) {…}` for each named method: the text a kernel embeds. */
export function functionsText<T extends Record<string, (...args: never[]) => unknown>>(fns: T, names: readonly (keyof T & string)[]): string {
  return [KEEP_NAMES_SHIM, ...names.map((n) => {
    const f = fns[n];
    if (!f) throw new Error(`unknown JS helper function '${n}'`);
    return `function ${f.toString()}`;
  })].join('\n');
}
