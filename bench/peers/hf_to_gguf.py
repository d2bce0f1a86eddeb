#!/usr/bin/env python3
"""Writes a Hugging Face Llama model directory (as made by `pagoda synth-model`) as a GGUF file
that llama.cpp (and llama-cpp-python) load, so a peer server can be benchmarked on the same model.

Covers what pagoda's synthesized shapes and test models need: `LlamaForCausalLM` (q/k permuted as
llama.cpp's `LlamaModel.permute` does, Llama 3 rope scaling as a `rope_freqs.weight` tensor) and
`Qwen2ForCausalLM` (biases, no permutation), safetensors in f32/bf16/f16, and either a byte-level
BPE `tokenizer.json` (GGUF tokenizer model `gpt2`) or a SentencePiece-style BPE with byte fallback
(GGUF `llama`, written as llama.cpp's `_set_vocab_llama_hf` / gguf-py's `LlamaHfVocab` writes it:
every score -1000, special tokens CONTROL, `<0xNN>` BYTE). Matrices whose rows do not fill whole
quantization blocks fall back to F16, as in llama.cpp's converter. Uses the `gguf` package from
PyPI (llama.cpp's own GGUF library) for the file format and quantization; nothing else.

    pip install gguf numpy
    python bench/peers/hf_to_gguf.py MODEL_DIR OUT.gguf --type f16|bf16|q8_0|f32
"""

import argparse
import json
import math
import re
import struct
import sys
from pathlib import Path

import numpy as np
import gguf

QTYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}


