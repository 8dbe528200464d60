"""hf.py against transformers: the tiny checkpoints in tests/fixtures (written by
make_hf_fixtures.py, with what transformers computed on them) load into our model and tokenizer
and give the same logits, cached decode steps, greedy tokens and token ids. Needs no
transformers; the last test, which regenerates the fixtures, runs only where it is installed
(`pytest -m slow tests/test_hf.py`)."""

import importlib.util
import json
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
torch = pytest.importorskip("torch")

from lab import hf
from model import KVCache

FIXTURES = Path(__file__).parent / "fixtures"
CHECKPOINTS = ["hf-llama", "hf-qwen2"]  # Llama 3 (sharded bfloat16) and Qwen2 (float16, tied head)


def expected(name):
    return torch.load(FIXTURES / name / "expected.pt", weights_only=True)


def copy(name, tmp_path) -> Path:
    """A copy of a fixture to break."""
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def edit_json(path: Path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# -----------------------------------------------------------------------------
# The model: logits, cached decode, greedy tokens


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_logits_and_cached_decode_match_transformers(name):
    model, _, _ = hf.load_hf(FIXTURES / name, dtype=torch.float32)
    want = expected(name)
    ids = want["chat_ids"][None]  # (1, T)
    with torch.no_grad():
        _, hidden, _ = model(ids)  # uncached: every position's logits
        torch.testing.assert_close(model.lm_head(hidden)[0], want["prefill_logits"], atol=1e-4, rtol=0)
        cache = KVCache(model.config, 1, ids.shape[1] + 32, dtype=torch.float32)
        logits, _, _ = model(ids, cache)  # cached prefill, then one token at a time
        torch.testing.assert_close(logits[0], want["prefill_logits"][-1], atol=1e-4, rtol=0)
        for token, want_logits in zip(want["decode_inputs"], want["decode_logits"]):
            logits, _, _ = model(token.view(1, 1), cache)
            torch.testing.assert_close(logits[0], want_logits, atol=1e-4, rtol=0)
    assert cache.seen == ids.shape[1] + 32


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_greedy_tokens_match_transformers_generate(name):
    model, _, _ = hf.load_hf(FIXTURES / name, dtype=torch.float32)
    want = expected(name)
    ids = want["chat_ids"][None]  # (1, T)
    cache = KVCache(model.config, 1, ids.shape[1] + 64, dtype=torch.float32)
    tokens = []
    with torch.no_grad():
        logits, _, _ = model(ids, cache)
        for _ in range(64):
            tokens.append(logits.argmax(-1))  # (1,)
            logits, _, _ = model(tokens[-1].view(1, 1), cache)
    assert torch.cat(tokens).tolist() == want["greedy_tokens"].tolist()


@pytest.mark.parametrize("name, stored", [("hf-llama", torch.bfloat16), ("hf-qwen2", torch.float16)])
def test_dtype_defaults_to_the_stored_one(name, stored):
    model, _, _ = hf.load_hf(FIXTURES / name)
    assert {p.dtype for p in model.parameters()} == {stored}
    assert model.inv_freq.dtype == torch.float32  # RoPE's frequencies stay float32, as in transformers
    with torch.no_grad():
        logits, _, _ = model(expected(name)["chat_ids"][None])
    assert logits.dtype == stored and logits.isfinite().all()


def test_config_mapping():
    llama = hf.config_from_hf(FIXTURES / "hf-llama" / "config.json")  # the Hub's layout: rope_scaling
    assert (llama.n_layer, llama.n_head, llama.n_kv_head, llama.n_embd, llama.mlp_hidden) == (2, 4, 2, 64, 128)
    assert (llama.rope_theta, llama.qkv_bias, llama.tie_embeddings, llama.norm_eps) == (500000.0, False, False, 1e-5)
    assert llama.rope_scaling == dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                      original_max_position_embeddings=64)
    qwen = hf.config_from_hf(FIXTURES / "hf-qwen2" / "config.json")  # transformers 5's: rope_parameters
    assert (qwen.rope_theta, qwen.rope_scaling, qwen.qkv_bias, qwen.tie_embeddings) == (10000.0, None, True, True)
    assert (qwen.block_size, qwen.vocab_size, qwen.norm, qwen.mlp, qwen.positions) == \
        (256, 384, "rmsnorm", "swiglu", "rope")


