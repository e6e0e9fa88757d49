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
  // fma(a, b, c) of f32 values, correctly rounded to f32 (one rounding, as CUDA's fmaf), from
  // p = a * b (exact in f64) and c. s = p + c is within half an f64 unit of the exact sum, so
  // rounding s to f32 is right unless s lies exactly halfway between two f32 values; then the
  // exact sum's side of s (TwoSum's error term e) decides. o: the f32 value on the other side of s.
  // Kernels inline the common case (js-expr.ts) and call this only at such halfway points.
  $fmaPC(p: number, c: number): number {
    const s = p + c, r = Math.fround(s);
    if (r === s || Number.isNaN(s)) return r;
    const big = r === Infinity || r === -Infinity; // halfway between the largest f32 and 2^128?
    const o = big ? Math.sign(r) * 3.4028234663852886e38 : r + 2 * (s - r);
    if (big ? Math.abs(s) !== 3.4028235677973366e38 : Math.fround(o) !== o) return r;
    const q = s - p, e = (p - (s - q)) + (c - q);
    return e === 0 ? r : e > 0 ? Math.max(r, o) : Math.min(r, o);
  },
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

// Declared by a profiling-mode kernel (emit/js.ts profileState) around the profiling helpers.
declare const $PF_N: number;
declare const $PF_SITE: readonly (readonly [number, number, number])[];
declare const $PF_CNT: Int32Array[];
declare const $PF_LOG: Float64Array[];
declare const $PF_MAX: Int32Array;
declare const $pfLanes: Float64Array;
declare const $pfTmp: Float64Array;
declare const $pfBanks: Int32Array;
declare const $pfOut: Float64Array;
declare const $pfp: { totals: Float64Array; seen: (Uint8Array | undefined)[] };
declare const $B: readonly ArrayBufferView[];
declare function $pfGlobal(lanes: Float64Array, bytes: number, seen: Uint8Array | null, tmp: Float64Array, out: Float64Array): void;
declare function $pfShared(lanes: Float64Array, bytes: number, tmp: Float64Array, banks: Int32Array, out: Float64Array): void;

/**
 * Profiling mode: a memory-access model of an NVIDIA GPU. Each static load/store site logs the
 * element index of every execution, per invocation, numbered by instance (the n-th execution of
 * the site by that invocation: loop iterations are separate requests). At the end of a workgroup,
 * $pfFlush groups the log by warp (32 consecutive local indices) and instance — one warp request
 * each — and adds per site to ctx.profile.totals (6 per site): requests, sectors, ideal sectors,
 * wavefronts, ideal wavefronts, distinct bytes requested. ctx.profile.seen[binding] marks the
 * 32-byte sectors of each buffer the launch touched (its DRAM footprint, a perfect L2 assumed).
 * $pfGlobal and $pfShared use only their arguments (test/profile.test.ts calls them).
 */
