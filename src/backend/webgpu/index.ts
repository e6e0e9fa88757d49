// WebGPU backend: Dawn (the `webgpu` package) in Node, navigator.gpu in browsers. Kernels compile
// from their IR through the WGSL emitter.
import { emitWGSL } from '../../../codegen/emit/wgsl.js';
import type { Device } from '../device.js';
import type { DeviceOptions } from '../index.js';
import { openDevice } from './adapter.js';
import { type EmitWGSL, WebGPUDevice } from './device.js';

export { WebGPUDevice, type EmitWGSL } from './device.js';

/**
 * A WebGPU device: a hardware adapter if there is one, else (with allowSoftware: true) a software
 * one — in Node, Mesa llvmpipe through Dawn's OpenGL ES backend. Throws BackendUnavailableError
 * saying why when there is none.
 */
export async function createWebGPUDevice(opts: DeviceOptions = {}): Promise<Device> {
  return openWebGPUDevice(opts, emitWGSL);
}

/** The same, with the WGSL source produced by `emit` (tests and tools that inspect the device). */
export async function openWebGPUDevice(opts: DeviceOptions, emit: EmitWGSL): Promise<WebGPUDevice> {
  return new WebGPUDevice(await openDevice(opts.allowSoftware === true), emit);
}
