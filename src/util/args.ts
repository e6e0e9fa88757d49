// A small, strict argument parser for the CLIs: --name value, --flag, positionals.
export interface ParsedArgs {
  positional: string[];
  options: Map<string, string | true>;
}

export function parseArgs(argv: string[], flags: readonly string[] = []): ParsedArgs {
  const positional: string[] = [];
  const options = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') { positional.push(...argv.slice(i + 1)); break; }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq > 0 ? a.slice(2, eq) : a.slice(2);
      if (eq > 0) options.set(name, a.slice(eq + 1));
      else if (flags.includes(name)) options.set(name, true);
      else {
        const v = argv[i + 1];
        if (v === undefined || v.startsWith('--')) throw new Error(`option --${name} needs a value`);
        options.set(name, v);
        i++;
      }
    } else positional.push(a);
  }
  return { positional, options };
}

export function str(a: ParsedArgs, name: string): string | undefined;
export function str(a: ParsedArgs, name: string, def: string): string;
export function str(a: ParsedArgs, name: string, def?: string): string | undefined {
  const v = a.options.get(name);
  if (v === true) throw new Error(`option --${name} needs a value`);
  return v ?? def;
}

export function num(a: ParsedArgs, name: string, def?: number): number | undefined {
  const v = str(a, name);
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`option --${name} must be a number, got '${v}'`);
  return n;
}

export function flag(a: ParsedArgs, name: string): boolean {
  return a.options.get(name) === true;
}

/** Fail on options the command does not know (typos must not be silently ignored). */
export function rejectUnknown(a: ParsedArgs, known: readonly string[], cmd: string): void {
  for (const k of a.options.keys()) {
    if (!known.includes(k)) throw new Error(`${cmd}: unknown option --${k} (known: ${known.map((x) => '--' + x).join(', ')})`);
  }
}
