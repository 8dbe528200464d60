"""Why is the plain decode path slow at the 8B shape? (2026-12-04, one H200, profile.py without
--cuda-graphs at batch 8: full 93 and DynTS 103 tokens/s, the native baselines 235-251, though
those do more work: their attention also returns its probabilities.) Times one layer's decode
attention as model.py computes it (SDPA on the grouped queries, the keys a view of the cache that
grows by one slot a call, as in decoding) against the explicit matmul-softmax-matmul of the path
that returns probabilities, and SDPA restricted to each backend. A growing length matters: a
backend that plans per shape (cuDNN) plans at every step.
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
H, Hkv, D, calls = 32, 8, 128, 100
dev, dt = "cuda", torch.bfloat16
kv = torch.randn(2, B, Hkv, cap, D, device=dev, dtype=dt)
q = torch.randn(B, H, 1, D, device=dev, dtype=dt)
grouped = q.reshape(B, Hkv, H // Hkv, D)


def ms(f, grow):
    """Mean milliseconds a call, over `calls` calls; with `grow`, each call sees one more slot."""
    for i in range(5):
        f(S)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(calls):
        f(S + i if grow else S)
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / calls * 1e3


def keys(n):
    return kv[0, :, :, :n], kv[1, :, :, :n]  # views, as cache.write returns them


cases = {"SDPA, grouped queries (model.py's decode step before 2026-12-04)": lambda n: F.scaled_dot_product_attention(grouped, *keys(n)),
         "explicit (attention_with_probs)": lambda n: attention_with_probs(q, *keys(n)),
         "SDPA, enable_gqa": lambda n: F.scaled_dot_product_attention(q, *keys(n), enable_gqa=True)}
for backend in [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]:
    def run(n, backend=backend):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(grouped, *keys(n))
    cases[f"SDPA, grouped, only {backend.name}"] = run


def no_cudnn(n):  # one context for a decode step that may take flash (bf16) or efficient (fp32)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        return F.scaled_dot_product_attention(grouped, *keys(n))


cases["SDPA, grouped, flash / efficient / math (no cuDNN)"] = no_cudnn
mb = 2 * B * Hkv * S * D * 2 / 1e6
print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: batch {B}, {S} live slots of {cap}, "
      f"{H} / {Hkv} heads, head dim {D}, bf16; K and V are {mb:.1f} MB a layer")
print(f"  {'fixed ms':>9} {'growing ms':>11}  case")
for name, f in cases.items():
    try:
        print(f"  {ms(f, False):9.3f} {ms(f, True):11.3f}  {name}")
    except RuntimeError as e:
        print(f"  {'-':>9} {'-':>11}  {name}: {str(e).splitlines()[0][:90]}")
