#!/usr/bin/env bash
# The same `pagoda bench sweep` against pagoda and against llama-cpp-python's OpenAI server, on
# the same synthesized smollm2-135m model (pagoda: safetensors bf16; llama.cpp: the GGUF written
# by hf_to_gguf.py). Results (JSON + SVG) go to $OUT. See docs/BENCHMARKS.md for the recorded run.
#
#   PEER_VENV=/path/to/venv-with-llama-cpp-python MODEL_DIR=... GGUF=... OUT=... bench/peers/sweep.sh
set -euo pipefail
PAGODA=${PAGODA:-target/release/pagoda}
MODEL_DIR=${MODEL_DIR:?MODEL_DIR: the HF model directory}
GGUF=${GGUF:?GGUF: the same model as GGUF}
PEER_VENV=${PEER_VENV:?PEER_VENV: a venv with llama-cpp-python[server]}
OUT=${OUT:-sweep-results}
RATES=${RATES:-0.25,0.5,1,2,inf}
NUM_PROMPTS=${NUM_PROMPTS:-32}
mkdir -p "$OUT"

wait_ready() { # url
  for _ in $(seq 1 600); do curl -sf "$1/v1/models" >/dev/null && return 0; sleep 0.5; done
  echo "server at $1 did not come up" >&2; return 1
}

sweep() { # name url extra-args...
  local name=$1 url=$2; shift 2
  "$PAGODA" bench sweep --base-url "$url" --tokenizer "$MODEL_DIR" --workload random \
    --input-len 128 --output-len 128 --num-prompts "$NUM_PROMPTS" --num-warmups 2 \
    --request-rates "$RATES" --seed 0 --no-progress \
    --result-file "$OUT/$name.json" --plot "$OUT/$name.svg" "$@" | tee "$OUT/$name.txt"
}

"$PAGODA" serve --model "$MODEL_DIR" --host 127.0.0.1 --port 8100 >"$OUT/pagoda-server.log" 2>&1 &
PAGODA_PID=$!
trap 'kill $PAGODA_PID 2>/dev/null || true' EXIT
wait_ready http://127.0.0.1:8100
sweep pagoda http://127.0.0.1:8100
kill $PAGODA_PID; wait $PAGODA_PID 2>/dev/null || true

"$PEER_VENV/bin/python" -m llama_cpp.server --model "$GGUF" --host 127.0.0.1 --port 8101 \
  --n_threads 2 --n_threads_batch 2 --n_ctx 4096 --flash_attn True --interrupt_requests False >"$OUT/llama-cpp-python-server.log" 2>&1 &
PEER_PID=$!
trap 'kill $PEER_PID 2>/dev/null || true' EXIT
wait_ready http://127.0.0.1:8101
# llama-cpp-python serves one request at a time (a new one would interrupt the running one
# unless --interrupt_requests False). It has no ignore_eos; min_tokens keeps every answer at the
# full output length.
sweep llama-cpp-python http://127.0.0.1:8101 --extra-body '{"min_tokens": 128}'
