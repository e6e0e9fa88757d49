// Step replay for the cpu device (captureGraph): a recorded launch sequence laid out once in the
// wasm executor's memory — each launch's argument block written for good, counters of workgroups
// taken and done per launch — and replayed with one message per worker. Workers take workgroups
// from the counters; only where a launch depends on earlier ones does a worker wait, until their
// workgroups are done (Atomics.wait/notify) — not for every other worker to arrive, so a worker
// the OS has descheduled holds nobody up unless it holds work.

/**
 * A recorded launch: its buffers (byte offsets in the shared memory, written or only read), and
 * whether it is `solo`: small enough that one thread runs it whole (the first worker; the others
 * skip it), so that launches depending on each other there need no wait at all.
 */
export interface RecordedLaunch {
  bindings: { offset: number; bytes: number; writes: boolean }[];
  solo?: boolean;
}

type Spans = [number, number][];
const overlaps = (set: Spans, at: number, bytes: number) => set.some(([o, n]) => at < o + n && o < at + bytes);

/**
 * Where dependency points go: after launch i when launch i + 1 reads or writes a buffer a launch
 * since the last point wrote, or writes one such a launch read — except between solo launches,
 * which one thread runs in order. barriers[i] is for the gap after launch i (the last is false:
 * the replay's end waits for every thread anyway).
 */
export function barriersBetween(launches: RecordedLaunch[]): boolean[] {
  const out = launches.map(() => false);
  // Since the last point: what launches on every thread and what solo launches read and wrote.
  let all = { reads: [] as Spans, writes: [] as Spans }, solo = { reads: [] as Spans, writes: [] as Spans };
  launches.forEach((l, i) => {
    const against = l.solo ? [all] : [all, solo];
    const conflict = against.some((e) => l.bindings.some((b) => overlaps(e.writes, b.offset, b.bytes) || (b.writes && overlaps(e.reads, b.offset, b.bytes))));
    if (conflict && i > 0) {
      out[i - 1] = true;
      all = { reads: [], writes: [] };
      solo = { reads: [], writes: [] };
    }
    const into = l.solo ? solo : all;
    for (const b of l.bindings) (b.writes ? into.writes : into.reads).push([b.offset, b.bytes]);
  });
  return out;
}
