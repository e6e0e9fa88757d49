// What the browser build has in place of src/backend/cuda (scripts/browser-build.mjs swaps it in):
// CUDA needs a native Node addon, so in a page it is never available.
import { BackendUnavailableError, type Device } from '../backend/device.js';

export async function createCudaDevice(): Promise<Device> {
  throw new BackendUnavailableError('cuda', 'CUDA runs only in Node (a native addon); in the browser use webgpu or cpu');
}
