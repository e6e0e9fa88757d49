#!/usr/bin/env bash
# The GPU machine's one-shot script: build, check and time everything in one `run` call, each
# phase under its own time limit, and leave the results in $OUT (at most 8 files come back):
#   $OUT/summary.md     the table printed last (phases, tests, kernels, benches, torch references)
#   $OUT/results.json   the same, machine-readable, with every JSON report folded in
#   $OUT/logs.tar.gz    every phase's full log and report
#   $OUT/run.log        the console, as it was printed
# bench/gpu/README.md says how to call it; `node bench/gpu/bundle.mjs` must have run here first.
#
#   bash bench/gpu/run.sh [--dry-run] [--phases a,b,…] [--budget SECONDS] [--list]
#     --dry-run   run here, without a GPU: OUT and the work folder default to /tmp/kiln-gpu-dry,
#                 CUDA phases report "cuda not available" and skip (KILN_GPU_FORCE=1 runs them anyway)
#     --phases    a subset, in the default order (see --list)
#     --budget    seconds for the whole script (default $KILN_GPU_BUDGET or 450); each phase gets
#                 at most its own limit and never more than what is left, less a reserve for the
#                 summary, so the script always ends and packs its results inside the budget
# Environment: KILN_GPU_BACKENDS (the tests' KILN_BACKENDS, default cuda), KILN_GPU_ARGS_<bench>
# (arguments for one bench, replacing the defaults in .devkit/gpu/manifest.json), KILN_GPU_FORCE,
# KILN_GPU_WORK (work folder), KILN_CUDA_COMPILER (nvrtc | nvcc), KILN_TEST_SKIP (regex).
set -u -o pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SELF")/../.." && pwd)
cd "$ROOT" || exit 1
GPU_DIR=$ROOT/.devkit/gpu

