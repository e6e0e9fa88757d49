// `kiln tune`: placeholder replaced below once the variant spaces settle.
import type { ParsedArgs } from './util/args.js';
export async function tuneCommand(_a: ParsedArgs): Promise<void> {
  throw new Error('kiln tune: not available in this build');
}
