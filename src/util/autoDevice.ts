// `--device auto` for the commands: the same order as createDevice('auto') (cuda, then webgpu on
// a real GPU, then cpu), but saying why it chose, and not starting Dawn at all where the machine
// has no GPU device node: Dawn's probe prints a native Vulkan warning there that nobody can act on.
import * as fs from 'node:fs';
import { createDevice } from '../backend/index.js';
import { type BackendKind, BackendUnavailableError, type Device } from '../backend/device.js';

function hasGpuNode(): string | null {
  try {
    const dri = fs.readdirSync('/dev/dri').find((f) => f.startsWith('renderD'));
    if (dri) return `/dev/dri/${dri}`;
  } catch { /* no /dev/dri */ }
  try {
    const nv = fs.readdirSync('/dev').find((f) => /^nvidia\d+$/.test(f));
    if (nv) return `/dev/${nv}`;
  } catch { /* no /dev */ }
  return null;
}

/** The device for a command's --device, and a short reason when it was chosen automatically. */
export async function chooseDevice(kind: BackendKind | 'auto'): Promise<{ device: Device; why: string }> {
  if (kind !== 'auto') return { device: await createDevice(kind), why: `--device ${kind}` };
  const reasons: string[] = [];
  try {
    return { device: await createDevice('cuda'), why: 'auto: a CUDA GPU is present' };
  } catch (e) {
    if (!(e instanceof BackendUnavailableError)) throw e;
    // "cuda backend not available: native addon not built: /path…" → "native addon not built".
    const why = e.message.split('\n')[0]!.replace(/^.*?not available:\s*/, '').split(':')[0]!.slice(0, 80);
    reasons.push(`no CUDA (${why})`);
  }
  // Windows and macOS have no /dev nodes to look at: probe WebGPU there as createDevice does.
  const node = process.platform === 'linux' ? hasGpuNode() : 'non-linux';
  if (node) {
    try {
      const d = await createDevice('webgpu', { allowSoftware: false });
      return { device: d, why: `auto: no CUDA; WebGPU on a GPU (${node})` };
    } catch (e) {
      if (!(e instanceof BackendUnavailableError)) throw e;
      reasons.push(`no hardware WebGPU adapter (${e.message.split('\n')[0]!.slice(0, 100)})`);
    }
  } else reasons.push('no GPU device node (/dev/dri/renderD*, /dev/nvidia*) for WebGPU');
  return { device: await createDevice('cpu'), why: `auto: ${reasons.join('; ')} → cpu (--device webgpu runs on llvmpipe)` };
}