export const PROFILING = {
  // Log execution `instance` of site s by invocation li at element index i (returned unchanged).
  $pf(s: number, i: number, li: number): number {
    if (i >= 0) {
      const cnt = $PF_CNT[s]!, k = cnt[li]!;
      cnt[li] = k + 1;
      let log = $PF_LOG[s]!;
      const at = k * $PF_N + li;
      if (at >= log.length) {
        const grown = new Float64Array(Math.max(log.length * 2, at + $PF_N)).fill(-1);
        grown.set(log);
        $PF_LOG[s] = log = grown;
      }
      log[at] = i;
      if (k >= ($PF_MAX[s] ?? 0)) $PF_MAX[s] = k + 1;
    }
    return i;
  },
  // One warp request to global memory: lanes[l] is lane l's byte address (-1: inactive), each lane
  // moving `bytes`. out = [32-byte sectors touched, ceil(distinct bytes / 32), distinct bytes].
  $pfGlobal(lanes: Float64Array, bytes: number, seen: Uint8Array | null, tmp: Float64Array, out: Float64Array): void {
    let n = 0;
    for (let l = 0; l < 32; l++) if (lanes[l]! >= 0) tmp[n++] = lanes[l]!;
    // Insertion sort: lanes' addresses usually arrive nearly sorted.
    for (let i = 1; i < n; i++) {
      const v = tmp[i]!;
      let j = i - 1;
      while (j >= 0 && tmp[j]! > v) { tmp[j + 1] = tmp[j]!; j--; }
      tmp[j + 1] = v;
    }
    let sectors = 0, distinct = 0, lastSector = -1, lastEnd = -1;
    // Equal-length intervals sorted by start are sorted by end too: one sweep counts both unions.
    for (let i = 0; i < n; i++) {
      const a = tmp[i]!, end = a + bytes, s1 = Math.floor((end - 1) / 32);
      for (let s = Math.max(Math.floor(a / 32), lastSector + 1); s <= s1; s++) {
        sectors++;
        if (seen && s < seen.length) seen[s] = 1;
      }
      if (s1 > lastSector) lastSector = s1;
      distinct += Math.max(0, end - Math.max(a, lastEnd));
      if (end > lastEnd) lastEnd = end;
    }
    out[0] = sectors; out[1] = Math.ceil(distinct / 32); out[2] = distinct;
  },
  // One warp request to shared memory (32 banks of 4-byte words). 32-bit accesses are served in one
  // phase of 32 lanes, 64-bit in 2 phases of 16 lanes, 128-bit in 4 of 8: each phase takes as many
  // wavefronts as the most distinct words any one bank holds (lanes reading one word share it: a
  // broadcast). Ideal: ceil(distinct bytes of the phase / 128) per phase.
  // out = [wavefronts, ideal wavefronts, distinct bytes].
  $pfShared(lanes: Float64Array, bytes: number, tmp: Float64Array, banks: Int32Array, out: Float64Array): void {
    const words = Math.max(1, Math.ceil(bytes / 4)), perPhase = Math.max(1, Math.floor(32 / words));
    let wavefronts = 0, ideal = 0, distinctBytes = 0;
    for (let p = 0; p < 32; p += perPhase) {
      let n = 0;
      for (let l = p; l < p + perPhase && l < 32; l++) {
        const a = lanes[l]!;
        if (a < 0) continue;
        const w0 = Math.floor(a / 4);
        for (let j = 0; j < words; j++) tmp[n++] = w0 + j;
      }
      if (n === 0) continue;
      // Insertion sort: lanes' addresses usually arrive nearly sorted.
      for (let i = 1; i < n; i++) {
        const v = tmp[i]!;
        let j = i - 1;
        while (j >= 0 && tmp[j]! > v) { tmp[j + 1] = tmp[j]!; j--; }
        tmp[j + 1] = v;
      }
      banks.fill(0);
      let distinct = 0, most = 0;
      for (let i = 0; i < n; i++) {
        if (i > 0 && tmp[i] === tmp[i - 1]) continue;
        distinct++;
        const b = tmp[i]! % 32, c = banks[b]! + 1;
        banks[b] = c;
        if (c > most) most = c;
      }
      wavefronts += most;
      ideal += Math.ceil((distinct * 4) / 128);
      distinctBytes += distinct * 4;
    }
    out[0] = wavefronts; out[1] = ideal; out[2] = distinctBytes;
  },
  // End of a workgroup: count each site's warp requests into the totals, then clear its log.
  $pfFlush(): void {
    const T = $pfp.totals;
    for (let s = 0; s < $PF_SITE.length; s++) {
      const K = $PF_MAX[s] ?? 0;
      if (K === 0) continue;
      const [space, bytes, array] = $PF_SITE[s]!;
      const log = $PF_LOG[s]!, o = s * 6;
      let seen: Uint8Array | null = null;
      if (space === 0) {
        seen = $pfp.seen[array] ?? null;
        if (!seen) $pfp.seen[array] = seen = new Uint8Array(Math.ceil(($B[array]?.byteLength ?? 0) / 32));
      }
      for (let k = 0; k < K; k++) {
        for (let w = 0; w < $PF_N; w += 32) {
          let any = false;
          for (let l = 0; l < 32; l++) {
            const v = w + l < $PF_N ? log[k * $PF_N + w + l]! : -1;
            $pfLanes[l] = v < 0 ? -1 : v * bytes;
            if (v >= 0) any = true;
          }
          if (!any) continue;
          T[o] = T[o]! + 1;
          if (space === 0) {
            $pfGlobal($pfLanes, bytes, seen, $pfTmp, $pfOut);
            T[o + 1] = T[o + 1]! + $pfOut[0]!; T[o + 2] = T[o + 2]! + $pfOut[1]!;
          } else {
            $pfShared($pfLanes, bytes, $pfTmp, $pfBanks, $pfOut);
            T[o + 3] = T[o + 3]! + $pfOut[0]!; T[o + 4] = T[o + 4]! + $pfOut[1]!;
          }
          T[o + 5] = T[o + 5]! + $pfOut[2]!;
        }
      }
      log.fill(-1, 0, K * $PF_N);
      $PF_CNT[s]!.fill(0);
      $PF_MAX[s] = 0;
    }
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