# -----------------------------------------------------------------------------
# The tokenizer and the chat prompt


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_token_ids_match_transformers(name):
    enc = hf.encoding_from_hf(FIXTURES / name / "tokenizer.json")
    want = expected(name)
    ids = enc.encode(want["text"], allowed_special="all")
    assert ids == want["text_ids"].tolist()
    # Qwen2's tokenizer normalizes to NFC: the decomposed accent comes back composed.
    text = unicodedata.normalize("NFC", want["text"]) if name == "hf-qwen2" else want["text"]
    assert enc.decode(ids) == text


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_chat_prompt_matches_apply_chat_template(name):
    _, enc, meta = hf.load_hf(FIXTURES / name)
    want = expected(name)
    ids = hf.chat_prompt(want["chat_question"], enc, meta["bos"])
    assert ids == want["chat_ids"].tolist()
    assert ids[:2] == [meta["bos_id"], meta["user_id"]]
    assert ids[-3:] == [meta["assistant_id"], meta["think_id"], enc.encode_single_token("\n")]
    assert meta["end_think_id"] == enc.encode_single_token("</think>") and meta["eos"] == hf.EOS


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_special_tokens_are_split_out_before_normalizing(name):
    """A combining mark after `<think>`: Hugging Face matches the added token (not normalized)
    before normalizing, so it stays a token; NFC over the whole text would make '>' + U+0338 '≯'."""
    enc = hf.encoding_from_hf(FIXTURES / name / "tokenizer.json")
    think = enc.encode_single_token("<think>")
    assert enc.encode("<think>\u0338", allowed_special="all") == [think, *enc.encode_ordinary("\u0338")]
    ids = enc.encode("e\u0301 <think>\u0338x</think>", allowed_special="all")
    assert ids == [*enc.encode_ordinary("e\u0301 "), think, *enc.encode_ordinary("\u0338x"),
                   enc.encode_single_token("</think>")]
    with pytest.raises(ValueError, match="disallowed special token"):  # tiktoken's default: special text refused
        enc.encode("a <think>\u0338")


def test_gpt2_style_pre_tokenizer(tmp_path):
    """ByteLevel(use_regex=true) alone, as GPT-2's tokenizer.json has it, splits with GPT-2's pattern."""
    path = copy("hf-llama", tmp_path) / "tokenizer.json"
    edit_json(path, lambda t: t.update(pre_tokenizer={"type": "ByteLevel", "add_prefix_space": False,
                                                      "trim_offsets": True, "use_regex": True}))
    enc = hf.encoding_from_hf(path)
    assert enc._pat_str == hf.GPT2_PAT
    text = expected("hf-llama")["text"]
    assert enc.decode(enc.encode(text, allowed_special="all")) == text


# -----------------------------------------------------------------------------
# Refusals: one line naming the file


def swap_merge_ids(t):
    """Give the tokens that the first two merges make each other's id: ids no longer follow the merges."""
    vocab = t["model"]["vocab"]
    a, b = ("".join(merge) for merge in t["model"]["merges"][:2])  # merges as ["a", "b"] pairs
    vocab[a], vocab[b] = vocab[b], vocab[a]


BROKEN = [  # (file, how it is broken, what the message says)
    ("config.json", lambda c: c.update(architectures=["MistralForCausalLM"]), "architecture MistralForCausalLM"),
    ("config.json", lambda c: c["rope_scaling"].update(rope_type="yarn"), "rope type 'yarn'"),
    ("config.json", lambda c: c.update(head_dim=32), "head_dim 32"),
    ("config.json", lambda c: c.update(hidden_act="gelu"), "hidden_act 'gelu'"),
    ("config.json", lambda c: c.update(attention_bias=True), "attention_bias"),
    ("config.json", lambda c: c.pop("num_hidden_layers"), "no 'num_hidden_layers'"),
    ("config.json", lambda c: c.update(num_key_value_heads=3), "must be a multiple of n_kv_head (3)"),
    ("config.json", lambda c: c.update(intermediate_size=96),
     "up_proj.weight has shape (128, 64), our blocks.0.mlp.c_fc.weight needs (96, 64)"),
    ("config.json", lambda c: c.update(num_hidden_layers=3), "no tensor model.layers.2."),
    ("config.json", lambda c: c.update(vocab_size=300), "past config.json's vocab_size 300"),
    ("tokenizer.json", lambda t: t["model"].update(type="Unigram"), "a Unigram model"),
    ("tokenizer.json", lambda t: t.update(normalizer={"type": "NFKC"}), "normalizer NFKC"),
    ("tokenizer.json", lambda t: t.update(pre_tokenizer={"type": "Metaspace"}), "pre-tokenizer ['Metaspace']"),
    ("tokenizer.json", swap_merge_ids, "token ids must follow the merge order"),
    ("tokenizer.json", lambda t: t.update(added_tokens=t["added_tokens"][:4]), "no added token <think>"),
]