# name:limit-in-seconds, in the order they run. Conformance first: timings of wrong kernels are noise.
# The limits add up to the default budget less the reserve (450 − 15), so no phase is squeezed by
# the ones before it; with the machine's start (1–2 min) one full run stays under 10 of the
# session's 15 device minutes, leaving room for one targeted rerun. run.sh checks the sum.
PHASE_TABLE="env:10 addon:40 probe:20 compile:60 conformance:105 bench-int4:45 bench-attention:40 torch:45 bench-accept:20 bench-generate:50"
RESERVE=15
DEFAULT_BUDGET=450
phase_sum() { local s=0 p; for p in $PHASE_TABLE; do s=$((s + ${p##*:})); done; echo "$s"; }

# ---- one phase, run in a child process by the driver below ----------------------------------

have() { command -v "$1" >/dev/null 2>&1; }

phase_env() {
  echo "date: $(date -u +%FT%TZ)"
  uname -a
  grep -E '^(PRETTY_NAME)=' /etc/os-release 2>/dev/null
  echo "cpus: $(nproc); $(grep MemTotal /proc/meminfo 2>/dev/null)"
  echo "node: $(node --version) ($(command -v node))"
  ldd --version 2>/dev/null | head -1
  if have nvidia-smi; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.mem,clocks.max.sm,power.draw,temperature.gpu,compute_mode \
      --format=csv 2>&1
  else
    echo "nvidia-smi: not found"
  fi
  if have nvcc; then nvcc --version | tail -2; else echo "nvcc: not found"; fi
  for lib in libcuda.so.1 libnvrtc.so; do
    echo "$lib: $( (ldconfig -p 2>/dev/null | grep -m1 "$lib") || echo 'not in the ldconfig cache')"
  done
  echo "g++: $( (g++ --version 2>/dev/null | head -1) || echo 'not found')"
  echo "python3: $( (python3 --version 2>&1) || echo 'not found') ($(command -v python3 || true))"
  df -h /tmp 2>/dev/null | tail -1
  node bench/gpu/check-bundles.mjs # exit 4: stale bundles, reported as a warning
}

ADDON=$ROOT/cuda/host/build/Release/kiln_cuda.node

addon_loads() {
  node -e "const a = require(process.argv[1]); console.log('driverStatus:', JSON.stringify(a.driverStatus()))" "$ADDON"
}

# The carried addon (built here by bundle.mjs) should load; if it does not (another libstdc++, say),
# build it again with plain g++ from the headers bundle.mjs carried: the machine has no node-gyp.
phase_addon() {
  env -u KILN_SKIP_ADDON node scripts/build-addon.mjs
  if [ -f "$ADDON" ] && addon_loads; then echo "addon: $ADDON loads"; return 0; fi
  echo "addon: the carried addon is missing or does not load; rebuilding it with g++"
  have g++ || { echo "addon: no g++ here either: the CUDA backend is unavailable"; return 1; }
  mkdir -p "$(dirname "$ADDON")"
  (cd cuda/host && g++ -O2 -shared -fPIC -std=c++17 -Wall -Wno-unused-parameter \
    -DNAPI_VERSION=8 -DNAPI_CPP_EXCEPTIONS -DNODE_ADDON_API_DISABLE_DEPRECATED -DBUILDING_NODE_EXTENSION \
    -I"$GPU_DIR/addon-headers" addon.cc context.cc loader.cc -ldl -o "$ADDON") || return 1
  addon_loads
}

phase_probe() {
  node "$GPU_DIR/cuda-check.mjs" probe --json "$WORK/json/probe.json"
}

phase_compile() {
  node "$GPU_DIR/cuda-check.mjs" compile --json "$WORK/json/compile.json"
}

# Each test file in its own process and under its own limit, KILN_GPU_JOBS (default: up to 4) at a
# time: a hang costs one file, not the phase. Each file's output lands in logs/test-NAME.log and is
# printed whole when the file ends, so parallel files never interleave.
conformance_file() {
  local f=$1 limit=$2 name frc
  name=$(basename "$f" .mjs)
  KILN_BACKENDS=${KILN_GPU_BACKENDS:-cuda} KILN_TEST_REPORT="$WORK/reports/$name.json" \
    timeout --kill-after=5 "$limit" node "$f" >"$WORK/logs/$name.log" 2>&1
  frc=$?
  if [ "$frc" -eq 124 ] || [ "$frc" -eq 137 ]; then
    echo "  ✗ killed after ${limit} s" >>"$WORK/logs/$name.log"
    printf '{"file":"%s","timedOut":true,"limit":%d,"passed":0,"failed":1,"skipped":0,"errors":["killed after %d s"],"tests":[]}\n' \
      "$name" "$limit" "$limit" >"$WORK/reports/$name.json"
  fi
  cat "$WORK/logs/$name.log"
  return "$frc"
}

phase_conformance() {
  local files=() pids=() pid f left limit started jobs rc=0
  started=$(date +%s)
  jobs=${KILN_GPU_JOBS:-$(($(nproc) < 4 ? $(nproc) : 4))}
  # Slowest first (nvcc over every committed file), then the backend's own tests, then kernels.
  [ -f "$GPU_DIR/test-cuda-compile.mjs" ] && files+=("$GPU_DIR/test-cuda-compile.mjs")
  [ -f "$GPU_DIR/test-cuda-backend.mjs" ] && files+=("$GPU_DIR/test-cuda-backend.mjs")
  for f in "$GPU_DIR"/test-*.mjs; do
    case $(basename "$f") in test-cuda-backend.mjs | test-cuda-compile.mjs) ;; *) files+=("$f") ;; esac
  done
  # The fake-driver tests start fixtures through tsx, which is not carried; CI runs them.
  if [ ! -d node_modules/tsx ] && [ -z "${KILN_TEST_SKIP+x}" ]; then
    export KILN_TEST_SKIP='cuda backend on a fake driver|reports a missing addon as unavailable'
    export KILN_TEST_SKIP_REASON='needs tsx (not carried); runs in CI'
  fi
  echo "${#files[@]} test files, $jobs at a time, KILN_BACKENDS=${KILN_GPU_BACKENDS:-cuda}"
  for f in "${files[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
    left=$((PHASE_LIMIT - ($(date +%s) - started) - 5))
    if [ "$left" -lt 10 ]; then echo "  ✗ $(basename "$f" .mjs): not started (the phase's time is up)"; rc=1; continue; fi
    limit=$((left < 150 ? left : 150))
    conformance_file "$f" "$limit" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  return "$rc"
}

phase_bench() {
  local bench=$1 bundle args_var args
  bundle=$(node -p "require('$GPU_DIR/manifest.json').benches['$bench']?.bundle ?? ''")
  if [ -z "$bundle" ]; then
    echo "skip: bench/$bench.ts did not exist when the bundles were built"
    return 3
  fi
  args_var=KILN_GPU_ARGS_$bench
  if [ -n "${!args_var+x}" ]; then
    args=${!args_var}
  else
    args=$(node -p "(require('$GPU_DIR/manifest.json').benches['$bench'].args ?? []).join(' ')")
  fi
  echo "node .devkit/gpu/$bundle $args"
  # shellcheck disable=SC2086 # the arguments are words on purpose
  KILN_BENCH_JSON="$WORK/json/bench-$bench.json" node "$GPU_DIR/$bundle" $args
}

# Exits 3 with "skip: …" where torch or its CUDA device is missing.
phase_torch() {
  python3 bench/gpu/torch_ref.py --json "$WORK/json/torch_ref.json"
}

if [ "${1:-}" = __phase ]; then
  PHASE_LIMIT=$3
  case $2 in
    bench-*) phase_bench "${2#bench-}" ;;
    *) "phase_$2" ;;
  esac
  exit
