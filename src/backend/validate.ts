// Checks shared by every backend, run before any device work.
import type { Bindings, Kernel, Uniforms, UniformValues } from '../../codegen/dsl/builder.js';
import { type Dims, dims } from '../../codegen/dsl/dims.js';
import { type DeviceBuffer, LaunchError } from './device.js';

// Shapes are parsed once per text, not once per launch (a decode step launches hundreds of kernels).
const parsedShapes = new Map<string, Dims>();
function parsedShape(text: string): Dims {
  let d = parsedShapes.get(text);
  if (!d) parsedShapes.set(text, (d = dims(text)));
  return d;
}

/**
 * A buffer bound to a binding with a shape holds at least the shape's elements for these sizes
 * (a kernel's uniforms, or an op's sizes). `owner` and `who` word the error: "kernel 'x'", "the launch".
 */
export function checkBindingShape(owner: string, who: string, b: string, spec: Bindings[string], buf: DeviceBuffer,
  sizes: Readonly<Record<string, number>>): void {
  if (!spec.shape) return;
  const shape = parsedShape(spec.shape);
  let need: number;
  try {
    need = shape.elements(sizes);
  } catch (e) {
    throw new LaunchError(`${owner}: binding '${b}': ${(e as Error).message}`, { cause: e });
  }
  if (buf.length < need) {
    const given = shape.names.map((u) => `${u} = ${sizes[u]}`).join(', ');
    throw new LaunchError(`${owner}: buffer '${buf.label}' bound to '${b}' has ${buf.length} elements, ${who} needs ${need} = ${spec.t} ${spec.shape} with ${given}`);
  }
}

export function validateLaunch(kernel: Kernel, bindings: Record<string, DeviceBuffer | undefined>, uniforms: Record<string, number>): void {
  const name = kernel.ir.name;
  for (const [b, spec] of Object.entries(kernel.bindings as Bindings)) {
    const buf = bindings[b];
    if (!buf) throw new LaunchError(`kernel '${name}': binding '${b}' (${spec.t}) is missing`);
    if (buf.dtype !== spec.t) throw new LaunchError(`kernel '${name}': binding '${b}' expects ${spec.t} but buffer '${buf.label}' holds ${buf.dtype}`);
    // A vector binding sees whole vectors only: a partial last vector would be read past the end.
    const w = spec.vec ?? 1;
    if (buf.length % w) {
      throw new LaunchError(`kernel '${name}': buffer '${buf.label}' bound to '${b}' (vec${w}<${spec.t}>) has ${buf.length} elements, not a multiple of ${w}`);
    }
  }
  for (const b of Object.keys(bindings)) {
    if (!(b in kernel.bindings)) throw new LaunchError(`kernel '${name}' has no binding '${b}'`);
  }
  for (const [u, t] of Object.entries(kernel.uniforms as Uniforms)) {
    const v = uniforms[u];
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new LaunchError(`kernel '${name}': uniform '${u}' (${t}) is ${v}`);
    if (t === 'u32' && (!Number.isInteger(v) || v < 0 || v > 0xffffffff)) throw new LaunchError(`kernel '${name}': uniform '${u}' = ${v} is not a u32`);
    if (t === 'i32' && (!Number.isInteger(v) || v < -0x80000000 || v > 0x7fffffff)) throw new LaunchError(`kernel '${name}': uniform '${u}' = ${v} is not an i32`);
  }
  for (const [b, spec] of Object.entries(kernel.bindings as Bindings)) {
    const buf = bindings[b];
    if (buf) checkBindingShape(`kernel '${name}'`, 'the launch', b, spec, buf, uniforms);
  }
  let grid: [number, number, number];
  try {
    grid = kernel.grid(uniforms as UniformValues<Uniforms>);
  } catch (e) {
    throw new LaunchError(`kernel '${name}': grid ${kernel.ir.gridDoc}: ${(e as Error).message}`, { cause: e });
  }
  if (!grid.every((g) => Number.isInteger(g) && g >= 0)) throw new LaunchError(`kernel '${name}': grid ${grid.join('x')} is not whole numbers`);
}
