// The commands' argument parser: short flags, repeatable options, values that must be there.
import { describe, expect, it } from 'vitest';
import { kiln } from './kilnCli.js';
import { parseArgs, str, strs } from '../src/util/args.js';



describe('parseArgs', () => {
  it('short flags -m -p -n -h are the long ones', () => {
    const a = parseArgs(['-m', 'dir', '-p', 'The jury', '-n', '5', '-h']);
    expect(str(a, 'model')).toBe('dir');
    expect(str(a, 'prompt')).toBe('The jury');
    expect(str(a, 'max-tokens')).toBe('5');
    expect(a.options.get('help')).toBe(true);
  });

  it('a repeated option keeps every value (and the last for str)', () => {
    const a = parseArgs(['--stop', '.', '--stop=!', '--stop', '\n']);
    expect(strs(a, 'stop')).toEqual(['.', '!', '\n']);
    expect(str(a, 'stop')).toBe('\n');
    expect(strs(a, 'seed')).toEqual([]);
  });

  it('an option without its value is an error naming it, with = or without', () => {
    expect(() => parseArgs(['--seed='])).toThrow(/--seed needs a value/);
    expect(() => parseArgs(['--temperature='])).toThrow(/--temperature needs a value/);
    expect(() => parseArgs(['--seed'])).toThrow(/--seed needs a value/);
    expect(() => parseArgs(['--model', '-p', 'x'])).toThrow(/--model needs a value/);
    expect(() => parseArgs(['--help=yes'])).toThrow(/--help takes no value/);
  });

  it('--help is a flag for every command; other words stay positional', () => {
    const a = parseArgs(['ppl', '--help', 'more']);
    expect(a.options.get('help')).toBe(true);
    expect(a.positional).toEqual(['ppl', 'more']);
  });
});

describe('kiln commands refuse bad options before loading, naming the flag', () => {
  it('help per command, and errors with one prefix and nothing on stdout', async () => {
    const [genHelp, serveHelp, topP, ids, seed, maxSeqs] = await Promise.all([
      kiln('generate', '-h'), kiln('serve', '--help'), kiln('generate', '--top-p', '3', '-p', 'hi'),
      kiln('generate', '--prompt-ids', '2047,,10'), kiln('generate', '-p', 'hi', '--seed='), kiln('serve', '--max-seqs', '0'),
    ]);
    expect(genHelp.code).toBe(0);
    expect(genHelp.out).toMatch(/--max-tokens N\s+new tokens at most \(default 128\)/);
    expect(genHelp.out).toMatch(/generation_config\.json/);
    expect(serveHelp.code).toBe(0);
    expect(serveHelp.out).toMatch(/--port P\s+port \(default 8000/);
    for (const [r, msg] of [[topP, /^kiln: --top-p must be in \(0, 1\], got 3\n$/], [ids, /--prompt-ids: entry 2 '' is not a token id/],
      [seed, /option --seed needs a value/], [maxSeqs, /--max-seqs must be an integer in \[1/]] as const) {
      expect(r.code).toBe(1);
      expect(r.err).toMatch(msg);
      expect(r.err).not.toMatch(/kiln: kiln/);
      expect(r.out).toBe('');
    }
  });
});
