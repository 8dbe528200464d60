"""What the four CLIs share: a user's mistake becomes one line on stderr and a non-zero exit,
decided before any long work (generate.py, eval.py, train.py and profile.py all use it).

`run_cli` is every CLI's entry point; the `check_*` functions refuse a setting up front, each
naming the flag and the bound it broke.
"""

import math
import os
import sys

import torch

from model import GPTConfig


class UsageError(ValueError):
    """A user's mistake: reported as one line, without a traceback."""


def check_output_path(flag: str, path: str | None):
    """Fail now, not after the run, if `path` cannot be written as a file: by trying to (a
    permission check alone is not enough: root passes it for /proc)."""
    if path is None:
        return
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: a folder; give a file path")
    existed = os.path.exists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot be written ({e.strerror}; its folder must exist)") from None
    if not existed:
        os.remove(path)


def run_cli(prog: str, main, parse_args, argv=None):
    """Every CLI's entry point: a user's mistake (a ValueError, which UsageError is, and the
    bounds dynts.py and model.py check), running out of memory or Ctrl-C ends in one line on
    stderr and a non-zero exit, never a traceback."""
    try:
        main(**vars(parse_args(argv)))
    except KeyboardInterrupt as e:  # Ctrl-C: what was kept and how to continue, where the run says
        exit_interrupted(prog, str(e) or "nothing was kept")
    except ValueError as e:
        sys.exit(f"{prog}: error: {e}")
    except (torch.OutOfMemoryError, MemoryError) as e:
        sys.exit(f"{prog}: error: out of memory ({type(e).__name__}): try a smaller model, budget or batch")
    except RuntimeError as e:  # the CPU allocator's out-of-memory is a RuntimeError
        if "can't allocate memory" not in str(e) and "out of memory" not in str(e):
            raise
        sys.exit(f"{prog}: error: out of memory ({(str(e).splitlines() or [''])[0]}): "
                 "try a smaller model, budget or batch")


def exit_interrupted(prog: str, message: str):
    """Ctrl-C: one line on stderr, and 130 (128 + SIGINT), the exit status a shell gives it."""
    print(f"{prog}: interrupted: {message}", file=sys.stderr, flush=True)
    raise SystemExit(130)


def free_bytes(device: str) -> int:
    """Memory free for new tensors on a device now."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(what: str, nbytes: int, device: str):
    """Refuse, in one line, an allocation whose size is known in advance and cannot fit."""
    free = free_bytes(device)
    if nbytes > free:
        raise UsageError(f"{what} needs {nbytes / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB free on {device}")


def weight_bytes(config: GPTConfig, element_size: int = 4) -> int:
    """The model's weights, counted from its config (biases and norms left out: they are tiny)."""
    C, H, L, kv = config.n_embd, config.mlp_hidden, config.n_layer, config.n_kv_head * config.head_dim
    per_layer = C * (C + 2 * kv) + C * C + (3 if config.mlp == "swiglu" else 2) * C * H
    tables = config.vocab_size * (1 if config.tie_embeddings else 2) + (config.block_size if config.positions == "learned" else 0)
    return element_size * (tables * C + L * per_layer)


def cache_bytes(config: GPTConfig, batch: int, capacity: int, element_size: int) -> int:
    """A KVCache's buffer: capacity slots of K and V, every layer and KV head."""
    return element_size * config.n_layer * 2 * batch * config.n_kv_head * capacity * config.head_dim


def check_matplotlib(flag: str, path: str | None):
    if path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError(f"{flag} {path}: matplotlib is not installed (pip install matplotlib)") from None


def resolve_device(device: str | None) -> str:
    """--device as given (cpu, cuda or cuda:N), or cuda where there is one."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.startswith("cuda") and n == 0:
        raise UsageError(f"--device {device}: CUDA is not available on this machine (use cpu)")
    ok = device in ("cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit() and int(device[5:]) < n)
    if not ok:
        raise UsageError(f"--device {device!r}: choose cpu" + (f", cuda or cuda:0 to cuda:{n - 1}" if n else ""))
    return device


def check_seed(seed: int):
    if not -2**63 <= seed < 2**64:
        raise UsageError(f"--seed {seed}: must fit in 64 bits")


def check_positive(flag: str, value: float):
    """A rate or scale: finite and > 0."""
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} must be a finite number > 0, got {value}")
