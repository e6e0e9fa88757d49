// C[M,N] = A[M,K] · B[K,N], f32, row-major. The classic two-level tiling: a workgroup owns a
// tileM×tileN block of C and walks K in steps of tileK, staging an A tile and a B tile in shared
// memory; each invocation accumulates a blockM×blockN register block from the staged tiles.
// Any M, N, K: loads outside the matrices fill zeros and stores outside C are skipped, while every
// invocation still reaches every barrier (the K loop is uniform: its bound is a uniform).
import { kernel, storage } from '../dsl/index.js';
import type { Caps, Val, Var } from '../dsl/index.js';
import { BASELINE_CAPS } from '../dsl/types.js';

export interface MatmulTiledParams {
  /** Rows of C per workgroup. */
  tileM?: number;
  /** Columns of C per workgroup. */
  tileN?: number;
  /** Depth of the K slice staged in shared memory per step. */
  tileK?: number;
  /** Rows of C per invocation (register block). */
  blockM?: number;
  /** Columns of C per invocation (register block). */
  blockN?: number;
  /** Unroll the loop over the staged K slice at build time (straight-line code, constant offsets). */
  unrollK?: boolean;
  caps?: Caps;
}
export type MatmulTiledConfig = Required<Omit<MatmulTiledParams, 'caps' | 'unrollK'>> & { unrollK?: boolean };

/** The variants `kiln tune` measures (each fits the baseline caps: ≤ 256 invocations, ≤ 16 KiB). */
export const MATMUL_TILED_SPACE: MatmulTiledConfig[] = [
  { tileM: 128, tileN: 128, tileK: 16, blockM: 8, blockN: 8 },
  { tileM: 128, tileN: 128, tileK: 8, blockM: 8, blockN: 8 },
  { tileM: 128, tileN: 64, tileK: 16, blockM: 8, blockN: 4 },
  { tileM: 64, tileN: 128, tileK: 16, blockM: 4, blockN: 8 },
  { tileM: 64, tileN: 64, tileK: 16, blockM: 4, blockN: 4 },
  { tileM: 64, tileN: 64, tileK: 32, blockM: 4, blockN: 4 },
  { tileM: 32, tileN: 32, tileK: 32, blockM: 2, blockN: 2 },
  { tileM: 16, tileN: 16, tileK: 16, blockM: 1, blockN: 1 },
];

/**
 * Default tiling. 128×128×16 with 8×8 register blocks (16 KiB of shared tiles, 256 invocations:
 * within the baseline caps) was fastest on both the CPU executor and llvmpipe (bench/notes/dsl.md).
 * Problems too small to give at least `minWorkgroups` of those tiles use 64×64 tiles instead, so
 * several workers or cores still get work.
 */
export function matmulTiledDefaults(caps: Caps = BASELINE_CAPS, shape?: { M: number; N: number }, minWorkgroups = 4): MatmulTiledConfig {
  const big: MatmulTiledConfig = { tileM: 128, tileN: 128, tileK: 16, blockM: 8, blockN: 8 };
  const small: MatmulTiledConfig = { tileM: 64, tileN: 64, tileK: 16, blockM: 4, blockN: 4 };
  const fits = caps.maxWorkgroupStorage >= 4 * big.tileK * (big.tileM + big.tileN) && caps.maxInvocationsPerWorkgroup >= 256;
  if (!fits) return small;
  if (shape && Math.ceil(shape.M / big.tileM) * Math.ceil(shape.N / big.tileN) < minWorkgroups) return small;
  return big;
}

export function matmulTiledLabel(c: MatmulTiledConfig): string {
  return `matmulTiled_${c.tileM}x${c.tileN}x${c.tileK}_${c.blockM}x${c.blockN}${c.unrollK ? '_unrolled' : ''}`;
}

