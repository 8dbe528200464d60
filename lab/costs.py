"""What one decode step must compute, read and hold: profile.py's analytic counts.

- FLOPs per token. For one token that attends to S live slots:
      2 * N_matmul + 4 * n_layer * n_head * head_dim * S  (+ 2 * N_predictor for DynTS)
  N_matmul counts the weights of every matrix multiply: the blocks' Linear layers and the LM
  head (tied to the embedding); a multiply-add is 2 FLOPs. The attention term is QK^T (2 FLOPs
  per head dimension per slot) plus AV (2 more). This is the forward-pass count of Kaplan et al.
  2020, "Scaling Laws for Neural Language Models", Table 1 (2N + 2 n_layer n_ctx d_attn, with
  the de-embedding counted and AV added), and of PaLM (Chowdhery et al. 2022), Appendix B
  (6N + 12 L H Q T for training = 3 x this forward count). Embedding lookups, norms, softmax
  and biases are left out (well under 1%). Grouped-query attention shares keys and values
  between heads but not the FLOPs: every query head still does its dot products.
- Bytes read per step, for the memory roofline: every weight once, plus every row's live keys
  and values. profile.py divides them by the copy bandwidth it measures.
- Memory held per row, for `--batch-size max`: the largest batch that fits the GPU's free
  memory with a policy's own cache. DynTS holds `budget` slots a row against Full's prompt +
  steps, so ~3x the rows, and each step reads the weights once for all of them (the terms:
  docs/PERF_NOTES.md).
"""

import torch

from lab.cli import UsageError, cache_bytes, check_memory, free_bytes, weight_bytes
from lab.fastpath import CHUNK
from model import GPT, GPTConfig

MEMORY_MARGIN = 0.05  # --batch-size max leaves 5% of the free memory unused (4 GiB of an H100's 79): for cuBLAS's
#                       workspaces, the CUDA graphs' pools, the allocator's rounding, and the plain path's compaction
#                       chunk (KVCache.keep: 32 slots of every layer, 4 MiB a row at 8B)


def analytic(model: GPT, predictor=None) -> dict:
    """Parameter and byte counts for the FLOPs and roofline formulas (see the docstring)."""
    cfg = model.config
    elt = model.wte.weight.element_size()
    linear = sum(p.numel() for p in model.blocks.parameters() if p.dim() == 2)  # the blocks' Linear weights
    head = model.wte if model.head is None else model.head  # tied: the LM head is a matmul with the embedding
    lm_head = head.weight.numel()
    pred = sum(p.numel() for p in predictor.parameters() if p.dim() == 2) if predictor is not None else 0
    # Read per step: every block parameter, the LM head (which, tied, covers the embedding rows
    # looked up), the final norm, one learned-position row (none with RoPE).
    read = sum(p.numel() for p in model.blocks.parameters()) + lm_head + sum(p.numel() for p in model.ln_f.parameters())
    return dict(
        matmul_params=linear + lm_head,
        predictor_matmul_params=pred,
        weight_bytes=(read + (cfg.n_embd if cfg.positions == "learned" else 0)) * elt,
        predictor_bytes=sum(p.numel() for p in predictor.parameters()) * elt if predictor is not None else 0,
        kv_slot_bytes_per_row=cache_bytes(cfg, 1, 1, elt),  # K and V of one slot, all layers, one row
        attn_flops_per_slot=4 * cfg.n_layer * cfg.n_head * cfg.head_dim,  # QK^T + AV, one token, one slot
    )


def flops_per_token(a: dict, live: int, with_predictor: bool) -> float:
    """2 N_matmul + 4 n_layer n_head head_dim S (+ 2 N_predictor): Kaplan et al. 2020 Table 1, PaLM App. B."""
    predictor = 2 * a["predictor_matmul_params"] if with_predictor else 0
    return 2 * a["matmul_params"] + a["attn_flops_per_slot"] * live + predictor


def bytes_per_step(a: dict, live: int, with_predictor: bool, batch: int) -> int:
    """Bytes a decode step of `batch` rows must read at least: every weight once, and each row's live
    keys and values."""
    kv = batch * live * a["kv_slot_bytes_per_row"]
    return a["weight_bytes"] + (a["predictor_bytes"] if with_predictor else 0) + kv


