"""Load a Hugging Face checkpoint of the Llama 3 / Qwen2 family (DeepSeek-R1-Distill-Llama-8B,
R1-Distill-Qwen-1.5B) into model.py's GPT, and its tokenizer into a tiktoken.Encoding, without
transformers: config.json becomes a GPTConfig, the .safetensors tensors our state dict (a name
table and one loop, as nanoGPT's from_pretrained), tokenizer.json tiktoken's ranks.

Give it a folder that is already on disk (what `huggingface-cli download` or `save_pretrained`
leaves): nothing is ever downloaded. Every mistake in the folder is a ValueError of one line
naming the file. tests/test_hf.py checks the result against what transformers computes, saved
by tests/fixtures/make_hf_fixtures.py.

    model, enc, meta = load_hf("DeepSeek-R1-Distill-Qwen-1.5B", device="cuda")
    ids = chat_prompt("What is 12 + 30?", enc, meta["bos"])
"""

import json
import re
import unicodedata
from pathlib import Path

import tiktoken
import torch

from model import GPT, GPTConfig, rope_frequencies

# R1-Distill's special tokens (its tokenizer_config.json may name other bos / eos strings).
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER, ASSISTANT, THINK, END_THINK = "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from None


# -----------------------------------------------------------------------------
# config.json -> GPTConfig


