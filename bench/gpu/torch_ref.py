#!/usr/bin/env python3
"""PyTorch reference timings on the GPU machine, for Kiln's benches to be read against:

  copy     a large device-to-device copy: the bandwidth ceiling (bytes read + written)
  matmul   torch.matmul in fp16 and bf16 (cuBLAS) at 8192^3: the matrix-rate ceiling
  linear   fp16 F.linear (cuBLAS) on the INT4 bench's shapes: the dense baseline
  int4     torch.ops.aten._weight_int4pack_mm (W4A16, group 128) on (K, N) = (4096, 4096),
           (4096, 14336), (14336, 4096) at M = 1, 4, 16 (GEMV) and 512 (GEMM), checked against a
           float32 dequantised reference
  sdpa     F.scaled_dot_product_attention (flash, else another backend) on fp16, 32 query heads,
           8 KV heads (GQA 4:1), head_dim 128: decode (one query) at batch 1 and 64, context 512
           and 8192; causal prefill at batch 1, 512 / 2048 / 8192 tokens

Times are medians of CUDA-event timings. `ms` runs each call after flushing L2 (a 256 MiB write
outside the timed region): what a decode step sees, its weights long gone from cache. `ms_hot`
is the mean of calls queued back to back on the same buffers (L2 may hold small weights), the way
a launch-after-launch bench measures. Inputs are random, never zeros. Each cell that fails records
its error and the script goes on; the JSON is rewritten after every section, so a timeout keeps
what finished.

    python3 bench/gpu/torch_ref.py [--json FILE] [--sections copy,matmul,linear,int4,sdpa] [--quick]
"""
import argparse
import json
import math
import statistics
import sys
import time
import traceback

INT4_SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096)]  # (K, N)
INT4_MS = [1, 4, 16, 512]
GROUP = 128
HEADS_Q, HEADS_KV, HEAD_DIM = 32, 8, 128


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--sections", default="copy,matmul,linear,int4,sdpa")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke test)")
    return ap.parse_args()


class Timer:
    def __init__(self, torch, quick):
        self.torch = torch
        self.reps = 5 if quick else 25
        self.warmup = 2 if quick else 5
        self.flush_buf = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")

    def __call__(self, fn):
        """{'ms': median cold-L2 time, 'ms_min', 'ms_hot': mean back-to-back time} of fn()."""
        torch = self.torch
        for _ in range(self.warmup):
            fn()
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.reps)]
        for s, e in zip(starts, ends):
            self.flush_buf.random_(0, 255)  # keeps the GPU busy while the next call is queued
            s.record()
            fn()
            e.record()
        hot_start, hot_end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        hot_start.record()
        for _ in range(self.reps):
            fn()
        hot_end.record()
        torch.cuda.synchronize()
        cold = [s.elapsed_time(e) for s, e in zip(starts, ends)]
        return {
            "ms": round(statistics.median(cold), 5),
            "ms_min": round(min(cold), 5),
            "ms_hot": round(hot_start.elapsed_time(hot_end) / self.reps, 5),
        }


def rel_err(out, ref):
    """||out - ref||_2 / ||ref||_2 in float64."""
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm())


def cell(results, section, row, fn):
    """Runs one measurement; its failure is recorded in the row, never fatal."""
    try:
        row.update(fn())
    except Exception as e:  # noqa: BLE001 - any failure is a result here
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    results.setdefault(section, []).append(row)
    print(f"  {section}: " + ", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return row


def gbps(nbytes, ms):
    return round(nbytes / (ms * 1e-3) / 1e9, 1)


def tflops(flops, ms):
    return round(flops / (ms * 1e-3) / 1e12, 2)


def section_copy(torch, timer, results):
    n = 2 * 2**30  # 2 GiB each way: far past the 60 MB L2
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)

    def run():
        t = timer(lambda: dst.copy_(src))
        assert torch.equal(dst[:4096], src[:4096]), "the copy is wrong"
        return {**t, "GBps": gbps(2 * n, t["ms"]), "GBps_hot": gbps(2 * n, t["ms_hot"])}

    cell(results, "copy", {"bytes": 2 * n, "what": "uint8 copy_, read + written"}, run)
    del src, dst


