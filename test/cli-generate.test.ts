// `kiln generate` as a user runs it (tsx, cpu): the greedy continuation of the golden prompt, and
// exactly the same text with speculative decoding (--draft brown-draft, --draft ngram).
import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { kiln } from './kilnCli.js';
import { brown, SHARED } from './runtimeGolden.js';

const DRAFT = `${SHARED}/brown-draft`;

describe('kiln generate', () => {
  const g = brown.target;
  const steps = g.greedy_ids_fp32.length - g.prompt_ids.length;
  const args = ['generate', '-p', 'The jury said that', '-n', String(steps), '--temperature', '0', '--device', 'cpu'];

  it('prints the greedy continuation PyTorch gives, and the same with --draft (model and n-gram)', async () => {
    const plain = await kiln(...args);
    expect(plain.err).not.toMatch(/kiln: /);
    expect(plain.code).toBe(0);
    expect(plain.out.trimEnd()).toBe(g.greedy_text_fp32);
    const runs = [kiln(...args, '--draft', 'ngram', '--spec-k', '3')];
    if (fs.existsSync(DRAFT)) runs.push(kiln(...args, '--draft', DRAFT));
    for (const r of await Promise.all(runs)) {
      expect(r.code, r.err).toBe(0);
      expect(r.out).toBe(plain.out);
      expect(r.err).toMatch(/speculation \(.*\): \d+\/\d+ drafts accepted/);
    }
  });
});