def config_from_hf(path) -> GPTConfig:
    """The GPTConfig of a LlamaForCausalLM or Qwen2ForCausalLM config.json: RMSNorm, SwiGLU,
    RoPE, no biases but Qwen2's on q, k and v. Whatever model.py cannot compute is refused."""
    path = Path(path)
    cfg = read_json(path)
    arch = (cfg.get("architectures") or ["(none)"])[0]
    if arch not in ("LlamaForCausalLM", "Qwen2ForCausalLM"):
        raise ValueError(f"{path}: architecture {arch} is not supported (LlamaForCausalLM or Qwen2ForCausalLM)")
    try:
        C, H = cfg["hidden_size"], cfg["num_attention_heads"]
        # RoPE: transformers 4 wrote rope_theta and rope_scaling; transformers 5 one rope_parameters.
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        kind = rope.get("rope_type", rope.get("type", "default"))
        llama = arch == "LlamaForCausalLM"
        unsupported = {  # what model.py does not compute: refused if true
            f"hidden_act {cfg.get('hidden_act')!r} (silu only)": cfg.get("hidden_act", "silu") != "silu",
            f"head_dim {cfg.get('head_dim')} != hidden_size / heads": cfg.get("head_dim") not in (None, C // H),
            "attention_bias or mlp_bias on Llama": llama and (cfg.get("attention_bias") or cfg.get("mlp_bias")),
            "use_sliding_window": cfg.get("use_sliding_window"),
            f"rope type {kind!r} (none or llama3 only)": kind not in ("default", "llama3"),
        }
        scaling = None if kind != "llama3" else {k: rope[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                                                     "original_max_position_embeddings")}
        fields = dict(
            block_size=cfg["max_position_embeddings"], vocab_size=cfg["vocab_size"],
            n_layer=cfg["num_hidden_layers"], n_head=H, n_kv_head=cfg.get("num_key_value_heads") or H,
            n_embd=C, mlp_hidden=cfg["intermediate_size"], bias=False,
            norm="rmsnorm", norm_eps=cfg.get("rms_norm_eps", 1e-6), mlp="swiglu",
            positions="rope", rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
            rope_scaling=scaling, qkv_bias=not llama, tie_embeddings=cfg.get("tie_word_embeddings", False))
    except KeyError as e:
        raise ValueError(f"{path}: no {e.args[0]!r}") from None
    for what, refused in unsupported.items():
        if refused:
            raise ValueError(f"{path}: {what} is not supported")
    try:
        return GPTConfig(**fields)
    except ValueError as e:  # GPTConfig's own checks (heads, head_dim)
        raise ValueError(f"{path}: {e}") from None


# -----------------------------------------------------------------------------
# *.safetensors -> our state dict

# Ours <- Hugging Face's: one tensor, or several concatenated along dim 0 (q, k, v -> c_attn).
# Llama's Linear weights are (out, in) like ours: nothing is transposed.
TOP_NAMES = {"wte.weight": ["model.embed_tokens.weight"], "ln_f.weight": ["model.norm.weight"],
             "head.weight": ["lm_head.weight"]}
LAYER_NAMES = {  # under blocks.{i}. <- under model.layers.{i}.
    "ln_1.weight": ["input_layernorm.weight"],
    "attn.c_attn.weight": ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"],
    "attn.c_attn.bias": ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"],
    "attn.c_proj.weight": ["self_attn.o_proj.weight"],
    "ln_2.weight": ["post_attention_layernorm.weight"],
    "mlp.c_gate.weight": ["mlp.gate_proj.weight"],
    "mlp.c_fc.weight": ["mlp.up_proj.weight"],
    "mlp.c_proj.weight": ["mlp.down_proj.weight"],
}


def hf_names(ours: str) -> list[str]:
    if ours.startswith("blocks."):
        _, i, rest = ours.split(".", 2)
        return [f"model.layers.{i}.{name}" for name in LAYER_NAMES[rest]]
    return TOP_NAMES[ours]


def open_safetensors(folder: Path) -> dict:
    """{tensor name: (the .safetensors file holding it, that file opened)}, from model.safetensors
    or the shards that model.safetensors.index.json lists. Tensors are read one at a time, later."""
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError:
        raise ValueError("reading Hugging Face checkpoints needs the safetensors package: "
                         "pip install safetensors") from None
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(read_json(index).get("weight_map", {}).values()))
    elif (folder / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise ValueError(f"{folder}: no model.safetensors nor model.safetensors.index.json")
    where = {}
    for file in files:
        path = folder / file
        if not path.exists():
            raise ValueError(f"{path}: no such file (listed in {index.name})")
        try:
            f = safe_open(path, framework="pt")
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{path}: not a readable .safetensors file ({e})") from None
        where.update((name, (path, f)) for name in f.keys())
    return where


def not_finite(folder: Path, where: dict, names: list[str], dtype: torch.dtype) -> str:
    """The one line that names the tensor holding a NaN or inf, and its file; or, if all are
    finite as stored, the tensors whose values overflow `dtype`."""
    for name in names:
        path, f = where[name]
        if not f.get_tensor(name).isfinite().all():
            return f"{path}: tensor {name} holds a NaN or inf"
    return f"{folder}: {' + '.join(names)} overflow {str(dtype).removeprefix('torch.')} (inf once cast)"


def load_weights(model: GPT, folder: Path, device, dtype) -> GPT:
    """Fill a model built on the meta device (shapes only) with the checkpoint's tensors, cast
    to `dtype` (None: as stored) on `device`; each tensor's shape is checked against ours, and
    its values (a NaN or inf decodes without a word: refused, as train.py's checkpoints are)."""
    where = open_safetensors(folder)
    state = {}
    for ours, p in model.named_parameters():
        names = hf_names(ours)
        for name in names:
            if name not in where:
                raise ValueError(f"{folder}: the checkpoint has no tensor {name} (for our {ours})")
        t = torch.cat([where[name][1].get_tensor(name) for name in names])  # (out, in) or (out,)
        if t.shape != p.shape:
            raise ValueError(f"{folder}: {' + '.join(names)} has shape {tuple(t.shape)}, "
                             f"our {ours} needs {tuple(p.shape)}")
        state[ours] = t.to(device=device, dtype=dtype or t.dtype)
        if not state[ours].isfinite().all():  # checked where it lands: on a GPU, at the GPU's speed
            raise ValueError(not_finite(folder, where, names, state[ours].dtype))
    model.load_state_dict(state, assign=True)  # every parameter, or it raises
    if model.config.positions == "rope":  # the one buffer: derived from the config, kept float32
        model.inv_freq = rope_frequencies(model.config).to(device)
    left = [name for name, b in model.named_buffers() if b.is_meta]
    assert not left, f"load_weights does not build the buffers {left}"
    return model


# -----------------------------------------------------------------------------
# tokenizer.json -> tiktoken.Encoding

# GPT-2's split pattern, which ByteLevel(use_regex=true) applies.
GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the character that stands for each byte -> the byte.
    The printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68
    (controls, space, ...) move, in order, to U+0100 and up: 'Ġ' is a space, 'Ċ' a newline."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in keep]
    return {chr(b): b for b in keep} | {chr(256 + i): b for i, b in enumerate(moved)}


def split_pattern(path: Path, pre: dict | None) -> str:
    """The regex that cuts text into pieces before BPE: Split(Regex) then ByteLevel(use_regex=
    false), as Llama 3 and Qwen2 have it, or ByteLevel(use_regex=true) alone (GPT-2's pattern)."""
    pre = pre or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        split, level = steps
        if "Regex" not in split.get("pattern", {}) or split.get("behavior") != "Isolated" or split.get("invert"):
            raise ValueError(f"{path}: a Split pre-tokenizer other than Regex, Isolated, not inverted")
        pattern = split["pattern"]["Regex"]
    elif kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        pattern, level = GPT2_PAT, steps[0]
    else:
        raise ValueError(f"{path}: pre-tokenizer {kinds}: not byte-level BPE (Split + ByteLevel, or ByteLevel)")
    if level.get("add_prefix_space"):
        raise ValueError(f"{path}: ByteLevel add_prefix_space is not supported")
    return pattern


def bpe_ranks(path: Path, vocab: dict[str, int], merges: list, added_ids: set[int]) -> dict[bytes, int]:
    """tiktoken's mergeable_ranks: each token's bytes -> its id.

    Hugging Face's BPE merges the adjacent pair that comes first in `merges`; tiktoken the pair
    whose concatenation has the lowest rank. With ids as ranks they agree when the merges, in
    order, make tokens of non-decreasing id, and every token longer than a byte is made by one:
    true of Llama 3's and Qwen2's files (made from tiktoken ranks), checked here."""
    to_byte = byte_alphabet()
    ranks = {}
    for token, i in vocab.items():
        if i in added_ids:
            continue
        if any(c not in to_byte for c in token):
            raise ValueError(f"{path}: token {i} ({token!r}) is not in the byte-level alphabet")
        ranks[bytes(to_byte[c] for c in token)] = i
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"{path}: {len(missing)} of the 256 bytes have no token (byte {missing[0]} first)")
    made, last = set(), -1
    for n, merge in enumerate(merges):
        a, b = merge.split(" ") if isinstance(merge, str) else merge  # "a b" (old files) or ["a", "b"]
        i = vocab.get(a + b)
        if i is None or i < last:
            made_what = "no token" if i is None else f"token {i} after {last}"
            raise ValueError(f"{path}: merge {n} ({a} {b}) makes {made_what}: "
                             "token ids must follow the merge order for tiktoken's rank-based BPE")
        made.add(i)
        last = i
    unmade = [i for t, i in vocab.items() if len(t) > 1 and i not in made and i not in added_ids]
    if unmade:
        raise ValueError(f"{path}: token {min(unmade)} is made by no merge, which tiktoken's rank-based BPE needs")
    return ranks


