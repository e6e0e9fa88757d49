import { create, globals } from 'webgpu';
import { readFileSync } from 'node:fs';
Object.assign(globalThis, globals);
const gpu = create(['backend=opengles']);
const ad = await gpu.requestAdapter({ featureLevel: 'compatibility' });
const dev = await ad.requestDevice();
for (const f of process.argv.slice(2)) {
  const m = dev.createShaderModule({ code: readFileSync(f, 'utf8') });
  const info = await m.getCompilationInfo();
  console.log(f, info.messages.map(m => `${m.type}: ${m.lineNum}:${m.linePos} ${m.message}`));
}
process.exit(0);