@pytest.mark.parametrize("file, change, message", BROKEN, ids=[m for _, _, m in BROKEN])
def test_broken_checkpoints_fail_in_one_line(tmp_path, file, change, message):
    folder = copy("hf-llama", tmp_path)
    edit_json(folder / file, change)
    with pytest.raises(ValueError) as e:
        hf.load_hf(folder)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(folder) in str(e.value)


def test_missing_files_fail_in_one_line(tmp_path):
    folder = copy("hf-llama", tmp_path)
    (folder / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(ValueError, match=r"model-00002-of-00003.safetensors: no such file \(listed in"):
        hf.load_hf(folder)
    (folder / "model.safetensors.index.json").unlink()
    with pytest.raises(ValueError, match="no model.safetensors nor model.safetensors.index.json"):
        hf.load_hf(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json: no such file"):
        hf.load_hf(folder)
    with pytest.raises(ValueError, match="not a folder"):
        hf.load_hf(tmp_path / "nothing")


def poison(path: Path, name: str, value: float):
    """Rewrite one .safetensors file with `value` in one element of tensor `name`."""
    from safetensors.torch import load_file, save_file
    tensors = load_file(path)
    tensors[name].view(-1)[7] = value
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize("name, file, tensor, value", [
    ("hf-qwen2", "model.safetensors", "model.layers.1.self_attn.k_proj.bias", float("nan")),
    ("hf-llama", "model-00002-of-00003.safetensors", "model.layers.0.mlp.up_proj.weight", float("inf")),
])
def test_a_non_finite_weight_is_refused_naming_its_file_and_tensor(tmp_path, name, file, tensor, value):
    folder = copy(name, tmp_path)
    poison(folder / file, tensor, value)
    with pytest.raises(ValueError) as e:
        hf.load_hf(folder)
    assert str(e.value) == f"{folder / file}: tensor {tensor} holds a NaN or inf"
    r = subprocess.run([sys.executable, "generate.py", "--hf", str(folder), "--prompt", "hi", "--device", "cpu"],
                       cwd=FIXTURES.parent.parent, capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert str(folder / file) in lines[0] and tensor in lines[0]


def test_a_weight_that_overflows_the_dtype_is_refused(tmp_path):
    folder = copy("hf-llama", tmp_path)  # bfloat16 holds 1e10; float16 does not
    poison(folder / "model-00001-of-00003.safetensors", "model.embed_tokens.weight", 1e10)
    hf.load_hf(folder)  # as stored: finite
    with pytest.raises(ValueError, match=r"hf-llama: model.embed_tokens.weight overflow float16 \(inf once cast\)"):
        hf.load_hf(folder, dtype=torch.float16)


def test_untied_config_without_a_head_in_the_checkpoint(tmp_path):
    folder = copy("hf-qwen2", tmp_path)
    edit_json(folder / "config.json", lambda c: c.update(tie_word_embeddings=False))
    with pytest.raises(ValueError, match="no tensor lm_head.weight"):
        hf.load_hf(folder)


def test_without_safetensors_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)  # `import safetensors` now fails
    with pytest.raises(ValueError, match="pip install safetensors"):
        hf.load_hf(FIXTURES / "hf-qwen2")


# -----------------------------------------------------------------------------
# The fixtures are what the script makes


@pytest.mark.slow
def test_fixtures_regenerate_identically(tmp_path):
    pytest.importorskip("transformers")
    from safetensors.torch import load_file
    spec = importlib.util.spec_from_file_location("make_hf_fixtures", FIXTURES / "make_hf_fixtures.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(tmp_path)
    for name in CHECKPOINTS:
        new, old = tmp_path / name, FIXTURES / name
        for file in ["config.json", "tokenizer.json", "model.safetensors.index.json"]:
            if (old / file).exists():
                read = lambda p: {k: v for k, v in json.loads(p.read_text()).items() if k != "transformers_version"}
                assert read(new / file) == read(old / file), f"{name}/{file}"
        for file in sorted(old.glob("*.safetensors")):
            a, b = load_file(new / file.name), load_file(file)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name}/{file.name}"
        a, b = torch.load(new / "expected.pt", weights_only=True), expected(name)
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], torch.Tensor) and a[key].is_floating_point():
                torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)
            else:
                assert (a[key].tolist() if isinstance(a[key], torch.Tensor) else a[key]) == \
                       (b[key].tolist() if isinstance(b[key], torch.Tensor) else b[key]), f"{name}: {key}"