class NFCEncoding(tiktoken.Encoding):
    """Qwen2's tokenizer.json normalizes text to Unicode NFC before splitting it; tiktoken does
    not, so encode and encode_ordinary do it first ('e' + U+0301 becomes 'é'). As in Hugging
    Face's tokenizers, encode splits out the special tokens first and normalizes only the text
    between them: NFC would turn `<think>` + U+0338 into `<think` + '≯' and lose the token."""

    def encode_ordinary(self, text: str) -> list[int]:
        return super().encode_ordinary(unicodedata.normalize("NFC", text))

    def encode(self, text: str, *, allowed_special=frozenset(), disallowed_special="all") -> list[int]:
        allowed = self.special_tokens_set if allowed_special == "all" else frozenset(allowed_special)
        disallowed = self.special_tokens_set - allowed if disallowed_special == "all" else frozenset(disallowed_special)
        ids = []
        for i, piece in enumerate(split_specials(text, allowed | disallowed)):
            if i % 2 == 0:  # text between special tokens
                ids += self.encode_ordinary(piece)
            elif piece in allowed:
                ids.append(self.encode_single_token(piece))
            else:  # tiktoken's own error for a special token that is not allowed
                super().encode(piece, allowed_special=allowed, disallowed_special=disallowed)
        return ids


def split_specials(text: str, specials) -> list[str]:
    """[text, token, text, token, ..., text]: the special tokens found in `text`, leftmost first and
    the longest where several start at one place (as Hugging Face's added-token matcher)."""
    if not specials:
        return [text]
    return re.split("(" + "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)) + ")", text)


