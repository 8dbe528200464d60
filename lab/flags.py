"""The command lines' flags, checked on their own and against each other before any work:
generate.py's and profile.py's. Each mistake is one line that names the flag (lab/cli.run_cli)."""

import math
import sys

from lab.checkpoint import check_hf_settings
from lab.cli import UsageError, check_matplotlib, check_output_path, check_positive, check_seed, resolve_device
from lab.policies import NAMES, needs_attention, uses_ratio


def policy_names(text: str, flag: str) -> list[str]:
    """A comma-separated list of policies, each one known (generate.py's --policy, profile.py's
    --policies); empty pieces ("dynts,") are dropped, an empty list refused."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UsageError(f"{flag} is empty: name a policy, or several, comma-separated")
    for name in names:
        if name not in NAMES:
            raise UsageError(f"{flag} {name!r}: unknown policy; choose from {', '.join(NAMES)} "
                             "(several: comma-separated)")
    return names


def check_flags(policy, budget, window, ratio, prompt, problem, temperature, seed, ckpt, init, preset, hf,
                predictor_path, stats_json, html_path, plot_path, cuda_graphs):
    """The flags on their own and against each other, before anything is loaded."""
    for flag, path in [("--stats-json", stats_json), ("--html", html_path), ("--plot", plot_path)]:
        check_output_path(flag, path)
    check_matplotlib("--plot", plot_path)
    check_seed(seed)
    if temperature not in (None, 0):  # 0 is greedy; None: the checkpoint's; anything else divides the logits
        check_positive("--temperature", temperature)
        if temperature < 1e-3:
            raise UsageError(f"--temperature {temperature}: use 0 for greedy, or at least 1e-3")
    if ratio is not None and not 0 < ratio <= 1:  # whatever the policy
        raise UsageError(f"--ratio must be in (0, 1], got {ratio}")
    if prompt is not None and problem is not None:
        raise UsageError("--prompt and --problem: give one (a problem is a prompt of the checkpoint's task)")
    if problem is not None and not 0 <= problem < 10**4:
        raise UsageError(f"--problem must be in [0, 10000), got {problem}")
    if init == "random" and ckpt is not None:
        raise UsageError("--ckpt and --init random: give one model")
    if init != "random" and preset is not None:
        raise UsageError(f"--preset {preset} is the shape of --init random's weights; a checkpoint has its own")
    if hf is not None:
        check_hf_settings(hf, ckpt, init, prompt, policy, predictor_path, budget, window)
    elif predictor_path is not None:
        raise UsageError("--predictor is for --hf models (a --ckpt checkpoint holds its own predictor)")
    if cuda_graphs and needs_attention(policy):
        raise UsageError(f"--cuda-graphs: --policy {policy} scores by attention weights; run it without graphs")
    if ratio is not None and policy != "full" and not uses_ratio(policy):
        raise UsageError(f"--ratio: --policy {policy} keeps what its own schedule keeps, "
                         "not a ratio of the older tokens")
    if policy == "full" and any(v is not None for v in (budget, window, ratio)):
        print("generate.py: note: --policy full never evicts; --budget, --window and --ratio are ignored",
              file=sys.stderr)


def check_lengths(policy, prompt_len, block_size, budget, window, max_new_tokens, num_samples, top_k):
    """The prompt and the lengths asked for, against the model and the budget."""
    if prompt_len >= block_size:
        raise UsageError(f"--prompt: its {prompt_len} tokens leave no room below the model's block_size {block_size}")
    for name, value, low in [("--max-new-tokens", max_new_tokens, 1), ("--num-samples", num_samples, 1),
                             ("--top-k", top_k, 1), ("--budget", budget, 1), ("--window", window, 0)]:
        if value is not None and value < low:
            raise UsageError(f"{name} must be >= {low}, got {value}")
    if prompt_len + max_new_tokens > block_size:
        raise UsageError(f"--max-new-tokens {max_new_tokens} plus the prompt's {prompt_len} tokens exceeds "
                         f"the model's block_size {block_size}")
    if policy != "full" and prompt_len >= budget:
        raise UsageError(f"--budget {budget} must exceed the prompt's {prompt_len} tokens")


def check_profile_flags(cfg, preset, policies, batch_size, prompt_len, steps, budget, ratio, device, dtype, cuda_graphs,
                        every, tput_window, seed, json_path, plot_path):
    """profile.py's flags: returns the policies' names, the batch size (a number, or "max"), the
    device and the dtype, resolved."""
    names = policy_names(policies, "--policies")
    if len(set(names)) != len(names):
        raise UsageError(f"--policies {policies!r}: name each policy once")
    if batch_size != "max":
        try:
            batch_size = int(batch_size)
        except ValueError:
            raise UsageError(f"--batch-size must be a number or max, got {batch_size!r}") from None
    check_seed(seed)
    if not 0 < ratio <= 1:  # whatever the policies
        raise UsageError(f"--ratio must be in (0, 1], got {ratio}")
    for flag, value in [("--batch-size", 1 if batch_size == "max" else batch_size), ("--prompt-len", prompt_len),
                        ("--steps", steps), ("--every", every), ("--tput-window", tput_window)]:
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if prompt_len + steps > cfg.block_size:
        raise UsageError(f"--prompt-len {prompt_len} plus --steps {steps} exceeds the block_size {cfg.block_size} "
                         f"of --preset {preset}")
    if cuda_graphs and any(needs_attention(name) for name in names):
        raise UsageError(f"--cuda-graphs: {next(n for n in names if needs_attention(n))} scores by attention "
                         "weights; profile it without graphs")
    device = resolve_device(device)
    if cuda_graphs and not device.startswith("cuda"):
        raise UsageError("--cuda-graphs needs a CUDA device")
    if batch_size == "max" and not device.startswith("cuda"):
        raise UsageError("--batch-size max fills a GPU's free memory: it needs a CUDA device (on the CPU, give a "
                         "number)")
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    check_output_path("--json", json_path)  # (checked now, not after the whole run)
    check_output_path("--plot", plot_path)
    check_matplotlib("--plot", plot_path)
    if any(name != "full" for name in names) and budget <= prompt_len:
        raise UsageError(f"--budget {budget} must exceed the prompt's {prompt_len} tokens")
    return names, batch_size, device, dtype


def warn_prompt_fills_older(pol, prompt_len: int):
    """A note when the rule's older share is no more than the protected prompt (it keeps the prompt)."""
    older = math.floor(pol.ratio * (pol.budget - pol.window)) if pol.budget is not None else None
    if pol.protect_prompt and pol.reads_ratio and older <= prompt_len:  # it keeps max(protected, older)
        print(f"generate.py: note: --budget {pol.budget} --window {pol.window} --ratio {pol.ratio} keeps "
              f"floor({pol.ratio} x {pol.budget - pol.window}) = {older} older tokens, no more than the "
              f"{prompt_len}-token protected prompt: every eviction keeps the prompt and the window, no older "
              "generated token", file=sys.stderr)
