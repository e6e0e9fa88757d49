// What the browser build has in place of src/backend/webgpu/dawn.ts (scripts/browser-build.mjs
// swaps it in): a page's WebGPU is navigator.gpu, never Dawn's Node package.
import { BackendUnavailableError } from '../backend/device.js';

export async function loadDawn(): Promise<(options: string[]) => GPU> {
  throw new BackendUnavailableError('webgpu', "Dawn (the 'webgpu' package) runs only in Node; in a browser WebGPU is navigator.gpu");
}

export function useSurfacelessEgl(): string {
  return '';
}

export async function eglHint(): Promise<string> {
  return '';
}
