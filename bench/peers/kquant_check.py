# Cross-check of pagoda's Q4_K / Q6_K / Q4_1 / Q5_0 / Q5_1 dequantization against gguf-py on LCG blocks.
import numpy as np, gguf
def lcg(n, seed):
    s = seed; out = []
    M = (1 << 64) - 1
    for _ in range(n):
        s = (s * 6364136223846793005 + 1442695040888963407) & M
        out.append(s >> 56)
    return bytearray(out)
h = lambda x: np.float16(x).tobytes()
q4k = lcg(144, 7); q4k[0:2] = h(0.5); q4k[2:4] = h(0.25)
q6k = lcg(210, 11); q6k[208:210] = h(0.5)
for name, b, t in (("Q4K", q4k, gguf.GGMLQuantizationType.Q4_K), ("Q6K", q6k, gguf.GGMLQuantizationType.Q6_K)):
    out = gguf.quants.dequantize(np.frombuffer(bytes(b), dtype=np.uint8), t).astype(np.float32).ravel()
    s = np.float32(0)
    for v in out: s = np.float32(s + v)   # sequential f32 sum, as Rust's iter().sum()
    print(name, [repr(float(out[i])) for i in (0, 37, 100, 255)], repr(float(s)))

# Q4_1 / Q5_0 / Q5_1: two blocks each, d = 0.5 (and m = -1.25).
for name, seed, t in (("Q4_1", 3, gguf.GGMLQuantizationType.Q4_1), ("Q5_0", 5, gguf.GGMLQuantizationType.Q5_0),
                      ("Q5_1", 9, gguf.GGMLQuantizationType.Q5_1)):
    size = gguf.GGML_QUANT_SIZES[t][1]
    b = lcg(2 * size, seed)
    for k in range(2):
        b[k * size:k * size + 2] = h(0.5)
        if name != "Q5_0":
            b[k * size + 2:k * size + 4] = h(-1.25)
    out = gguf.quants.dequantize(np.frombuffer(bytes(b), dtype=np.uint8), t).astype(np.float32).ravel()
    s = np.float32(0)
    for v in out: s = np.float32(s + v)
    print(name, [repr(float(out[i])) for i in (0, 17, 40, 63)], repr(float(s)))
