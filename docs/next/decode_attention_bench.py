"""Why is the plain decode path slow at the 8B shape? Times one layer's decode attention as
model.py computes it (SDPA on the grouped queries, keys a view of the cache) against the
explicit matmul-softmax-matmul that the attention-returning path uses, and SDPA under each
backend, at r1-llama-8b's shape (32 query heads, 8 kv heads, head dim 128), bf16.
usage: python docs/next/decode_attention_bench.py [BATCH] [LIVE_SLOTS] [CAPACITY]"""

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from model import attention_with_probs  # noqa: E402

B, S, cap = (int(a) for a in (sys.argv[1:] + ["8", "2500", "5000"][len(sys.argv[1:]):]))
H, Hkv, D = 32, 8, 128
dev, dt = "cuda", torch.bfloat16
kv = torch.randn(2, B, Hkv, cap, D, device=dev, dtype=dt)
k, v = kv[0, :, :, :S], kv[1, :, :, :S]  # views, as cache.write returns them
q = torch.randn(B, H, 1, D, device=dev, dtype=dt)
grouped = q.reshape(B, Hkv, H // Hkv, D)


def ms(f, n=100):
    for _ in range(5):
        f()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        f()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e3


cases = {"model.py's decode branch (SDPA, grouped queries, cache views)": lambda: F.scaled_dot_product_attention(grouped, k, v),
         "explicit (attention_with_probs)": lambda: attention_with_probs(q, k, v),
         "SDPA, grouped, contiguous keys": lambda: F.scaled_dot_product_attention(grouped, k.contiguous(), v.contiguous()),
         "SDPA, enable_gqa": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)}
for backend in [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]:
    def run(backend=backend):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(grouped, k, v)
    cases[f"SDPA, grouped, only {backend.name}"] = run
bytes_read = 2 * B * Hkv * S * D * 2
print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: batch {B}, {S} live slots of {cap}, "
      f"{H} / {Hkv} heads, head dim {D}, bf16; K and V are {bytes_read / 1e6:.1f} MB a layer")
for name, f in cases.items():
    try:
        t = ms(f)
        print(f"  {t:8.3f} ms  {bytes_read / t / 1e9:7.1f} GB/s  {name}")
    except RuntimeError as e:
        print(f"  {'-':>8}     {'':>13}{name}: {str(e).splitlines()[0][:90]}")
