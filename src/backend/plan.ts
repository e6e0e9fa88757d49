// Runs a multi-launch op on any device: allocates its scratch buffers (cached by op and size)
// and queues its launches in order.
import type { BindingSpec } from '../../codegen/dsl/builder.js';
import type { Op } from '../../codegen/dsl/plan.js';
import { type Device, type DeviceBuffer, LaunchError } from './device.js';
import { scratchBuffer } from './scratch.js';
import { dims } from '../../codegen/dsl/dims.js';
import { checkBindingShape } from './validate.js';

export function runPlan<B extends Record<string, BindingSpec>, S extends Record<string, number>>(
  dev: Device, op: Op<B, S>, bindings: Record<string, DeviceBuffer>, sizes: S,
): void {
  // Shapes may use the run's sizes and those the op was built for; a shape naming neither is left
  // to the op's plan and the kernels' own launch checks.
  const known: Record<string, number> = { ...op.fixedSizes, ...sizes };
  for (const [b, spec] of Object.entries(op.bindings)) {
    const buf = bindings[b];
    if (!buf) throw new LaunchError(`op '${op.name}': binding '${b}' (${spec.t}) is missing`);
    if (buf.dtype !== spec.t) throw new LaunchError(`op '${op.name}': binding '${b}' expects ${spec.t} but buffer '${buf.label}' holds ${buf.dtype}`);
    if (spec.shape && dims(spec.shape).names.every((n) => typeof known[n] === 'number')) checkBindingShape(`op '${op.name}'`, 'the op', b, spec, buf, known);
  }
  const plan = op.plan(sizes);
  const temps: Record<string, DeviceBuffer> = {};
  for (const [name, t] of Object.entries(plan.temps)) {
    // A caller may bring a temp itself (one whose address must stay fixed, e.g. for a captured
    // graph); the kernels' own length checks then apply to it.
    if (bindings[name]) continue;
    const buf = scratchBuffer(dev, `${op.name}.${name}`, t.t, t.length);
    temps[name] = buf;
  }
  for (const step of plan.steps) {
    const bound: Record<string, DeviceBuffer> = {};
    for (const [kb, src] of Object.entries(step.bind)) {
      const buf = bindings[src] ?? temps[src];
      if (!buf) throw new LaunchError(`op '${op.name}': step '${step.kernel.ir.name}' binds '${kb}' to unknown '${src}'`);
      bound[kb] = buf;
    }
    dev.launch(step.kernel, bound, step.uniforms);
  }
}