def encoding_from_hf(path) -> tiktoken.Encoding:
    """A byte-level BPE tokenizer.json (Llama 3, Qwen2, GPT-2) as a tiktoken.Encoding: the
    vocabulary as ranks, the pre-tokenizer's regex as pat_str, every added token as a special
    token (encode them with allowed_special="all"). No bos is added: chat_prompt does that."""
    path = Path(path)
    tok = read_json(path)
    bpe = tok.get("model") or {}
    if bpe.get("type") != "BPE" or (tok.get("decoder") or {}).get("type") != "ByteLevel":
        raise ValueError(f"{path}: a {bpe.get('type')} model with a {(tok.get('decoder') or {}).get('type')} decoder: "
                         "only byte-level BPE (Llama 3, Qwen2, GPT-2) converts to tiktoken")
    for key in ("dropout", "byte_fallback", "continuing_subword_prefix", "end_of_word_suffix"):
        if bpe.get(key):
            raise ValueError(f"{path}: BPE {key} is not supported")
    normalizer = (tok.get("normalizer") or {}).get("type")
    if normalizer not in (None, "NFC"):
        raise ValueError(f"{path}: normalizer {normalizer} is not supported (none or NFC)")
    pattern = split_pattern(path, tok.get("pre_tokenizer"))
    special = {t["content"]: t["id"] for t in tok.get("added_tokens", [])}
    ranks = bpe_ranks(path, bpe.get("vocab", {}), bpe.get("merges", []), set(special.values()))
    cls = NFCEncoding if normalizer == "NFC" else tiktoken.Encoding
    return cls(name=path.parent.name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)


# -----------------------------------------------------------------------------
# R1-Distill's chat format, and the whole checkpoint


def chat_prompt(question: str, enc: tiktoken.Encoding, bos: str = BOS) -> list[int]:
    """One user turn in R1-Distill's chat template, ready for the answer to start thinking:
    bos, <｜User｜>, the question, <｜Assistant｜>, <think>, a newline. As transformers'
    apply_chat_template, a special token's text inside the question becomes that token."""
    return [enc.encode_single_token(bos), enc.encode_single_token(USER),
            *enc.encode(question, allowed_special="all"),
            enc.encode_single_token(ASSISTANT), enc.encode_single_token(THINK), *enc.encode_ordinary("\n")]


def special_ids(folder: Path, enc: tiktoken.Encoding) -> dict:
    """bos and eos (tokenizer_config.json's, or R1's) and the chat and thinking tokens' ids."""
    config = read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").exists() else {}
    content = lambda t, default: (t.get("content") if isinstance(t, dict) else t) or default  # str or AddedToken dict
    meta = dict(bos=content(config.get("bos_token"), BOS), eos=content(config.get("eos_token"), EOS))
    for key, token in dict(bos_id=meta["bos"], eos_id=meta["eos"], user_id=USER, assistant_id=ASSISTANT,
                           think_id=THINK, end_think_id=END_THINK).items():
        if token not in enc.special_tokens_set:
            raise ValueError(f"{folder / 'tokenizer.json'}: no added token {token} (an R1-Distill tokenizer has it)")
        meta[key] = enc.encode_single_token(token)
    return meta


def open_hf(folder):
    """(config, enc, meta) from a checkpoint folder's small files: config.json, tokenizer.json and
    tokenizer_config.json; the weights are not read. meta: special_ids."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    config = config_from_hf(folder / "config.json")
    enc = encoding_from_hf(folder / "tokenizer.json")
    if enc.max_token_value >= config.vocab_size:
        raise ValueError(f"{folder}: tokenizer.json has id {enc.max_token_value}, "
                         f"past config.json's vocab_size {config.vocab_size}")
    return config, enc, special_ids(folder, enc)


def load_model(folder, config: GPTConfig, device="cpu", dtype: torch.dtype | None = None) -> GPT:
    """The model of `config` with the folder's weights, cast to `dtype` (None: as stored)."""
    with torch.device("meta"):  # shapes only: no memory, no random init; load_weights fills it
        model = GPT(config)
    return load_weights(model, Path(folder), device, dtype).eval()


def load_hf(folder, device="cpu", dtype: torch.dtype | None = None):
    """(model, enc, meta) from a checkpoint folder: config.json, *.safetensors, tokenizer.json
    and tokenizer_config.json. The weights are cast to `dtype` (None: as stored); meta holds the
    bos / eos strings and the ids of bos, eos, <｜User｜>, <｜Assistant｜>, <think>, </think>."""
    config, enc, meta = open_hf(folder)
    return load_model(folder, config, device, dtype), enc, meta
