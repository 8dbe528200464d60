"""Loading a model for generate.py, lab/eval.py and lab/train.py: the project's own checkpoints
(lab/train.py writes them), random weights of a preset, or a Hugging Face folder (lab/hf.py) with
a predictor-only checkpoint. Every file is checked before any long work, and a broken one is
refused in one line that names it.
"""

import inspect
import os
from pathlib import Path

import torch

import dynts
from lab import task
from lab.cli import UsageError, check_memory, weight_bytes
from lab.policies import needs_predictor
from model import END_THINK, GPT, PRESETS, GPTConfig, get_encoding

DEFAULT_CKPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ckpt", "tiny-reasoner.pt")


def load_checkpoint(path: str, device="cpu", flag: str = "--ckpt"):
    """(model, predictor, meta) from a checkpoint written by train.py; meta holds the
    encoding's name, the task's settings, the decoding defaults and the training metrics."""
    if not os.path.isfile(path):
        raise UsageError(f"{flag} {path}: no such file (train one with `python -m lab.train`, "
                         "or use --init random --preset tiny for a mechanics-only run)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        config = GPTConfig(**ckpt["config"])
        model = GPT(config)
        model.load_state_dict(ckpt["model"])
        predictor = dynts.ImportancePredictor(config.n_embd)
        predictor.load_state_dict(ckpt["predictor"])
        meta = dict(encoding=ckpt["encoding"], task=ckpt["task"], decoding=ckpt["decoding"],
                    metrics=ckpt.get("metrics", {}))
        get_encoding(meta["encoding"])
        check_fields(meta)
        for name, tensor in list(ckpt["model"].items()) + list(ckpt["predictor"].items()):
            if not torch.isfinite(tensor).all():
                raise ValueError(f"the weights {name!r} are not finite")
    except Exception as e:  # truncated, another format, another config: one line, naming the file
        raise UsageError(f"{flag} {path}: not a checkpoint of this project ({one_line(e)})") from None
    return model, predictor, meta


def one_line(e: Exception) -> str:
    """An exception's type and the whole first line of its message (some have none)."""
    first = (str(e).splitlines() or [""])[0]
    return type(e).__name__ + (f": {first}" if first else "")


def check_fields(meta: dict):
    """The checkpoint's settings have the types generate.py and eval.py rely on."""
    if not isinstance(meta["task"], dict):
        raise ValueError(f"the field 'task' must be a dict of lab/task.py settings, got {type(meta['task']).__name__}")
    knobs = set(inspect.signature(task.make_problem).parameters) - {"rng", "family"}
    unknown = sorted(set(meta["task"]) - knobs)
    if unknown:
        raise ValueError(f"the field 'task' holds {unknown[0]!r}, not a setting of lab/task.py's problems")
    check_decoding(meta["decoding"])


def check_decoding(d):
    """The decoding defaults: budget, window and ratio, numbers."""
    for field, kind in [("budget", int), ("window", int), ("ratio", (int, float))]:
        if not isinstance(d, dict) or not isinstance(d.get(field), kind) or isinstance(d.get(field), bool):
            raise ValueError(f"the field 'decoding.{field}' is missing or not a number")


def load_predictor(path: str, config: GPTConfig, flag: str = "--predictor"):
    """(predictor, meta) from a predictor-only checkpoint, as `python -m lab.train --hf` writes it: kind
    "dynts-predictor", the config of the model it was trained on (it must be `config`), that
    model's folder, the predictor's weights, the label scale, the decoding defaults (budget,
    window, ratio) and the training metrics."""
    if not os.path.isfile(path):
        raise UsageError(f"{flag} {path}: no such file (train one with "
                         "`python -m lab.train --hf DIR --problems FILE.jsonl`)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("kind") != "dynts-predictor":
            raise ValueError("its kind is not 'dynts-predictor'")
        theirs = GPTConfig(**ckpt["config"])
        if theirs != config:
            field = next(f for f in vars(config) if getattr(config, f) != getattr(theirs, f))
            raise UsageError(f"{flag} {path}: a predictor for another model ({ckpt['model_dir']}: {field} "
                             f"{getattr(theirs, field)}, this one's is {getattr(config, field)})")
        predictor = dynts.ImportancePredictor(config.n_embd)
        predictor.load_state_dict(ckpt["predictor"])
        meta = dict(model_dir=ckpt["model_dir"], label_scale=ckpt["label_scale"], decoding=ckpt["decoding"],
                    metrics=ckpt.get("metrics", {}))
        check_decoding(meta["decoding"])
        for name, tensor in ckpt["predictor"].items():
            if not torch.isfinite(tensor).all():
                raise ValueError(f"the weights {name!r} are not finite")
    except UsageError:
        raise
    except Exception as e:  # truncated, another format: one line, naming the file
        raise UsageError(f"{flag} {path}: not a predictor checkpoint of this project ({one_line(e)})") from None
    return predictor, meta


def open_hf(folder: str):
    """hf.load_hf in two halves: (config, enc, meta) from the small files now (hf.open_hf), so
    that every setting is checked before the weights are read; `load_hf_weights` later."""
    from lab import hf  # (safetensors: only for --hf)
    if not Path(folder).is_dir():
        raise UsageError(f"--hf {folder}: not a folder (a Hugging Face checkpoint: config.json, *.safetensors, "
                         "tokenizer.json)")
    return hf.open_hf(folder)


def load_hf_weights(folder: str, config: GPTConfig, device: str, dtype: torch.dtype, also: int = 0) -> GPT:
    """The other half: the weights, cast to dtype on device, once they and `also` bytes (the
    KV cache) are known to fit."""
    from lab import hf
    nbytes = weight_bytes(config, dtype.itemsize)
    check_memory(f"--hf {folder} ({str(dtype).removeprefix('torch.')} weights and the KV cache)", nbytes + also, device)
    return hf.load_model(folder, config, device, dtype)


def open_model(ckpt, init, preset, hf, predictor_path, device="cpu"):
    """(model, predictor, config, enc, meta): train.py's checkpoint `ckpt`, random weights of
    `preset` (built on `device`: an 8B model's random init takes minutes on a CPU), or the Hugging
    Face folder `hf`, whose weights are read later (model None), once every setting has been
    checked. meta: the task, the decoding defaults, and the ids of end-of-text (where a row stops)
    and `</think>` (where its thinking ends)."""
    if hf is not None:
        config, enc, meta = open_hf(hf)
        predictor, defaults = load_predictor(predictor_path, config) if predictor_path else (None, {})
        decoding = defaults.get("decoding", dict(budget=None, window=None, ratio=0.3))
        return None, predictor, config, enc, dict(meta, task=None, decoding=decoding)
    if init == "random":
        if preset not in PRESETS:
            raise UsageError(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
        check_memory(f"--preset {preset} (built in float32)", weight_bytes(PRESETS[preset]), device)
        with torch.device(device):
            model, predictor = GPT(PRESETS[preset]), dynts.ImportancePredictor(PRESETS[preset].n_embd)
        meta = dict(encoding="bytes-think", task=None, decoding=dict(budget=256, window=64, ratio=0.3))
    else:
        model, predictor, meta = load_checkpoint(DEFAULT_CKPT if ckpt is None else ckpt)
    enc = get_encoding(meta["encoding"])
    return model, predictor, model.config, enc, dict(meta, eos_id=enc.eot_token,
                                                     end_think_id=enc.encode_single_token(END_THINK))


def check_hf_settings(hf, ckpt, init, prompt, policy, predictor_path, budget, window):
    """What --hf needs, checked before anything is read: no other model, a prompt (a real model
    has no built-in problem), a predictor for the policies that use one, and a budget and window
    where no predictor file gives them."""
    if ckpt is not None or init == "random":
        raise UsageError(f"--hf and {'--ckpt' if ckpt is not None else '--init random'}: give one model")
    if prompt is None:
        raise UsageError(f"--hf {hf} needs --prompt: a question (put in R1-Distill's chat format), or a whole "
                         "prompt that starts with the bos token")
    if needs_predictor(policy) and predictor_path is None:
        raise UsageError(f"--policy {policy} with --hf needs --predictor FILE: train one with "
                         f"`python -m lab.train --hf {hf} --problems FILE.jsonl`")
    if policy != "full" and predictor_path is None and (budget is None or window is None):
        raise UsageError(f"--policy {policy} with --hf needs --budget and --window (no --predictor file to "
                         "take them from)")