export function matmulTiled(p: MatmulTiledParams = {}) {
  const caps = p.caps ?? BASELINE_CAPS;
  const cfg: MatmulTiledConfig = { ...matmulTiledDefaults(caps), ...stripUndefined(p) };
  const { tileM, tileN, tileK, blockM, blockN } = cfg;
  const unrollK = cfg.unrollK ?? false;
  const name = 'matmulTiled';
  for (const [what, v] of Object.entries({ tileM, tileN, tileK, blockM, blockN })) {
    if (!Number.isInteger(v) || v < 1) throw new Error(`${name}: ${what} = ${v} is not a positive integer`);
  }
  if (tileM % blockM) throw new Error(`${name}: tileM ${tileM} is not a multiple of blockM ${blockM}`);
  if (tileN % blockN) throw new Error(`${name}: tileN ${tileN} is not a multiple of blockN ${blockN}`);
  // Invocations laid out threadsN × threadsM; invocation (tx, ty) owns rows ty + i·threadsM and
  // columns tx + j·threadsN of the tile (strided, so neighbours read neighbouring shared words).
  const threadsN = tileN / blockN, threadsM = tileM / blockM;
  const invocations = threadsN * threadsM;

  return kernel({
    name,
    params: { tileM, tileN, tileK, blockM, blockN, unrollK },
    caps,
    workgroupSize: [threadsN, threadsM],
    bindings: {
      A: storage('f32', 'read', { shape: '[M, K]' }),
      B: storage('f32', 'read', { shape: '[K, N]' }),
      C: storage('f32', 'read_write', { shape: '[M, N]' }),
    },
    uniforms: { M: 'u32', N: 'u32', K: 'u32' },
    grid: `[ceil(N / ${tileN}), ceil(M / ${tileM})]`,
    body(k, { A, B, C }, { M, N, K }) {
      // A tile stored k-major (As[kk·tileM + m]) so the inner loop reads a column of A per kk.
      const As = k.shared('As', 'f32', tileK * tileM);
      const Bs = k.shared('Bs', 'f32', tileK * tileN);
      const tx = k.let('tx', k.localId.x);
      const ty = k.let('ty', k.localId.y);
      const lid = k.let('lid', k.localIndex);
      const row0 = k.let('row0', k.workgroupId.y.mul(tileM));
      const col0 = k.let('col0', k.workgroupId.x.mul(tileN));

      const acc: Var<'f32'>[][] = [];
      for (let i = 0; i < blockM; i++) {
        acc.push([]);
        for (let j = 0; j < blockN; j++) acc[i]!.push(k.var(`acc${i}_${j}`, 'f32', 0));
      }

      /** Copy `total` elements into shared memory, spread over the invocations; outside → 0. */
      const stage = (tag: string, total: number, dst: typeof As, src: typeof A,
        at: (e: Val<'u32'>) => { inside: Val<'bool'>; from: Val<'u32'>; to: Val<'u32'> }) => {
        for (let s = 0; s < Math.ceil(total / invocations); s++) {
          const e = k.let(`${tag}e${s}`, plus(lid, s * invocations));
          const put = () => {
            const q = at(e);
            const v = k.var(`${tag}v${s}`, 'f32', 0);
            k.if(q.inside, () => v.set(src.at(q.from)));
            dst.set(q.to, v);
          };
          if ((s + 1) * invocations > total) k.if(e.lt(total), put);
          else put();
        }
      };

      k.for('k0', k.u32(0), K, (k0) => {
        // A tile: tileM rows × tileK columns; consecutive invocations read consecutive k (coalesced).
        stage('a', tileM * tileK, As, A, (e) => {
          const m = k.let('am', e.div(tileK)), kk = k.let('ak', e.rem(tileK));
          const r = row0.add(m), c = k0.add(kk);
          return { inside: r.lt(M).and(c.lt(K)), from: r.mul(K).add(c), to: kk.mul(tileM).add(m) };
        });
        // B tile: tileK rows × tileN columns; consecutive invocations read consecutive n.
        stage('b', tileK * tileN, Bs, B, (e) => {
          const kk = k.let('bk', e.div(tileN)), n = k.let('bn', e.rem(tileN));
          const r = k0.add(kk), c = col0.add(n);
          return { inside: r.lt(K).and(c.lt(N)), from: r.mul(N).add(c), to: e };
        });
        k.barrier();
        // One rank-1 update of the register block per kk: blockM + blockN shared loads feed
        // blockM·blockN multiply-adds.
        const rank1 = (aAt: (i: number) => Val<'u32'>, bAt: (j: number) => Val<'u32'>) => {
          const a: Val<'f32'>[] = [], b: Val<'f32'>[] = [];
          for (let i = 0; i < blockM; i++) a.push(k.let(`a${i}`, As.at(aAt(i))));
          for (let j = 0; j < blockN; j++) b.push(k.let(`b${j}`, Bs.at(bAt(j))));
          for (let i = 0; i < blockM; i++) {
            for (let j = 0; j < blockN; j++) acc[i]![j]!.set(acc[i]![j]!.add(a[i]!.mul(b[j]!)));
          }
        };
        if (unrollK) {
          for (let kk = 0; kk < tileK; kk++) rank1((i) => plus(ty, kk * tileM + i * threadsM), (j) => plus(tx, kk * tileN + j * threadsN));
        } else {
          k.for('kk', k.u32(0), tileK, (kk) => rank1(
            (i) => plus(kk.mul(tileM).add(ty), i * threadsM), (j) => plus(kk.mul(tileN).add(tx), j * threadsN)));
        }
        // Everyone has finished reading this K slice before the next one overwrites it.
        k.barrier();
      }, tileK);

      for (let i = 0; i < blockM; i++) {
        const r = k.let(`r${i}`, plus(row0.add(ty), i * threadsM));
        k.if(r.lt(M), () => {
          for (let j = 0; j < blockN; j++) {
            const c = k.let(`c${i}_${j}`, plus(col0.add(tx), j * threadsN));
            k.if(c.lt(N), () => C.set(r.mul(N).add(c), acc[i]![j]!));
          }
        });
      }
    },
  });
}

/** v + c, without a `+ 0` in the generated code. */
function plus(v: Val<'u32'>, c: number): Val<'u32'> {
  return c === 0 ? v : v.add(c);
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([key, v]) => v !== undefined && key !== 'caps')) as Partial<T>;
}