fi

# ---- the driver ------------------------------------------------------------------------------

DRY_RUN=0
BUDGET=${KILN_GPU_BUDGET:-$DEFAULT_BUDGET}
ONLY=""
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --phases) ONLY=${2:?--phases needs a list}; shift ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift ;;
    --list) echo "$PHASE_TABLE" | tr ' ' '\n'; echo "sum: $(phase_sum) s (default budget $DEFAULT_BUDGET s, reserve $RESERVE s)"; exit 0 ;;
    -h | --help) sed -n '2,21p' "$SELF"; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case $BUDGET in
  '' | *[!0-9]*) echo "run.sh: --budget must be whole seconds, got '$BUDGET'" >&2; exit 2 ;;
  *) ;;
esac

STARTED=$(date +%s)
DEADLINE=$((STARTED + BUDGET))
if [ "$(phase_sum)" -gt $((BUDGET - RESERVE)) ]; then
  echo "run.sh: note: the phase limits add up to $(phase_sum) s, more than the budget less the reserve ($((BUDGET - RESERVE)) s): the last phases may be cut short" >&2
fi
if [ "$DRY_RUN" = 1 ]; then
  OUT=${OUT:-/tmp/kiln-gpu-dry/out}
  WORK=${KILN_GPU_WORK:-/tmp/kiln-gpu-dry/work}
elif [ -z "${OUT:-}" ]; then
  echo "run.sh: OUT is not set: this runs on the GPU machine through the run tool (use --dry-run here)" >&2
  exit 2
else
  WORK=${KILN_GPU_WORK:-/tmp/kiln-gpu}
fi
if [ ! -f "$GPU_DIR/manifest.json" ]; then
  echo "run.sh: $GPU_DIR/manifest.json is missing: run 'node bench/gpu/bundle.mjs' first and carry .devkit/gpu" >&2
  exit 2
fi
rm -rf "$WORK"
mkdir -p "$OUT" "$WORK/logs" "$WORK/json" "$WORK/reports" "$WORK/bin"
export OUT WORK DRY_RUN
: >"$WORK/phases.tsv"
: >"$OUT/run.log"

# The console goes to the reply's output tail and to $OUT/run.log.
say() { echo "$@" | tee -a "$OUT/run.log"; }

say "== kiln GPU run: budget ${BUDGET} s$([ "$DRY_RUN" = 1 ] && echo ', dry run'), out $OUT"