def row_bytes(cfg: GPTConfig, capacity: int, elt: int, cuda_graphs: bool) -> int:
    """Memory one row of the batch holds at a decode step: its KV cache of `capacity` slots with
    their bookkeeping, and its share of the step's working memory."""
    slots = cache_bytes(cfg, 1, capacity, elt) + capacity * (8 + 4 + 8)  # K, V; cache.pos, policy.scores, .positions
    logits = cfg.vocab_size * elt  # (B, vocab) in the model's dtype: greedy sampling takes the argmax as they are
    # One layer's live activations, the largest (the allocator reuses them layer after layer): measured at the aten
    # level on the CPU, 3 H + 4 C elements for the Llama block (gate, up, their product; the residual, its norm...),
    # 2 H + 4 C for GELU's, 3 H + 4.3 C for Qwen2's.
    activations = elt * (3 * cfg.mlp_hidden + 5 * cfg.n_embd)
    # fastpath.GraphedDecode's split-KV partial results, float32: outputs, max and sum of exp per query head and split
    # (splits of CHUNK slots, the shorter of its two settings: at most this many)
    partials = cfg.n_head * -(-capacity // CHUNK) * (cfg.head_dim + 2) * 4 if cuda_graphs else 0
    return slots + logits + activations + partials


def max_batch(cfg: GPTConfig, capacity: int, elt: int, free: int, fixed: int, cuda_graphs: bool) -> int:
    """The most rows whose caches and working memory fit `free` bytes, less MEMORY_MARGIN, after
    `fixed` bytes (the weights and the predictor); 0 when not even one does."""
    return max(0, (int(free * (1 - MEMORY_MARGIN)) - fixed) // row_bytes(cfg, capacity, elt, cuda_graphs))


def check_fits(cfg: GPTConfig, preset: str, batch_size, capacities: dict, prompt_len: int, steps: int, budget: int,
               dtype: str, device: str, memory_gib: float | None = None) -> int | None:
    """Refuse, naming the flag, a profile whose weights and largest KV cache cannot fit; with
    `--batch-size max`, only the weights (the batch follows from what is left), and a
    `--memory-gib` beyond what is free. Returns the memory free before the model is built (for
    max), or None."""
    if memory_gib is not None and batch_size != "max":
        raise UsageError(f"--memory-gib sizes --batch-size max; with --batch-size {batch_size} it would be ignored")
    if batch_size == "max":
        check_memory(f"--preset {preset} (built in float32)", weight_bytes(cfg), device)
        free = free_bytes(device)
        if memory_gib is not None and not 0 < memory_gib * 2**30 <= free:
            raise UsageError(f"--memory-gib {memory_gib} must be above 0 and at most the {free / 2**30:.1f} GiB free")
        return free
    full, elt = "full" in capacities, getattr(torch, dtype).itemsize
    what = f"--prompt-len {prompt_len} plus --steps {steps}" if full else f"--budget {budget}"
    capacity = max(capacities.values())
    # built in float32, then cast; the cache comes after: it needs the larger of the two
    check_memory(f"{what} with --batch-size {batch_size}: --preset {preset} (built in float32, then "
                 f"{dtype} beside a KV cache of {batch_size} x {capacity} slots)",
                 max(weight_bytes(cfg), weight_bytes(cfg, elt) + cache_bytes(cfg, batch_size, capacity, elt)), device)
    return None


def equal_memory_batches(cfg: GPTConfig, capacities: dict, elt: int, free: int, predictor_bytes: int, device,
                         cuda_graphs: bool, limit: int | None = None) -> tuple[dict, int]:
    """`--batch-size max`: each policy's most rows beside what the weights took (measured from
    `free`, the memory free before they were built, or counted if more), and those bytes. The rows
    fill `limit` bytes (--memory-gib) instead of all that was free, when given."""
    torch.cuda.empty_cache()
    fixed = max(free - free_bytes(str(device)), weight_bytes(cfg, elt) + predictor_bytes)
    room = free if limit is None else limit
    batches = {n: max_batch(cfg, capacity, elt, room, fixed, cuda_graphs) for n, capacity in capacities.items()}
    if min(batches.values()) < 1:
        raise UsageError(f"--batch-size max: not one row of {min(batches, key=batches.get)}'s cache fits beside "
                         f"the weights ({fixed / 2**30:.1f} GiB) in the {room / 2**30:.1f} GiB on {device}")
    return batches, fixed
