"""What profile.py's timing rests on: the device's clock, its read bandwidth, and jumps.

A jump (`profile.py --jump`) measures a late mark without decoding every step before it. Speed
depends on how many slots the cache holds, not on what they hold (profile.py's weights are
random), so `jump` sets the cache and the policy, in place, to the state a decode holds after
`step` steps, and only the steps the mark is timed over are decoded from there (`timed_spans`).
The filled slots keep the buffer's random keys and values; the policy observes them as decoded
tokens, so its scores, positions and flags are its own; once it has evicted, its last eviction
is replayed with its own select and keep. The eviction schedule is the real one (first at
budget - prompt_len steps, then every cycle), so a jumped decode's cache lengths equal a full
decode's at every decoded step: tests/test_profile.py checks this against a real prefill and
decode. docs/PERF_NOTES.md says what was predicted and measured.

Also here: `Clock`, timestamps on the device's own timeline; `read_bandwidth`, the roofline's
denominator (the bytes a step must read, costs.py, over it); `copy_bandwidth`, the older probe
(docs/bench_attention.py's); `warm_up_eviction`, which keeps the selection's and compaction's
one-time kernel loading out of the timed steps.
"""

import copy
import dataclasses
import functools
import time

import torch

import dynts
from model import GPT, KVCache

FILL_CHUNK = 16  # slots the policy observes at once when a jump fills the cache (bounds the predictor's activations)


# -----------------------------------------------------------------------------
# Measuring


