// Runs a multi-launch op on any device: allocates its scratch buffers (cached by op and size)
// and queues its launches in order.
import type { BindingSpec } from '../../codegen/dsl/builder.js';
import type { Op } from '../../codegen/dsl/plan.js';
import { type Device, type DeviceBuffer, LaunchError } from './device.js';

const scratch = new WeakMap<Device, Map<string, DeviceBuffer>>();

export function runPlan<B extends Record<string, BindingSpec>, S extends Record<string, number>>(
  dev: Device, op: Op<B, S>, bindings: Record<string, DeviceBuffer>, sizes: S,
): void {
  for (const [b, spec] of Object.entries(op.bindings)) {
    const buf = bindings[b];
    if (!buf) throw new LaunchError(`op '${op.name}': binding '${b}' (${spec.t}) is missing`);
    if (buf.dtype !== spec.t) throw new LaunchError(`op '${op.name}': binding '${b}' expects ${spec.t} but buffer '${buf.label}' holds ${buf.dtype}`);
  }
  const plan = op.plan(sizes);
  let cache = scratch.get(dev);
  if (!cache) scratch.set(dev, (cache = new Map()));
  const temps: Record<string, DeviceBuffer> = {};
  for (const [name, t] of Object.entries(plan.temps)) {
    // A caller may bring a temp itself (one whose address must stay fixed, e.g. for a captured
    // graph); the kernels' own length checks then apply to it.
    if (bindings[name]) continue;
    const key = `${op.name}/${name}/${t.t}`;
    let buf = cache.get(key);
    if (!buf || buf.length < t.length) {
      if (buf) dev.free(buf);
      buf = dev.alloc(t.t, Math.max(1, t.length), `${op.name}.${name}`);
      cache.set(key, buf);
    }
    temps[name] = buf;
  }
  for (const step of plan.steps) {
    const bound: Record<string, DeviceBuffer> = {};
    for (const [kb, src] of Object.entries(step.bind)) {
      const buf = bindings[src] ?? temps[src];
      if (!buf) throw new LaunchError(`op '${op.name}': step '${step.kernel.ir.name}' binds '${kb}' to unknown '${src}'`);
      bound[kb] = buf;
    }
    dev.launch(step.kernel, bound as never, step.uniforms as never);
  }
}
