// The host Kiln runs on (see types.ts). Node here; the browser bundle swaps node.js for browser.js.
export { platform } from './node.js';
export type { Platform, PlatformFiles, PlatformWorker, RandomAccessFile } from './types.js';
