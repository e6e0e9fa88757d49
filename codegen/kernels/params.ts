// Compile-time parameters from the command line (`kiln codegen --kernel F --params JSON`), read
// field by field so a wrong type names the field instead of surfacing deep inside a kernel.
type Params = Record<string, unknown>;

/** A number field, or `def` when absent. */
export function num(p: Params, k: string, def?: number): number {
  const v = p[k] ?? def;
  if (typeof v !== 'number') throw new Error(`parameter '${k}' must be a number, got ${JSON.stringify(p[k])}`);
  return v;
}

/** The number fields among `keys` that are present. */
export function optionalNums<K extends string>(p: Params, keys: readonly K[]): Partial<Record<K, number>> {
  const out: Partial<Record<K, number>> = {};
  for (const k of keys) if (p[k] !== undefined) out[k] = num(p, k);
  return out;
}

/** A string field that must be one of `values` (`def` when absent). */
export function oneOf<const T extends string>(p: Params, k: string, values: readonly T[], def: T): T {
  const v = p[k] ?? def;
  const hit = values.find((x) => x === v);
  if (hit === undefined) throw new Error(`parameter '${k}' must be one of ${values.join(', ')}, got ${JSON.stringify(p[k])}`);
  return hit;
}

/** A boolean field, or undefined when absent. */
export function optionalBool(p: Params, k: string): boolean | undefined {
  const v = p[k];
  if (v !== undefined && typeof v !== 'boolean') throw new Error(`parameter '${k}' must be true or false, got ${JSON.stringify(v)}`);
  return v;
}
