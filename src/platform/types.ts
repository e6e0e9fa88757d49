// What Kiln needs from its host, as one small interface: Node (node.ts) and browsers (browser.ts)
// implement it. Code shared by both imports `platform` from ./index.js; the browser bundle
// (scripts/build-lib.mjs) resolves ./node.js to ./browser.js, so no Node built-in reaches it.

/** A file opened for random-access reads. */
export interface RandomAccessFile {
  readonly size: number;
  /** Reads into `into` from byte `position`; returns the bytes read (0 at the end). */
  readInto(into: Uint8Array, intoOffset: number, length: number, position: number): number;
  close(): void;
}

/** Local files: Node's file system; in a browser every call throws (models come by URL or File). */
export interface PlatformFiles {
  exists(path: string): boolean;
  isDirectory(path: string): boolean;
  readText(path: string): string;
  readBytes(path: string): Uint8Array;
  open(path: string): RandomAccessFile;
  join(...parts: string[]): string;
  dirname(path: string): string;
  homeDir(): string;
}

/** A worker running `program` (see startWorker). */
export interface PlatformWorker {
  post(message: unknown): void;
  /** busy: keep the host alive while the worker has work (Node); idle workers never hold it. */
  hold(busy: boolean): void;
  terminate(): Promise<void>;
}

export interface Platform {
  readonly kind: 'node' | 'browser';
  /** Logical cores for compute. */
  cpuCount(): number;
  /** Bytes of host memory free for buffers (an estimate in browsers). */
  freeMemory(): number;
  /** An environment variable (none in browsers). */
  env(name: string): string | undefined;
  /** A short stable key for a text (caches of compiled kernels). */
  contentKey(text: string): string;
  /** Whether memory can be shared with workers (Node; browsers when cross-origin isolated). */
  readonly sharedMemory: boolean;
  /** Zeroed memory workers can share; a plain ArrayBuffer where sharing is not allowed. */
  allocShared(bytes: number): SharedArrayBuffer;
  /**
   * Starts a worker running `program`, JavaScript text that defines `function handle(message)`
   * returning the reply; each message posted gets one reply through onMessage. If the program
   * also defines `function linger(post)`, it is called after each reply is posted and may keep
   * the thread (working off shared memory, posting further replies) before the next message.
   */
  startWorker(program: string, on: { message(reply: unknown): void; error(why: string): void }): PlatformWorker;
  /** A path (Node) or URL (browsers) for a file relative to a module's import.meta.url. */
  resolvePackagePath(relative: string, moduleUrl: string): string;
  readonly files: PlatformFiles;
}
