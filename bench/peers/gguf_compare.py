#!/usr/bin/env python3
"""Compares two GGUF files with gguf-py's reader (llama.cpp's GGUF library): every tensor's type,
shape and bytes, and the metadata values they share; prints keys only one file has.

    python bench/peers/gguf_compare.py A.gguf B.gguf
"""

import sys

import numpy as np
import gguf


def fields(reader: gguf.GGUFReader) -> dict:
    out = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        out[name] = field.contents()
    return out


def main() -> int:
    a, b = gguf.GGUFReader(sys.argv[1]), gguf.GGUFReader(sys.argv[2])
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    bad = 0
    for name in sorted(set(ta) | set(tb)):
        if name not in ta or name not in tb:
            print(f"tensor {name}: only in {'A' if name in ta else 'B'}")
            bad += 1
            continue
        x, y = ta[name], tb[name]
        if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape):
            print(f"tensor {name}: {x.tensor_type.name}{list(x.shape)} vs {y.tensor_type.name}{list(y.shape)}")
            bad += 1
        elif not np.array_equal(np.asarray(x.data).view(np.uint8), np.asarray(y.data).view(np.uint8)):
            print(f"tensor {name}: bytes differ")
            bad += 1
    fa, fb = fields(a), fields(b)
    for key in sorted(set(fa) | set(fb)):
        if key not in fa or key not in fb:
            value = fa.get(key, fb.get(key))
            shown = f"{len(value)} values" if isinstance(value, list) else repr(value)[:80]
            print(f"metadata {key}: only in {'A' if key in fa else 'B'} ({shown})")
        elif fa[key] != fb[key]:
            va, vb = fa[key], fb[key]
            if isinstance(va, float) and isinstance(vb, float) and np.float32(va) == np.float32(vb):
                continue
            shown = (lambda v: f"{len(v)} values" if isinstance(v, list) else repr(v)[:80])
            print(f"metadata {key}: {shown(va)} vs {shown(vb)}")
            bad += 1
    print(f"{len(ta)} tensors compared, {bad} differences")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
