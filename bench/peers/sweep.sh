#!/usr/bin/env bash
# The same `pagoda bench sweep` against pagoda and against a llama.cpp-based OpenAI server, on the
# same synthesized model (pagoda: the safetensors directory; the peer: the GGUF written by
# hf_to_gguf.py). Results (JSON + SVG + terminal output) go to $OUT. docs/BENCHMARKS.md has the
# recorded runs.
#
#   PEER=llama-cpp-python PEER_VENV=/path/to/venv MODEL_DIR=... GGUF=... OUT=... bench/peers/sweep.sh
#   PEER=llama-server LLAMA_SERVER=/path/to/llama-server SLOTS=16 AXIS="--max-concurrencies 1,4,16" ...
#
# PAGODA_MODEL (default MODEL_DIR) is what pagoda serves, e.g. the same GGUF file as the peer;
# the client's tokenizer always comes from MODEL_DIR.
set -euo pipefail
PAGODA=${PAGODA:-target/release/pagoda}
MODEL_DIR=${MODEL_DIR:?MODEL_DIR: the HF model directory}
GGUF=${GGUF:?GGUF: the same model as GGUF}
PEER=${PEER:-llama-cpp-python}
OUT=${OUT:-sweep-results}
AXIS=${AXIS:---request-rates ${RATES:-0.25,0.5,1,2,inf}}
NUM_PROMPTS=${NUM_PROMPTS:-32}
INPUT_LEN=${INPUT_LEN:-128}
OUTPUT_LEN=${OUTPUT_LEN:-128}
PAGODA_ARGS=${PAGODA_ARGS:-}
PAGODA_MODEL=${PAGODA_MODEL:-$MODEL_DIR}
mkdir -p "$OUT"

wait_ready() { # url
  for _ in $(seq 1 600); do curl -sf "$1/v1/models" >/dev/null && return 0; sleep 0.5; done
  echo "server at $1 did not come up" >&2; return 1
}

sweep() { # name url extra-args...
  local name=$1 url=$2; shift 2
  # shellcheck disable=SC2086
  "$PAGODA" bench sweep --base-url "$url" --tokenizer "$MODEL_DIR" --workload random \
    --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --num-prompts "$NUM_PROMPTS" \
    --num-warmups 2 $AXIS --seed 0 --no-progress \
    --result-file "$OUT/$name.json" --plot "$OUT/$name.svg" "$@" | tee "$OUT/$name.txt"
}

# shellcheck disable=SC2086
"$PAGODA" serve --model "$PAGODA_MODEL" --host 127.0.0.1 --port 8100 $PAGODA_ARGS \
  >"$OUT/pagoda-server.log" 2>&1 &
PAGODA_PID=$!
trap 'kill $PAGODA_PID 2>/dev/null || true' EXIT
wait_ready http://127.0.0.1:8100
sweep pagoda http://127.0.0.1:8100
kill $PAGODA_PID; wait $PAGODA_PID 2>/dev/null || true

case "$PEER" in
  llama-cpp-python)
    PEER_VENV=${PEER_VENV:?PEER_VENV: a venv with llama-cpp-python[server]}
    # It serves one request at a time (a new one would interrupt the running one unless
    # --interrupt_requests False). It has no ignore_eos; min_tokens keeps every answer at the
    # full output length.
    "$PEER_VENV/bin/python" -m llama_cpp.server --model "$GGUF" --host 127.0.0.1 --port 8101 \
      --n_threads 2 --n_threads_batch 2 --n_ctx 4096 --flash_attn True \
      --interrupt_requests False >"$OUT/$PEER-server.log" 2>&1 &
    EXTRA='{"min_tokens": '"$OUTPUT_LEN"'}'
    ;;
  llama-server)
    LLAMA_SERVER=${LLAMA_SERVER:?LLAMA_SERVER: the llama-server binary}
    SLOTS=${SLOTS:-16}
    # SLOTS parallel sequences, 1024 tokens of context each, continuous batching, flash attention.
    "$LLAMA_SERVER" -m "$GGUF" --host 127.0.0.1 --port 8101 -t 2 -np "$SLOTS" \
      -c $((SLOTS * 1024)) -cb -fa on >"$OUT/$PEER-server.log" 2>&1 &
    EXTRA='{}'  # llama-server honours ignore_eos
    ;;
  *) echo "PEER must be llama-cpp-python or llama-server" >&2; exit 2 ;;
esac
PEER_PID=$!
trap 'kill $PEER_PID 2>/dev/null || true' EXIT
wait_ready http://127.0.0.1:8101
sweep "$PEER" http://127.0.0.1:8101 --extra-body "$EXTRA"
