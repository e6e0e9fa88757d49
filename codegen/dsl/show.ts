// Render an IR expression as short WGSL-like text, for error messages and headers.
import type { Expr } from './ir.js';

const SYM: Record<string, string> = {
  add: '+', sub: '-', mul: '*', div: '/', rem: '%', lt: '<', le: '<=', gt: '>', ge: '>=', eq: '==',
  ne: '!=', and: '&&', or: '||', band: '&', bor: '|', bxor: '^', shl: '<<', shr: '>>',
};

export function show(e: Expr): string {
  switch (e.k) {
    case 'const': return String(e.v);
    case 'var': case 'uniform': return e.name;
    case 'builtin': return e.name;
    case 'load': return `${e.name}[${show(e.index)}]`;
    case 'bin': return `(${show(e.a)} ${SYM[e.op]} ${show(e.b)})`;
    case 'un': return `${e.op === 'neg' ? '-' : e.op === 'not' ? '!' : '~'}${show(e.a)}`;
    case 'call': return `${e.fn}(${e.args.map(show).join(', ')})`;
    case 'select': return `(${show(e.cond)} ? ${show(e.a)} : ${show(e.b)})`;
    case 'cast': return `${e.t}(${show(e.a)})`;
    case 'bitcast': return `bitcast<${e.t}>(${show(e.a)})`;
    case 'pack2x16float': case 'unpack2x16float': case 'nibblePairF16': case 'nibblePairValues': return `${e.k}(${show(e.a)})`;
    case 'sub2x16float': return `sub2x16float(${show(e.a)}, ${show(e.b)})`;
    case 'vec': return `${e.t}(${e.args.map(show).join(', ')})`;
    case 'swizzle': return `${show(e.a)}.${e.comps}`;
    case 'subgroup': return `subgroup_${e.op}(${show(e.a)}${e.b ? ', ' + show(e.b) : ''})`;
    case 'lanes': return `lanes((${e.params.map((p) => p.name).join(', ')}) => ${show(e.body)}, ${e.args.map(show).join(', ')})`;
    case 'intrinsic': return `${e.name}(${e.args.map(show).join(', ')})`;
  }
}