def section_matmul(torch, timer, results):
    for dtype in (torch.float16, torch.bfloat16):
        n = 8192
        a = torch.randn(n, n, dtype=dtype, device="cuda")
        b = torch.randn(n, n, dtype=dtype, device="cuda")

        def run():
            t = timer(lambda: torch.matmul(a, b))
            return {**t, "TFLOPs": tflops(2 * n**3, t["ms"])}

        cell(results, "matmul", {"dtype": str(dtype).replace("torch.", ""), "M": n, "N": n, "K": n}, run)
        del a, b


def section_linear(torch, timer, results):
    F = torch.nn.functional
    for k, n in INT4_SHAPES:
        w = torch.randn(n, k, dtype=torch.float16, device="cuda") / math.sqrt(k)
        for m in INT4_MS:
            x = torch.randn(m, k, dtype=torch.float16, device="cuda")

            def run():
                t = timer(lambda: F.linear(x, w))
                nbytes = 2 * (n * k + m * k + m * n)
                return {**t, "GBps": gbps(nbytes, t["ms"]), "TFLOPs": tflops(2 * m * n * k, t["ms"])}

            cell(results, "linear_fp16", {"M": m, "K": k, "N": n}, run)
        del w


def section_int4(torch, timer, results):
    """W4A16 through torch's tinygemm kernel: bf16 activations, scales and zeros per group of 128
    along K; w = (q - 8) * scale + zero, q packed two per byte (even k in the high nibble)."""
    aten = torch.ops.aten
    inner_k_tiles = 8
    for k, n in INT4_SHAPES:
        try:
            q = torch.randint(0, 16, (n, k), dtype=torch.int32, device="cuda")
            packed_u8 = ((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8)
            w_packed = aten._convert_weight_to_int4pack(packed_u8, inner_k_tiles)
            scales = torch.rand(k // GROUP, n, device="cuda") * 0.02 + 0.005
            zeros = (torch.rand(k // GROUP, n, device="cuda") - 0.5) * 0.02
            sz = torch.stack([scales, zeros], dim=2).to(torch.bfloat16).contiguous()
            w_ref = ((q.float() - 8) * sz[..., 0].float().repeat_interleave(GROUP, 0).t()
                     + sz[..., 1].float().repeat_interleave(GROUP, 0).t())  # (N, K)
        except Exception as e:  # noqa: BLE001
            cell(results, "int4", {"K": k, "N": n}, lambda e=e: {"error": f"packing failed: {type(e).__name__}: {e}"[:300]})
            continue
        for m in INT4_MS:
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")

            def run():
                out = aten._weight_int4pack_mm(x, w_packed, GROUP, sz)
                err = rel_err(out.float(), x.float() @ w_ref.t())
                t = timer(lambda: aten._weight_int4pack_mm(x, w_packed, GROUP, sz))
                nbytes = n * k // 2 + sz.numel() * 2 + 2 * (m * k + m * n)
                return {**t, "GBps": gbps(nbytes, t["ms"]), "GBps_hot": gbps(nbytes, t["ms_hot"]),
                        "TFLOPs": tflops(2 * m * n * k, t["ms"]), "relErr": round(err, 5),
                        **({"warning": "relErr over 2e-2: check the packing convention"} if err > 2e-2 else {})}

            cell(results, "int4", {"M": m, "K": k, "N": n, "group": GROUP}, run)
        del q, packed_u8, w_packed, w_ref


def sdpa_backends(torch):
    from torch.nn.attention import SDPBackend

    names = ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"]
    return [(name.lower(), getattr(SDPBackend, name)) for name in names if hasattr(SDPBackend, name)]


def section_sdpa(torch, timer, results):
    F = torch.nn.functional
    from torch.nn.attention import sdpa_kernel

    backends = sdpa_backends(torch)
    cases = [("decode", b, 1, ctx) for b in (1, 64) for ctx in (512, 8192)]
    cases += [("prefill", 1, s, s) for s in (512, 2048, 8192)]
    for kind, b, sq, ctx in cases:
        q = torch.randn(b, HEADS_Q, sq, HEAD_DIM, dtype=torch.float16, device="cuda")
        kv = torch.randn(2, b, HEADS_KV, ctx, HEAD_DIM, dtype=torch.float16, device="cuda")
        k, v = kv[0], kv[1]
        causal = kind == "prefill"
        # float32 reference on one batch row, all heads (GQA by repeating K/V heads)
        rep = HEADS_Q // HEADS_KV
        ref = F.scaled_dot_product_attention(q[:1].float(), k[:1].float().repeat_interleave(rep, 1),
                                             v[:1].float().repeat_interleave(rep, 1), is_causal=causal)
        nbytes = 2 * (q.numel() + 2 * k.numel() + q.numel())
        flops = 4 * b * HEADS_Q * HEAD_DIM * (sq * (sq + 1) // 2 if causal else sq * ctx)
        for name, backend in backends:
            def run(backend=backend):
                def call():
                    with sdpa_kernel([backend]):
                        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
                err = rel_err(call()[:1].float(), ref)
                t = timer(call)
                return {**t, "GBps": gbps(nbytes, t["ms"]), "TFLOPs": tflops(flops, t["ms"]), "relErr": round(err, 6)}

            cell(results, "sdpa", {"kind": kind, "backend": name, "batch": b, "q_len": sq, "context": ctx,
                                   "heads": f"{HEADS_Q}/{HEADS_KV}", "head_dim": HEAD_DIM}, run)
        del q, kv, ref


SECTIONS = {"copy": section_copy, "matmul": section_matmul, "linear": section_linear, "int4": section_int4, "sdpa": section_sdpa}


def main():
    args = parse_args()
    wanted = [s for s in args.sections.split(",") if s]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        sys.exit(f"unknown section(s) {unknown}: choose from {list(SECTIONS)}")
    try:
        import torch
    except ImportError as e:
        print(f"skip: torch is not importable here ({e})")
        sys.exit(3)
    if not torch.cuda.is_available():
        print("skip: torch sees no CUDA device")
        sys.exit(3)
    props = torch.cuda.get_device_properties(0)
    results = {
        "env": {
            "torch": torch.__version__, "cuda": torch.version.cuda, "device": props.name,
            "sm": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count,
            "memory_GiB": round(props.total_memory / 2**30, 1),
            "l2_MiB": round(getattr(props, "L2_cache_size", 0) / 2**20, 1),
            "cudnn": torch.backends.cudnn.version(),
        },
        "method": "ms: median of CUDA-event timings, L2 flushed before each call; ms_hot: mean of back-to-back calls",
    }
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {props.name}", flush=True)

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)

    timer = Timer(torch, args.quick)
    failed = 0
    for name in wanted:
        started = time.time()
        print(f"[{name}]", flush=True)
        try:
            SECTIONS[name](torch, timer, results)
        except Exception:  # noqa: BLE001 - a broken section must not lose the others
            failed += 1
            results.setdefault("errors", {})[name] = traceback.format_exc()[-2000:]
            print(traceback.format_exc(), flush=True)
        torch.cuda.empty_cache()
        results.setdefault("seconds", {})[name] = round(time.time() - started, 1)
        save()
    cells = [r for s in SECTIONS for r in results.get(s if s != "linear" else "linear_fp16", [])]
    bad = [r for r in cells if "error" in r]
    print(f"{len(cells)} cells, {len(bad)} with errors, {failed} sections failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
