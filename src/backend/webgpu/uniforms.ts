// Uniform data for the launches of one pass. Every launch recorded into a command encoder needs its
// own uniform bytes (queue.writeBuffer runs before the submit, so one shared buffer would give every
// launch the last values). Each launch gets an aligned slot in a chunk; the chunks' CPU mirrors are
// uploaded with one writeBuffer each just before the pass is submitted, and go back to the pool
// afterwards (reusing them in a later pass is safe: queue operations run in order).

const UNIFORM = 0x40, COPY_DST = 0x08;
/** Bytes per uniform buffer; one launch's uniform block must fit in one. */
export const CHUNK_BYTES = 64 * 1024;

export interface UniformChunk {
  readonly id: number;
  readonly gpu: GPUBuffer;
  readonly u32: Uint32Array;
  readonly i32: Int32Array;
  readonly f32: Float32Array;
  /** Bytes handed out in the current pass. */
  used: number;
}

/** Chunks shared by all passes of one device. */
export class UniformPool {
  private free: UniformChunk[] = [];
  private all: UniformChunk[] = [];
  constructor(private readonly device: GPUDevice, readonly alignment: number) {}

  take(): UniformChunk {
    const c = this.free.pop();
    if (c) return c;
    const mirror = new ArrayBuffer(CHUNK_BYTES);
    const chunk: UniformChunk = {
      id: this.all.length,
      gpu: this.device.createBuffer({ label: `kiln uniforms ${this.all.length}`, size: CHUNK_BYTES, usage: UNIFORM | COPY_DST }),
      u32: new Uint32Array(mirror), i32: new Int32Array(mirror), f32: new Float32Array(mirror), used: 0,
    };
    this.all.push(chunk);
    return chunk;
  }
  give(chunks: UniformChunk[]): void {
    for (const c of chunks) { c.used = 0; this.free.push(c); }
  }
  destroy(): void {
    for (const c of this.all) c.gpu.destroy();
    this.all = [];
    this.free = [];
  }
}

/** The slots one pass hands out. */
export class PassUniforms {
  readonly chunks: UniformChunk[] = [];
  constructor(private readonly pool: UniformPool) {}

  /** A slot of `bytes` (a multiple of 16, at most CHUNK_BYTES): its chunk and byte offset. */
  slot(bytes: number): { chunk: UniformChunk; offset: number } {
    let c = this.chunks[this.chunks.length - 1];
    if (!c || c.used + bytes > CHUNK_BYTES) {
      c = this.pool.take();
      this.chunks.push(c);
    }
    const offset = c.used;
    c.used = Math.ceil((offset + bytes) / this.pool.alignment) * this.pool.alignment;
    return { chunk: c, offset };
  }
  upload(queue: GPUQueue): void {
    for (const c of this.chunks) if (c.used) queue.writeBuffer(c.gpu, 0, c.u32.buffer, 0, Math.min(c.used, CHUNK_BYTES));
  }
  release(): void {
    this.pool.give(this.chunks);
    this.chunks.length = 0;
  }
}
