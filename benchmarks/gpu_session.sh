#!/usr/bin/env bash
# Issue 21's GPU figures, in two phases of one device call each (every step has its own timeout, so each phase
# ends inside 10 minutes). Nothing is downloaded on the GPU machine.
#
#   1. Here, on a machine with pip and a package index (once; ≈ 47 MB in .whl/, ignored by git):
#        bash benchmarks/gpu_session.sh --fetch-wheels
#      The GPU image has Python 3.12 with torch, numpy, aiohttp, msgpack, matplotlib…; these wheels add what
#      vidfx needs beyond it (pydantic-settings, PyAV, pyzmq, aiortc and their dependencies).
#   2. On the GPU machine, from the repository root (with the device tool: carry [".whl"]):
#        bash benchmarks/gpu_session.sh bench    # ≈ 6 min: `vidfx bench gpu` + the CUDA tests
#        bash benchmarks/gpu_session.sh serve    # ≈ 8 min: the node on the GPU (ZeroMQ and WebRTC)
#      Each writes into $OUT (default benchmarks/gpu_out/): bench: RESULTS.md (benchmarks/RESULTS.md with the
#      GPU section filled in), gpu.png, gpu.json (raw, written row by row), gpu.log, tests.log; serve: serve*.json
#      and serve*.log, webrtc.log.
#   3. Back here: copy what came back over benchmarks/, fold the serve and WebRTC tables into RESULTS.md's GPU
#      section, and commit.
#
# bench: `vidfx bench gpu`: the 1.3B architecture with random weights, every optimisation in turn against the
#   eager bf16 baseline at 480×832, the main ones at 320×576; then tests/test_accel.py's CUDA tests (each CUDA
#   switch against the eager path, pinned transfers). First run on an H200, 2026-12-04: 5 min 43 s
#   (benchmarks/RESULTS.md, *GPU*; the one-frame first chunk rows there came from a second, shorter run:
#   `vidfx bench gpu --first-chunk-latents 1 --rows tae-both graphs-tae-both all-tae-both`).
# serve: `vidfx bench serve` on the GPU, node FPS against the standalone pipeline in the same run (goal: ≤ 10%
#   overhead), with the small default model and with `wan-1.3b-random` (the 1.3B architecture, random weights)
#   in the fastest configuration `vidfx bench gpu` found; then glass-to-glass latency through WebRTC at 480×832
#   with the same model (goal: p95 < 400 ms). Not run on a GPU yet.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 typing-inspection==0.4.5
  annotated-types==0.8.0 av==18.1.0 pyzmq==27.3.0 aiortc==1.16.0 aioice==0.13.0 pyee==13.0.1 pylibsrtp==1.0.0
  pyopenssl==26.4.0 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12 google-crc32c==1.9.0 dnspython==2.9.2
  ifaddr==0.2.0 pytest-asyncio==1.5.0
)

if [ "${1:-}" = "--fetch-wheels" ]; then
  mkdir -p .whl
  exec "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
fi

PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ! "$PY" -c "import pydantic_settings, av, zmq, aiortc, pytest_asyncio" 2>/dev/null; then
  if [ ! -d .whl ]; then
    echo "gpu_session: vidfx's packages are missing and there is no .whl/ (run --fetch-wheels first)" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/vidfx-site \
    .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/vidfx-site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_session: no CUDA device')" || exit 2
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/device.txt"
start=$SECONDS

phase=${1:-bench}
FAST=(--model-encoder=tae --model-decoder=tae --model-first-chunk-latents=1 --accel-compile --accel-cuda-graphs
      --accel-overlap-decode)

if [ "$phase" = bench ]; then
  # ≤ 7 min. Rows that compile come last at each size; no row starts after its size's budget, so the table is
  # written whatever the compiler costs (inductor's cache makes the later compiled rows of a shape cheaper).
  timeout 330 "$PY" -m vidfx.cli bench gpu --sizes 480x832 320x576 --budget-s 220 60 \
    --other-size-rows eager tae-decoder all all-tae-both \
    --results benchmarks/RESULTS.md --plot benchmarks/gpu.png --json "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
  cp benchmarks/RESULTS.md benchmarks/gpu.png "$OUT/" 2>/dev/null
  echo "gpu_session: bench gpu done at $((SECONDS - start)) s"
  timeout 50 "$PY" -m pytest -q -p no:cacheprovider -p no:logging tests/test_accel.py tests/test_decode_overlap.py \
    -k on_cuda 2>&1 \
    | tee "$OUT/tests.log"
elif [ "$phase" = serve ]; then
  # ≈ 60 s: the small default model, 1 and 2 streams (measured 2026-12-04: 36% / 43% overhead).
  timeout 75 "$PY" -m vidfx.cli bench serve --device cuda --dtype float32 --streams 1 2 --seconds 3 \
    --json "$OUT/serve.json" 2>&1 | tee "$OUT/serve.log"
  # ≈ 35 s: one stream with the decode overlapped (node and standalone alike; its CUDA test is in `bench`).
  timeout 50 "$PY" -m vidfx.cli bench serve --device cuda --dtype float32 --streams 1 --seconds 3 \
    --node-flag=--accel-overlap-decode --json "$OUT/serve_overlap.json" 2>&1 | tee "$OUT/serve_overlap.log"
  echo "gpu_session: serve (default model) done at $((SECONDS - start)) s"
  # ≈ 4 min: the 1.3B architecture as the fastest configuration serves it (each side compiles once, ≈ 45 s).
  flags=(); for f in "${FAST[@]}"; do flags+=("--node-flag=$f"); done
  timeout 260 "$PY" -m vidfx.cli bench serve --model wan-1.3b-random --device cuda --dtype bfloat16 \
    --size 480 832 --streams 1 --seconds 5 "${flags[@]}" --json "$OUT/serve_1.3b.json" 2>&1 | tee "$OUT/serve_1.3b.log"
  echo "gpu_session: serve (1.3B) done at $((SECONDS - start)) s"
  # ≈ 2 min: glass-to-glass through WebRTC (and ZeroMQ) at 480×832, 30 FPS, with the same model.
  timeout 170 "$PY" benchmarks/bench_webrtc.py --size 832 480 --fps 30 --seconds 6 --warmup 3 --no-compare-stock \
    --no-write --node-flag=--model-name=wan-1.3b-random --node-flag=--model-device=cuda \
    --node-flag=--model-dtype=bfloat16 "${flags[@]}" 2>&1 | tee "$OUT/webrtc.log"
else
  echo "gpu_session: phase is bench or serve, not $phase" >&2
  exit 2
fi
echo "gpu_session: $phase done at $((SECONDS - start)) s"
