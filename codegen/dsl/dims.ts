// Tensor shapes written once, as text: '[M, K]', '[K, Nw / 8]', '[ceil(K / segLen), 8, Nw]'. The
// same string is evaluated against a launch's uniforms (launch validation: how many elements a
// binding needs) and printed in generated files' headers and in errors. Numbers, uniform names,
// + − * / (exact: a dimension must come out whole), parentheses, ceil/floor/min/max.

type Node =
  | { k: 'num'; v: number }
  | { k: 'name'; name: string }
  | { k: 'op'; op: '+' | '-' | '*' | '/'; a: Node; b: Node }
  | { k: 'fn'; fn: 'ceil' | 'floor' | 'min' | 'max'; args: Node[] };

const FNS = new Set(['ceil', 'floor', 'min', 'max']);

export class DimsError extends Error {}

/** A parsed shape: its text and its dimensions for given sizes. */
export interface Dims {
  readonly text: string;
  /** Each dimension's own text. */
  readonly parts: readonly string[];
  /** Names the shape depends on (uniforms or op sizes). */
  readonly names: readonly string[];
  /** The dimensions for these sizes; throws DimsError naming the shape when one is missing or not whole. */
  eval(sizes: Readonly<Record<string, number>>): number[];
  /** Product of the dimensions. */
  elements(sizes: Readonly<Record<string, number>>): number;
}

function tokenize(text: string): string[] {
  const tokens = text.match(/\s*([A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?|[-+*/·(),[\]])/gy) ?? [];
  const consumed = tokens.join('').length;
  if (text.slice(consumed).trim() !== '') throw new DimsError(`shape '${text}': cannot read '${text.slice(consumed).trim()}'`);
  return tokens.map((t) => t.trim()).map((t) => (t === '·' ? '*' : t));
}

/** Split at commas outside parentheses. */
function splitTop(s: string): string[] {
  const out: string[] = [];
  let depth = 0, cur = '';
  for (const c of s) {
    if (c === '(') depth++;
    if (c === ')') depth--;
    if (c === ',' && depth === 0) { out.push(cur.trim()); cur = ''; } else cur += c;
  }
  if (cur.trim()) out.push(cur.trim());
  return out;
}

/** Parse '[d0, d1, …]' (or a single expression, a one-dimensional shape). */
export function dims(text: string): Dims {
  const toks = tokenize(text);
  let i = 0;
  const peek = () => toks[i];
  const take = (want?: string): string => {
    const t = toks[i++];
    if (t === undefined || (want !== undefined && t !== want)) throw new DimsError(`shape '${text}': expected ${want ?? 'more'} at token ${i}, got ${t ?? 'the end'}`);
    return t;
  };
  const expr = (): Node => {
    let a = term();
    while (peek() === '+' || peek() === '-') { const op = take() as '+' | '-'; a = { k: 'op', op, a, b: term() }; }
    return a;
  };
  const term = (): Node => {
    let a = factor();
    while (peek() === '*' || peek() === '/') { const op = take() as '*' | '/'; a = { k: 'op', op, a, b: factor() }; }
    return a;
  };
  const factor = (): Node => {
    const t = take();
    if (t === '(') { const e = expr(); take(')'); return e; }
    if (/^\d/.test(t)) return { k: 'num', v: Number(t) };
    if (!/^[A-Za-z_]/.test(t)) throw new DimsError(`shape '${text}': unexpected '${t}'`);
    if (peek() !== '(') return { k: 'name', name: t };
    if (!FNS.has(t)) throw new DimsError(`shape '${text}': unknown function '${t}' (ceil, floor, min, max)`);
    take('(');
    const args = [expr()];
    while (peek() === ',') { take(','); args.push(expr()); }
    take(')');
    return { k: 'fn', fn: t as 'ceil' | 'floor' | 'min' | 'max', args };
  };
  const nodes: Node[] = [];
  if (peek() === '[') {
    take('[');
    if (peek() !== ']') {
      nodes.push(expr());
      while (peek() === ',') { take(','); nodes.push(expr()); }
    }
    take(']');
  } else {
    nodes.push(expr());
  }
  if (i !== toks.length) throw new DimsError(`shape '${text}': unexpected '${toks[i]}' after the shape`);
  const names = new Set<string>();
  const collect = (n: Node): void => {
    if (n.k === 'name') names.add(n.name);
    else if (n.k === 'op') { collect(n.a); collect(n.b); } else if (n.k === 'fn') n.args.forEach(collect);
  };
  nodes.forEach(collect);
  const value = (n: Node, s: Readonly<Record<string, number>>): number => {
    switch (n.k) {
      case 'num': return n.v;
      case 'name': {
        const v = s[n.name];
        if (typeof v !== 'number') throw new DimsError(`shape ${text}: '${n.name}' is not given`);
        return v;
      }
      case 'op': {
        const a = value(n.a, s), b = value(n.b, s);
        return n.op === '+' ? a + b : n.op === '-' ? a - b : n.op === '*' ? a * b : a / b;
      }
      case 'fn': {
        const xs = n.args.map((x) => value(x, s));
        return n.fn === 'ceil' ? Math.ceil(xs[0] ?? NaN) : n.fn === 'floor' ? Math.floor(xs[0] ?? NaN) : n.fn === 'min' ? Math.min(...xs) : Math.max(...xs);
      }
    }
  };
  const evalDims = (s: Readonly<Record<string, number>>): number[] => nodes.map((n, d) => {
    const v = value(n, s);
    if (!Number.isSafeInteger(v) || v < 0) {
      const given = [...names].map((k) => `${k} = ${s[k]}`).join(', ');
      throw new DimsError(`shape ${text}: dimension ${d} is ${v}, not a whole number (${given})`);
    }
    return v;
  });
  return {
    text: text.trim(),
    parts: splitTop(text.trim().replace(/^\[([\s\S]*)\]$/, '$1')),
    names: [...names],
    eval: evalDims,
    elements: (s) => evalDims(s).reduce((a, b) => a * b, 1),
  };
}
