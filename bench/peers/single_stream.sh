#!/usr/bin/env bash
# Single-stream speed, pagoda against llama.cpp's llama-bench on the same models, interleaved in
# one session (this machine's memory bandwidth drifts, so runs alternate): pagoda `bench latency`
# (512-token prefill, then 128 decoded tokens, median of ITER runs, strict bandwidth bound) and
# llama-bench pp512 and tg128 at depth 512 (LLAMA_REPS repetitions each). docs/BENCHMARKS.md has
# the recorded runs.
#
#   LLAMA_BENCH=/path/to/llama-bench OUT=results REPS=3 bench/peers/single_stream.sh \
#     "smollm2-bf16|/models/smollm2-bf16|/models/smollm2-f16.gguf" \
#     "smollm2-q8_0|/models/smollm2-q8_0.gguf|/models/smollm2-q8_0.gguf" ...
#
# Each argument is LABEL|PAGODA_MODEL|PEER_GGUF (PAGODA_MODEL: a directory or a GGUF file).
# ITER=1 LLAMA_REPS=1 REPS=7 pairs single runs a few seconds apart (this VM's two memory states
# last seconds to minutes, so a pair's two runs mostly share one), and the summary's last lines
# give the medians of the per-pair ratios, and of the fractions in the same memory state (runs
# wholly in one state against the best probe in that state; count of such runs in brackets), and
# of the aligned runs' fractions (`bench latency --aligned-segment`: a probe every 16 decoded
# tokens, each stretch against the probes beside it).
set -euo pipefail
PAGODA=${PAGODA:-target/release/pagoda}
LLAMA_BENCH=${LLAMA_BENCH:?LLAMA_BENCH: the llama-bench binary}
OUT=${OUT:-single-stream-results}
REPS=${REPS:-3}
ITER=${ITER:-3}
LLAMA_REPS=${LLAMA_REPS:-3}
mkdir -p "$OUT"
for rep in $(seq 1 "$REPS"); do
  for spec in "$@"; do
    IFS='|' read -r label model gguf <<<"$spec"
    "$PAGODA" bench latency --model "$model" --iterations "$ITER" --json 2>/dev/null \
      >"$OUT/pagoda-$label-$rep.json"
    "$LLAMA_BENCH" -m "$gguf" -t 2 -p 0 -n 128 -d 512 -r "$LLAMA_REPS" -o json 2>/dev/null \
      >"$OUT/llama-$label-tg-$rep.json"
    "$LLAMA_BENCH" -m "$gguf" -t 2 -p 512 -n 0 -r "$LLAMA_REPS" -o json 2>/dev/null \
      >"$OUT/llama-$label-pp-$rep.json"
    python3 - "$OUT" "$label" "$rep" <<'PY'
import json, sys
out, label, rep = sys.argv[1:]
p = json.load(open(f"{out}/pagoda-{label}-{rep}.json"))
pp = json.load(open(f"{out}/llama-{label}-pp-{rep}.json"))[0]["avg_ts"]
tg = json.load(open(f"{out}/llama-{label}-tg-{rep}.json"))[0]["avg_ts"]
rt = ", ".join(f"{r:.0f}" for r in p.get("core_round_trip_ns_runs", []) if r is not None)
states = "".join(f"; {s['state']} {s['decode_bandwidth_fraction']:.2f} of {s['bandwidth_gb_s']:.1f}"
                 for s in p.get("memory_states", []))
if p.get("aligned"):
    states += f"; aligned {p['aligned']['decode_bandwidth_fraction']:.2f}"
print(f"{label} rep {rep}: pagoda prefill {p['prefill_tok_s']:.0f} decode {p['decode_tok_s']:.1f} "
      f"(bound {p['decode_bound_tok_s']:.0f} at {p['bandwidth_gb_s']:.1f} GB/s, "
      f"{p['decode_bandwidth_fraction']:.2f}; round trip {rt} ns{states}) | llama.cpp pp512 {pp:.0f} "
      f"tg128@512 {tg:.1f} | ratios prefill {p['prefill_tok_s'] / pp:.2f} "
      f"decode {p['decode_tok_s'] / tg:.2f}")
PY
  done
done
python3 - "$OUT" "$REPS" "$@" <<'PY'
import json, statistics, sys
out, reps, specs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for spec in specs:
    label = spec.split("|")[0]
    pre, dec, frac, aligned, by_state = [], [], [], [], {}
    for rep in range(1, reps + 1):
        p = json.load(open(f"{out}/pagoda-{label}-{rep}.json"))
        pp = json.load(open(f"{out}/llama-{label}-pp-{rep}.json"))[0]["avg_ts"]
        tg = json.load(open(f"{out}/llama-{label}-tg-{rep}.json"))[0]["avg_ts"]
        pre.append(p["prefill_tok_s"] / pp)
        dec.append(p["decode_tok_s"] / tg)
        frac.append(p["decode_bandwidth_fraction"])
        if p.get("aligned"):
            aligned.append(p["aligned"]["decode_bandwidth_fraction"])
        for s in p.get("memory_states", []):
            by_state.setdefault(s["state"], []).append(s["decode_bandwidth_fraction"])
    m = statistics.median
    states = "".join(f"; {k} {m(v):.3f} ({len(v)})" for k, v in sorted(by_state.items()))
    if aligned:
        states += f"; against the probes beside each stretch {m(aligned):.3f} (min {min(aligned):.3f})"
    print(f"{label}: median over {reps} pairs: prefill {m(pre):.2f}x, decode {m(dec):.2f}x "
          f"(min {min(dec):.2f}x), decode / bound {m(frac):.3f}; in the same memory state{states}")
PY