# Node: carried compressed; the machine has none.
if [ -f .devkit/node.xz ]; then
  # xz where it exists, else Python's lzma module (the machine's image may lack xz-utils).
  if have xz; then unxz_cmd=(xz -dc .devkit/node.xz); else
    unxz_cmd=(python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' .devkit/node.xz)
  fi
  if ! { "${unxz_cmd[@]}" >"$WORK/bin/node" && chmod +x "$WORK/bin/node" && "$WORK/bin/node" --version >/dev/null; }; then
    say "run.sh: unpacking .devkit/node.xz failed"
    exit 1
  fi
  export PATH="$WORK/bin:$PATH"
elif [ "$DRY_RUN" = 1 ] && have node; then
  say "(no .devkit/node.xz: using $(command -v node))"
else
  say "run.sh: .devkit/node.xz is missing: run 'node bench/gpu/bundle.mjs' here and carry .devkit/node.xz"
  exit 1
fi
[ -d /usr/local/cuda/bin ] && export PATH="$PATH:/usr/local/cuda/bin"
export KILN_CUDA_ADDON=$ADDON
export KILN_CUDA_CACHE=$WORK/cuda-cache
export PYTHONUNBUFFERED=1
say "node $(node --version); phases: ${ONLY:-all}"

CUDA_OK=unknown
CUDA_REASON=""

# record NAME STATUS SECONDS NOTE
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$WORK/phases.tsv"; }

pack() {
  node bench/gpu/summarize.mjs "$WORK" "$OUT" >/dev/null 2>"$WORK/logs/summarize.err" || say "(summarize failed: $(tail -3 "$WORK/logs/summarize.err"))"
  tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs json reports phases.tsv 2>/dev/null
}

needs_cuda() {
  case $1 in probe | env | addon | torch | compile) return 1 ;; *) return 0 ;; esac
}

run_phase() {
  local name=$1 limit=$2 left t0 rc status note secs
  left=$((DEADLINE - $(date +%s) - RESERVE))
  if [ "$left" -lt 10 ]; then
    record "$name" skip 0 "no time left in the ${BUDGET} s budget"
    say "== $name: skipped, no time left"
    return
  fi
  if needs_cuda "$name" && [ "$CUDA_OK" != yes ] && [ -z "${KILN_GPU_FORCE:-}" ]; then
    record "$name" skip 0 "cuda not available: $CUDA_REASON"
    say "== $name: skipped, cuda not available: $CUDA_REASON"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say ""
  say "== $name (limit ${limit} s, $((DEADLINE - $(date +%s))) s left)"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" bash "$SELF" __phase "$name" "$limit" 2>&1 | tee -a "$WORK/logs/$name.log" "$OUT/run.log"
  rc=${PIPESTATUS[0]}
  secs=$(($(date +%s) - t0))
  note=""
  case $rc in
    0) status=ok ;;
    3) status=skip; note=$(grep -m1 -E '^(skip: |cuda not available: )' "$WORK/logs/$name.log" | sed 's/^skip: //') ;;
    4) status=warn; note=$(grep -m1 '^WARNING: ' "$WORK/logs/$name.log" | sed 's/^WARNING: //') ;;
    124 | 137) status=timeout; note="killed after ${limit} s" ;;
    *) status=fail; note="exit $rc" ;;
  esac
  if [ "$name" = probe ]; then
    if [ "$rc" = 0 ]; then CUDA_OK=yes; else
      CUDA_OK=no
      CUDA_REASON=$(grep -m1 '^cuda not available: ' "$WORK/logs/probe.log" | sed 's/^cuda not available: //')
      CUDA_REASON=${CUDA_REASON:-probe $status (exit $rc)}
    fi
  fi
  record "$name" "$status" "$secs" "$note"
  say "== $name: $status in ${secs} s${note:+ ($note)}"
  pack
}

# CUDA phases need the addon and the probe before them: add those to a --phases subset.
if [ -n "$ONLY" ]; then
  for p in ${ONLY//,/ }; do
    [[ " $PHASE_TABLE " == *" $p:"* ]] || { say "run.sh: unknown phase '$p' (see --list)"; exit 2; }
    needs_cuda "$p" && ONLY="$ONLY,addon,probe"
  done
fi
for entry in $PHASE_TABLE; do
  name=${entry%%:*}
  [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]] && continue
  run_phase "$name" "${entry##*:}"
done

pack
say ""
say "== done in $(($(date +%s) - STARTED)) s; results in $OUT: $(cd "$OUT" && printf '%s ' *)"
say ""
cat "$WORK/summary-short.md" 2>/dev/null || echo "(no summary)"
