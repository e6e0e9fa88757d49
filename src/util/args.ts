// A small, strict argument parser for the CLIs: --name value, --flag, positionals.
export interface ParsedArgs {
  positional: string[];
  /** The last value of each option (true for a flag). */
  options: Map<string, string | true>;
  /** Every value of each option, in order (for options that may repeat, like --stop). */
  all: Map<string, string[]>;
}

/** Short forms shared by the commands, as in llama.cpp and vLLM. */
export const SHORT_FLAGS: Readonly<Record<string, string>> = { '-m': 'model', '-p': 'prompt', '-n': 'max-tokens', '-h': 'help' };

export function parseArgs(argv: string[], flags: readonly string[] = []): ParsedArgs {
  const positional: string[] = [];
  const options = new Map<string, string | true>();
  const all = new Map<string, string[]>();
  const set = (name: string, v: string | true) => {
    options.set(name, v);
    if (v !== true) all.set(name, [...(all.get(name) ?? []), v]);
  };
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i]!;
    if (a === '--') { positional.push(...argv.slice(i + 1)); break; }
    if (SHORT_FLAGS[a]) a = `--${SHORT_FLAGS[a]}`;
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq > 0 ? a.slice(2, eq) : a.slice(2);
      // --help is a flag everywhere: every command answers it.
      const isFlag = flags.includes(name) || name === 'help';
      if (eq > 0) {
        // `--seed=` would otherwise become Number('') = 0.
        if (eq === a.length - 1) throw new Error(`option --${name} needs a value (got '--${name}=')`);
        if (isFlag) throw new Error(`option --${name} takes no value`);
        set(name, a.slice(eq + 1));
      } else if (isFlag) set(name, true);
      else {
        const v = argv[i + 1];
        if (v === undefined || v.startsWith('--') || (SHORT_FLAGS[v] !== undefined)) throw new Error(`option --${name} needs a value`);
        set(name, v);
        i++;
      }
    } else positional.push(a);
  }
  return { positional, options, all };
}

/** Every value given for a repeatable option (empty when absent). */
export function strs(a: ParsedArgs, name: string): string[] {
  return a.all.get(name) ?? [];
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
