// out[i] = a[i] + b[i]: the smallest complete kernel, and the README's example.
import { kernel, storage } from '../dsl/index.js';
import type { Caps } from '../dsl/index.js';

export interface VectorAddParams { workgroupSize?: number; caps?: Caps }

export function vectorAdd(p: VectorAddParams = {}) {
  const wg = p.workgroupSize ?? 256;
  return kernel({
    name: 'vectorAdd',
    params: { workgroupSize: wg },
    caps: p.caps,
    workgroupSize: wg,
    bindings: {
      a: storage('f32', 'read', { shape: '[n]' }),
      b: storage('f32', 'read', { shape: '[n]' }),
      out: storage('f32', 'read_write', { shape: '[n]' }),
    },
    uniforms: { n: 'u32' },
    grid: `[ceil(n / ${wg})]`,
    body(k, { a, b, out }, { n }) {
      const i = k.let('i', k.globalId.x);
      k.if(i.lt(n), () => out.set(i, a.at(i).add(b.at(i))));
    },
  });
}
