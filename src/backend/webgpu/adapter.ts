// Finding a WebGPU adapter and opening a device on it: navigator.gpu in browsers, the `webgpu`
// package (Dawn) in Node — a real GPU first, else Mesa llvmpipe through Dawn's OpenGL ES backend.
import { BackendUnavailableError } from '../device.js';
import type { Caps } from '../../../codegen/dsl/types.js';
import { eglHint, loadDawn, useSurfacelessEgl } from './dawn.js';
import { type VendorClass, vendorClass } from '../../../codegen/kernels/deviceProfile.js';

export interface OpenedDevice {
  device: GPUDevice;
  adapter: GPUAdapter;
  /** Keeps Dawn's instance alive while the device is used (Node); dropped on destroy. */
  instance: GPU;
  description: string;
  software: boolean;
  vendor: VendorClass;
  caps: Caps;
}

/** Limits requested explicitly: without them a device gets the defaults (8 storage buffers, 16 KiB shared). */
const REQUESTED_LIMITS = [
  'maxStorageBuffersPerShaderStage', 'maxComputeWorkgroupStorageSize', 'maxStorageBufferBindingSize',
  'maxBufferSize', 'maxComputeInvocationsPerWorkgroup', 'maxComputeWorkgroupSizeX', 'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupSizeZ', 'maxComputeWorkgroupsPerDimension', 'minUniformBufferOffsetAlignment',
] as const;
const OPTIONAL_FEATURES = ['shader-f16', 'subgroups'] as const;

const SOFTWARE = /llvmpipe|lavapipe|softpipe|swiftshader|software|basic render/i;

const unavailable = (reason: string) => new BackendUnavailableError('webgpu', reason);
const message = (e: unknown) => (e instanceof Error ? e.message : String(e));

export function isSoftware(adapter: GPUAdapter): boolean {
  const i = adapter.info;
  return !!i.isFallbackAdapter || SOFTWARE.test(`${i.vendor} ${i.architecture} ${i.device} ${i.description}`);
}

/** "llvmpipe-llvm-15-0-6-256-bits (OpenGL ES 3.2 Mesa 22.3.6)": whatever the adapter tells. */
function adapterName(adapter: GPUAdapter): string {
  const i = adapter.info;
  const dev = (i.device ?? '').replace(/-+$/, '');
  const desc = (i.description ?? '').replace(/^OpenGL version /, '');
  const vendor = [i.vendor, i.architecture].filter(Boolean).join(' ');
  const main = dev || desc || vendor || 'unnamed adapter';
  const extra = [vendor && vendor !== main ? vendor : '', desc && desc !== main ? desc : ''].filter(Boolean).join(', ');
  return extra ? `${main} (${extra})` : main;
}

interface Picked { instance: GPU; adapter: GPUAdapter; via: string }

export async function openDevice(allowSoftware: boolean): Promise<OpenedDevice> {
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  const inNode = typeof process !== 'undefined' && !!process.versions?.node;
  const picked = nav?.gpu || !inNode ? await browserAdapter(nav?.gpu, allowSoftware) : await nodeAdapter(allowSoftware);
  const { adapter } = picked;
  const requiredLimits: Record<string, number> = {};
  for (const k of REQUESTED_LIMITS) {
    // Dawn may lack a newer limit: undefined, then not requested.
    const v: number | undefined = adapter.limits[k];
    if (typeof v === 'number') requiredLimits[k] = v;
  }
  const requiredFeatures = OPTIONAL_FEATURES.filter((f) => adapter.features.has(f)) as GPUFeatureName[];
  const name = adapterName(adapter);
  let device: GPUDevice;
  try {
    device = await adapter.requestDevice({ label: 'kiln', requiredLimits, requiredFeatures });
  } catch (e) {
    throw unavailable(`requestDevice failed on ${name}: ${message(e)}`);
  }
  const subgroups = device.features.has('subgroups');
  const caps: Caps = {
    f16: device.features.has('shader-f16'),
    subgroups,
    subgroupSize: subgroups ? (adapter.info.subgroupMinSize ?? 0) : 0,
    maxWorkgroupStorage: device.limits.maxComputeWorkgroupStorageSize,
    maxStorageBuffers: device.limits.maxStorageBuffersPerShaderStage,
    maxInvocationsPerWorkgroup: device.limits.maxComputeInvocationsPerWorkgroup,
  };
  return { device, adapter, instance: picked.instance, description: `${name} via ${picked.via}`, software: isSoftware(adapter),
    vendor: isSoftware(adapter) ? 'software' : vendorClass(adapter.info.vendor), caps };
}

async function browserAdapter(gpu: GPU | undefined, allowSoftware: boolean): Promise<Picked> {
  if (!gpu) throw unavailable('navigator.gpu is missing: this browser has no WebGPU, or the page is not a secure context');
  let adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  let via = 'WebGPU';
  if (!adapter) {
    adapter = await gpu.requestAdapter({ featureLevel: 'compatibility' });
    via = 'WebGPU, compatibility mode';
  }
  if (!adapter) throw unavailable('navigator.gpu.requestAdapter() returned no adapter');
  if (isSoftware(adapter) && !allowSoftware) {
    throw unavailable(`only a software adapter (${adapterName(adapter)}) is available; pass allowSoftware: true to use it`);
  }
  return { instance: gpu, adapter, via };
}

async function nodeAdapter(allowSoftware: boolean): Promise<Picked> {
  let create: (options: string[]) => GPU;
  try {
    create = await loadDawn();
  } catch (e) {
    throw unavailable(`the 'webgpu' package (Dawn for Node) could not be loaded: ${message(e)}`);
  }
  // 1. A real GPU through Dawn's native backends (Vulkan, Metal, D3D12).
  let softwareFound = '';
  let nativeFailure = '';
  try {
    const instance = create([]);
    const adapter = await instance.requestAdapter({ powerPreference: 'high-performance' });
    if (adapter && (!isSoftware(adapter) || allowSoftware)) return { instance, adapter, via: 'Dawn' };
    if (adapter) softwareFound = adapterName(adapter);
  } catch (e) {
    nativeFailure = message(e);
  }
  const noGpu = softwareFound
    ? `no hardware GPU adapter (only the software adapter ${softwareFound})`
    : `no GPU adapter${nativeFailure ? ` (${nativeFailure})` : ''}`;
  if (!allowSoftware) throw unavailable(`${noGpu}; software adapters such as llvmpipe are used only with allowSoftware: true`);

  // 2. Mesa llvmpipe over EGL without a display, in WebGPU compatibility mode.
  const eglPlatform = useSurfacelessEgl();
  let adapter: GPUAdapter | null = null;
  let failure = '';
  let instance: GPU | undefined;
  try {
    instance = create(['backend=opengles']);
    adapter = await instance.requestAdapter({ featureLevel: 'compatibility' });
  } catch (e) {
    failure = `: ${message(e)}`;
  }
  if (!adapter || !instance) {
    throw unavailable(`${noGpu}, and Dawn's OpenGL ES backend (Mesa llvmpipe over EGL, EGL_PLATFORM=${eglPlatform}) found no adapter either${failure}. ${await eglHint()}`);
  }
  return { instance, adapter, via: 'Dawn/OpenGL ES, compatibility mode' };
}