class Clock:
    """Timestamps on the device's own timeline: CUDA events on a GPU (recording one does not wait
    for the GPU), time.perf_counter on a CPU (which runs each op before returning)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def stamp(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start, end) -> float:
        """Rounded to 0.1 us, finer than either clock resolves (keeps the JSON small)."""
        return round(start.elapsed_time(end) / 1e3 if self.cuda else end - start, 7)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


def read_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes/s of a read-only pass over a buffer of at least `nbytes`, as a decode step reads its
    weights and K/V: a sum, whose one float written is nothing. The best of 10 runs, not the median:
    the roofline is a ceiling. (A copy also writes, and read 2.56-2.60 TB/s on an H100 whose decode
    step read its K/V at 3.0: Full printed 111% of that roofline.)"""
    buffer = torch.randn(-(-nbytes // 4), device=device)  # random, not zeros: zeros can run faster
    clock, best = Clock(device), float("inf")
    for i in range(13):
        t0 = clock.stamp()
        buffer.sum()
        t1 = clock.stamp()
        clock.sync()
        if i >= 3:  # warm-up
            best = min(best, clock.seconds(t0, t1))
    return buffer.numel() * 4 / best


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes/s of a large device-to-device copy, counting bytes read plus bytes written (median of 10)."""
    src = torch.randn(nbytes // 4, device=device)  # random, not zeros: zeros can run faster
    dst = torch.empty_like(src)
    clock, times = Clock(device), []
    for i in range(13):
        t0 = clock.stamp()
        dst.copy_(src)
        t1 = clock.stamp()
        clock.sync()
        if i >= 3:  # warm-up
            times.append(clock.seconds(t0, t1))
    del src, dst
    return 2 * nbytes / sorted(times)[len(times) // 2]


def warm_up_eviction(policy: dynts.Policy, model: GPT, batch_size: int, in_place: bool = False):
    """One eviction on scratch data of the real sizes, so that loading its kernels (a one-time
    cost, like the forward's warm-up) stays out of the timed steps. `in_place`: the fast path's
    compaction (lab/fastpath.keep_in_place)."""
    if policy.budget is None:
        return
    device, dtype = model.wte.weight.device, model.wte.weight.dtype
    from lab.policies import PerHead
    scratch = copy.copy(policy)  # the real policy's scores stay untouched
    rows = (1, batch_size, model.config.n_kv_head) if isinstance(policy, PerHead) else (batch_size,)  # (1 layer)
    scratch.scores, scratch.length = torch.rand(*rows, policy.budget, device=device), policy.budget
    scratch.positions = torch.arange(policy.budget, device=device).repeat(*rows, 1)
    cache = KVCache(dataclasses.replace(model.config, n_layer=1), batch_size, policy.budget, device, dtype)
    cache.length = policy.budget
    if in_place:
        from lab.fastpath import keep_in_place
        cache.keep = functools.partial(keep_in_place, cache)
    scratch.evict(cache)


# -----------------------------------------------------------------------------
# Jumping: the state after `step` decode steps, without decoding them


def fill(cache: KVCache, policy: dynts.Policy, start: int, n: int, n_embd: int):
    """Append n slots, as if the tokens at positions start..start+n-1 had just been decoded: the
    buffer's random keys and values, observed by the policy as decoded tokens are (random byte
    tokens and hidden states), so its scores, positions and flags are its own."""
    L, _, B, Hkv = cache.kv.shape[:4]
    device = cache.kv.device
    for a in range(start, start + n, FILL_CHUNK):
        t = min(FILL_CHUNK, start + n - a)
        cache.seen = a
        cache.advance(t)  # the slots' positions: a..a+t-1
        tokens = torch.randint(0, 256, (B, t), device=device)
        # an attention-based policy is shown none received (its shape, as the model gives it)
        attention = torch.zeros(L, B, Hkv, cache.length, device=device) if policy.needs_attention else None
        policy.observe(tokens, torch.randn(B, t, n_embd, device=device, dtype=cache.kv.dtype),
                       torch.arange(a, a + t, device=device), attention)


def last_eviction(policy: dynts.Policy, prompt_len: int, step: int, cycle: int | None) -> int | None:
    """The last decode step <= `step` that ended in an eviction, or None. An evicting policy first
    evicts when the cache reaches its budget, after budget - prompt_len steps, then every `cycle`
    steps (budget less what it keeps; None: only the first is asked for)."""
    first = policy.budget - prompt_len if policy.budget is not None else None
    if first is None or step < first:
        return None
    return first if cycle is None else first + (step - first) // cycle * cycle


def jump(cache: KVCache, policy: dynts.Policy, step: int, prompt_len: int, n_embd: int, cycle: int | None):
    """Set the cache and the policy, in place (the CUDA graphs hold their buffers), as a decode
    holds them after `step` steps: the prompt and the tokens since; or, once the policy has
    evicted, the prompt and the latest tokens up to the budget, the last eviction replayed on
    them with the policy's own select and keep, then the tokens since."""
    cache.length = policy.length = 0
    last = last_eviction(policy, prompt_len, step, cycle)
    if last is None:
        return fill(cache, policy, 0, prompt_len + step, n_embd)
    fill(cache, policy, 0, prompt_len, n_embd)
    fill(cache, policy, prompt_len + last - (policy.budget - prompt_len), policy.budget - prompt_len, n_embd)
    policy.evict(cache)
    fill(cache, policy, prompt_len + last, step - last, n_embd)


def eviction_cycle(cache: KVCache, policy: dynts.Policy, prompt_len: int, n_embd: int) -> int | None:
    """The steps from one eviction to the next, budget less what an eviction keeps: the first
    eviction, replayed by a jump (it leaves the cache there). None: the policy never evicts."""
    if policy.budget is None:
        return None
    jump(cache, policy, policy.budget - prompt_len, prompt_len, n_embd, None)
    return policy.budget - cache.length


def timed_spans(policy: dynts.Policy, marks: list[int], prompt_len: int, tput_window: int,
                cycle: int | None) -> dict:
    """Each mark's steps (lo, hi] timed: the `tput_window` steps up to it or, given the eviction
    `cycle` (with jumps), once the policy has evicted, whole eviction cycles from the last eviction
    before the mark, as many as make `tput_window` steps (one, unless the policy evicts more
    often: H2O native evicts every step)."""
    last = {m: last_eviction(policy, prompt_len, m - 1, cycle) if cycle else None for m in marks}
    span = lambda lo: (lo, lo + cycle * -(-tput_window // cycle))  # whole cycles, at least tput_window steps
    return {m: (max(0, m - tput_window), m) if last[m] is None else span(last[m]) for m in marks}
