// Chat: a conversation rendered by the model's chat template, then generated like any prompt.
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createDevice } from '../src/backend/index.js';
import { GenerationError, loadModel } from '../src/llm.js';

const MODELS = join(import.meta.dirname, '..', 'models');

describe('chat templates', () => {
  // brown-draft has no chat template: give a copy a small one, as tokenizer_config.json holds it.
  const dir = mkdtempSync(join(tmpdir(), 'kiln-chat-'));
  cpSync(join(MODELS, 'brown-draft'), dir, { recursive: true });
  const cfgPath = join(dir, 'tokenizer_config.json');
  const cfg = JSON.parse(readFileSync(cfgPath, 'utf8'));
  cfg.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";
  writeFileSync(cfgPath, JSON.stringify(cfg));
  const devP = createDevice('cpu');
  afterAll(async () => (await devP).destroy());

  it('renders the conversation with the template and encodes it without adding special tokens twice', async () => {
    const llm = await loadModel(dir, { device: await devP });
    try {
      const messages = [{ role: 'user', content: 'The jury said' }];
      const ids = llm.chatIds(messages);
      const text = `${llm.tokenizer!.decode([ids[0]!])}user: The jury said\nassistant:`;
      expect(ids[0]).toBe(2047); // the template's own BOS, once
      expect(ids.filter((t) => t === 2047)).toHaveLength(1);
      expect(llm.decode(ids)).toBe(text);
      // chat() is generate() on those ids: same seed, same tokens.
      const viaChat: number[] = [], viaIds: number[] = [];
      for await (const t of llm.chat(messages, { temperature: 0.9, seed: 5, maxTokens: 8 })) if (t.tokenId >= 0) viaChat.push(t.tokenId);
      for await (const t of llm.generate(ids, { temperature: 0.9, seed: 5, maxTokens: 8 })) if (t.tokenId >= 0) viaIds.push(t.tokenId);
      expect(viaChat).toEqual(viaIds);
      expect(viaChat.length).toBeGreaterThan(0);
    } finally {
      await llm.close();
    }
  });

  it('a model without a chat template says so', async () => {
    const llm = await loadModel(join(MODELS, 'brown-draft'), { device: await devP });
    try {
      expect(() => llm.chatIds([{ role: 'user', content: 'hi' }])).toThrow(GenerationError);
      expect(() => llm.chatIds([{ role: 'user', content: 'hi' }])).toThrow(/has no chat_template/);
    } finally {
      await llm.close();
    }
  });
});