def read_safetensors(path: Path) -> dict:
    """Every tensor of one safetensors file as float32 (bf16 widened by bit shift)."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    base = 8 + header_len
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        buf = raw[base + start : base + end]
        dtype = info["dtype"]
        if dtype == "F32":
            arr = np.frombuffer(buf, dtype=np.float32)
        elif dtype == "F16":
            arr = np.frombuffer(buf, dtype=np.float16).astype(np.float32)
        elif dtype == "BF16":
            arr = (np.frombuffer(buf, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            sys.exit(f"{path}: tensor {name} has dtype {dtype} (supported: F32, F16, BF16)")
        out[name] = arr.reshape(info["shape"])
    return out


def permute_for_ggml_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half rows → GGML's interleaved-pair rows, per head (what llama.cpp's converter does)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(config: dict, head_dim: int) -> np.ndarray:
    """Llama 3 rope scaling as llama.cpp's converter stores it: one divisor per frequency."""
    scaling = config["rope_scaling"]
    base = config.get("rope_theta", 10000.0)
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_len = scaling.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_len / low, old_len / high
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def add_tokenizer(writer: gguf.GGUFWriter, model_dir: Path) -> None:
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    model = tok["model"]
    byte_level = (tok.get("pre_tokenizer") or {}).get("type") == "ByteLevel"
    spm = model.get("byte_fallback", False) and (tok.get("decoder") or {}).get("type") == "Sequence"
    if model["type"] != "BPE" or not (byte_level or spm):
        sys.exit("only byte-level BPE and byte-fallback (SentencePiece-style) BPE tokenizers are supported")
    vocab = dict(model["vocab"])
    special = set()
    for added in tok.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        if added.get("special"):
            special.add(added["id"])
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for text, idx in vocab.items():
        tokens[idx] = text
        if idx in special:
            types[idx] = gguf.TokenType.CONTROL
        elif spm and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
            types[idx] = gguf.TokenType.BYTE
        else:
            types[idx] = gguf.TokenType.NORMAL
    if spm:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores([-1000.0] * size)
        writer.add_token_types(types)
        if model.get("unk_token") in vocab:
            writer.add_unk_token_id(vocab[model["unk_token"]])
    else:
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    ids = {t: i for i, t in enumerate(tokens)}
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id)):
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if value in ids:
            add(ids[value])
    writer.add_add_bos_token(bool(config.get("add_bos_token", True)))
    writer.add_add_eos_token(bool(config.get("add_eos_token", False)))
    if config.get("chat_template"):
        writer.add_chat_template(config["chat_template"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--type", choices=sorted(QTYPES), default="f16")
    args = parser.parse_args()

    config = json.loads((args.model_dir / "config.json").read_text())
    archs = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
    arch = archs.get((config.get("architectures") or [""])[0])
    if arch is None:
        sys.exit(f"architectures {config.get('architectures')}: only {', '.join(archs)} are supported")
    tensors = {}
    for f in sorted(args.model_dir.glob("*.safetensors")):
        tensors.update(read_safetensors(f))

    hidden = config["hidden_size"]
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_head)
    head_dim = config.get("head_dim", hidden // n_head)
    layers = config["num_hidden_layers"]
    qtype, ftype = QTYPES[args.type]

    writer = gguf.GGUFWriter(str(args.out), arch)
    writer.add_name(args.model_dir.name)
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(writer, args.model_dir)

    def add(name: str, w: np.ndarray, matrix: bool) -> None:
        # Norms and biases stay f32 as in llama.cpp; matrices take the requested type, or F16 when
        # their rows do not fill whole blocks (llama.cpp's converter falls back the same way).
        t = qtype if matrix else gguf.GGMLQuantizationType.F32
        w = np.ascontiguousarray(w, dtype=np.float32)
        try:
            data = gguf.quants.quantize(w, t)
        except gguf.QuantError as e:
            print(f"{name}: {e}, falling back to F16", file=sys.stderr)
            t = gguf.GGMLQuantizationType.F16
            data = gguf.quants.quantize(w, t)
        writer.add_tensor(name, data, raw_dtype=t)

    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])
    elif kind == "llama3":
        add("rope_freqs.weight", llama3_rope_factors(config, head_dim), False)
    elif kind not in (None, "default"):
        sys.exit(f"rope_scaling {kind} is not supported")

    # llama.cpp runs `llama` with GGML's interleaved RoPE and so permutes q/k; `qwen2` runs NEOX
    # (rotate-half) RoPE and keeps the Hugging Face rows.
    permute = permute_for_ggml_rope if arch == "llama" else (lambda w, _heads: w)
    add("token_embd.weight", tensors["model.embed_tokens.weight"], True)
    for i in range(layers):
        p = f"model.layers.{i}."
        add(f"blk.{i}.attn_norm.weight", tensors[p + "input_layernorm.weight"], False)
        add(f"blk.{i}.attn_q.weight", permute(tensors[p + "self_attn.q_proj.weight"], n_head), True)
        add(f"blk.{i}.attn_k.weight", permute(tensors[p + "self_attn.k_proj.weight"], n_kv), True)
        add(f"blk.{i}.attn_v.weight", tensors[p + "self_attn.v_proj.weight"], True)
        for short, heads in (("q", n_head), ("k", n_kv), ("v", None)):
            bias = tensors.get(p + f"self_attn.{short}_proj.bias")
            if bias is not None:
                add(f"blk.{i}.attn_{short}.bias", permute(bias, heads) if heads else bias, False)
        add(f"blk.{i}.attn_output.weight", tensors[p + "self_attn.o_proj.weight"], True)
        add(f"blk.{i}.ffn_norm.weight", tensors[p + "post_attention_layernorm.weight"], False)
        add(f"blk.{i}.ffn_gate.weight", tensors[p + "mlp.gate_proj.weight"], True)
        add(f"blk.{i}.ffn_up.weight", tensors[p + "mlp.up_proj.weight"], True)
        add(f"blk.{i}.ffn_down.weight", tensors[p + "mlp.down_proj.weight"], True)
    add("output_norm.weight", tensors["model.norm.weight"], False)
    if not config.get("tie_word_embeddings", False):
        add("output.weight", tensors["lm_head.weight"], True)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {args.out} ({args.type})")


if __name__ == "__main__":
    main()
