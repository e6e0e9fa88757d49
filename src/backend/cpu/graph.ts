// Step replay for the cpu device (captureGraph): a recorded launch sequence laid out once in the
// wasm executor's memory — each launch's argument block written for good, one workgroup counter
// per launch — and replayed with one message per worker. Workers take workgroups from the
// counters and meet at an Atomics barrier only where a launch depends on the ones before it.

/** A recorded launch: its buffers (byte offsets in the shared memory, written or only read). */
export interface RecordedLaunch {
  bindings: { offset: number; bytes: number; writes: boolean }[];
}

/**
 * Where barriers go: after launch i when launch i + 1 reads or writes a buffer a launch since the
 * last barrier wrote, or writes one such a launch read. barriers[i] is for the gap after launch i
 * (the last is false: the replay's end waits for every thread anyway).
 */
export function barriersBetween(launches: RecordedLaunch[]): boolean[] {
  const out = launches.map(() => false);
  let reads: [number, number][] = [], writes: [number, number][] = [];
  const overlaps = (set: [number, number][], at: number, bytes: number) => set.some(([o, n]) => at < o + n && o < at + bytes);
  launches.forEach((l, i) => {
    const conflict = l.bindings.some((b) => overlaps(writes, b.offset, b.bytes) || (b.writes && overlaps(reads, b.offset, b.bytes)));
    if (conflict && i > 0) {
      out[i - 1] = true;
      reads = [];
      writes = [];
    }
    for (const b of l.bindings) (b.writes ? writes : reads).push([b.offset, b.bytes]);
  });
  return out;
}
