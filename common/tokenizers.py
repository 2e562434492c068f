"""Tokenizers: one interface over SentencePiece (`tokenizer.model`) and HF `tokenizer.json`, plus special tokens.

Two backends behind `Tokenizer`:
  * `SentencePieceTokenizer`: Llama / Vicuna / Mistral `tokenizer.model`. Added tokens (e.g. `<image>`) get ids
    after the SentencePiece vocabulary and split the text before SentencePiece sees it. Only the segment at the
    very start of the text gets SentencePiece's dummy-prefix space (the non-legacy HF behaviour), so
    "<image>A cat" tokenizes "A" exactly as HF's LlamaTokenizer does.
  * `HFJsonTokenizer`: a `tokenizers` `tokenizer.json` (Qwen2, MPT, GPT-NeoX).
`load_tokenizer(checkpoint_dir)` picks the backend from the files present (tokenizer.json > tokenizer.model >
*.tiktoken, the last converted in memory by `tiktoken_to_tokenizer_json`). `add_special_tokens` is idempotent and
returns the ids and the new vocabulary size to resize the embedding to: `max(old_embedding_rows, new_vocab_size)`.
"""
from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from collections.abc import Callable, Iterable, Sequence

# Special tokens each family adds to its base tokenizer.
IMAGE_TOKEN = "<image>"
END_OF_CHUNK_TOKEN = "<|endofchunk|>"
AUDIO_TOKEN = "<audio>"
VIDEO_TOKEN = "<video>"
# VITA's answer-state tokens, prefixed to every assistant answer: answer to an audio query, answer to a text
# query, and "noise / not addressed to me: do not answer" (the release's data_utils_video_audio_neg_patch.py:
# ☞ after a human turn holding <audio>, ☜ after a text turn, ☟ for the inserted noise sample). In the release they
# are plain characters through the Qwen BPE; our tokenizers may also add them as tokens.
VITA_STATE_AUDIO_QUERY = "☞"
VITA_STATE_TEXT_QUERY = "☜"
VITA_STATE_NOISE = "☟"
VITA_STATE_TOKENS = (VITA_STATE_AUDIO_QUERY, VITA_STATE_TEXT_QUERY, VITA_STATE_NOISE)
FLAMINGO_PAD_TOKEN = "<PAD>"
ENCODE_CACHE_SIZE = 1 << 16  # memoised encode() results per tokenizer (template pieces repeat in every sample)

FAMILY_SPECIAL_TOKENS: dict[str, tuple[str, ...]] = {
    "flamingo": (IMAGE_TOKEN, END_OF_CHUNK_TOKEN),
    "llava": (IMAGE_TOKEN,),
    "vita": (IMAGE_TOKEN, VIDEO_TOKEN, AUDIO_TOKEN) + VITA_STATE_TOKENS,
}

# Qwen (tiktoken) pre-tokenisation pattern and ChatML specials, used when converting `qwen.tiktoken`.
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def padded_vocab_size(tokenizer) -> int:
    """The tokenizer's vocabulary rounded up to a multiple of 64: the embedding rows of a model sized from it."""
    return -(-tokenizer.vocab_size // 64) * 64


class TokenizerError(ValueError):
    """A tokenizer directory or file that cannot be used."""


@dataclass
class AddedTokens:
    """What `add_special_tokens` returns: the id of every requested token and the vocabulary size after adding."""

    ids: dict[str, int]
    vocab_size: int
    num_added: int


class Tokenizer:
    """Interface shared by the backends. Ids are Python ints; `vocab_size` counts added tokens."""

    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None

    # --- to implement -------------------------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        raise NotImplementedError

    def encode_continuation(self, text: str) -> list[int]:
        """Encodes text that continues a sequence (SentencePiece: no dummy-prefix space at its start)."""
        return self.encode(text)

    def token_to_id(self, token: str) -> int | None:
        raise NotImplementedError

    def id_to_token(self, idx: int) -> str | None:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def _add_tokens(self, tokens: Sequence[str]) -> None:
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------------------------
    def add_special_tokens(self, tokens: Sequence[str]) -> AddedTokens:
        """Adds the tokens that are not in the vocabulary yet (idempotent); they are never split by encode."""
        missing = [t for t in dict.fromkeys(tokens) if self.token_to_id(t) is None]
        if missing:
            self._add_tokens(missing)
        ids = {t: self.token_to_id(t) for t in tokens}
        return AddedTokens(ids=ids, vocab_size=self.vocab_size, num_added=len(missing))

    def add_family_tokens(self, family: str) -> AddedTokens:
        """Adds the special tokens of `family` ('flamingo', 'llava', 'vita'); Flamingo also gets a pad if none."""
        tokens = list(FAMILY_SPECIAL_TOKENS[family])
        if family == "flamingo" and self.pad_id is None:
            tokens.append(FLAMINGO_PAD_TOKEN)
        out = self.add_special_tokens(tokens)
        if family == "flamingo" and self.pad_id is None:
            self.pad_id = out.ids[FLAMINGO_PAD_TOKEN]
        return out

    def set_special(self, bos: str | None = None, eos: str | None = None, pad: str | None = None) -> None:
        """Sets bos/eos/pad ids from token strings (tokens must be in the vocabulary)."""
        for name, tok in (("bos_id", bos), ("eos_id", eos), ("pad_id", pad)):
            if tok is None:
                continue
            idx = self.token_to_id(tok)
            if idx is None:
                raise TokenizerError(f"{name}: token {tok!r} is not in the vocabulary")
            setattr(self, name, idx)

    def __len__(self) -> int:
        return self.vocab_size

    def _wrap(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        if add_bos:
            if self.bos_id is None:
                raise TokenizerError("add_bos=True but this tokenizer has no bos token")
            ids = [self.bos_id] + ids
        if add_eos:
            if self.eos_id is None:
                raise TokenizerError("add_eos=True but this tokenizer has no eos token")
            ids = ids + [self.eos_id]
        return ids


class SentencePieceTokenizer(Tokenizer):
    """`tokenizer.model` via the sentencepiece package, with added tokens appended after its vocabulary."""

    def __init__(self, model_file: str, added_tokens: dict[str, int] | None = None):
        import sentencepiece as spm

        if not os.path.isfile(model_file):
            raise TokenizerError(f"SentencePiece model not found: {model_file}")
        self.sp = spm.SentencePieceProcessor(model_file=model_file)
        self._base = self.sp.vocab_size()
        self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else None
        self._added: dict[str, int] = {}
        self._added_inv: dict[int, str] = {}
        self._split_re: re.Pattern | None = None
        # A second processor without the dummy-prefix space, for segments that follow a special token.
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto()
        with open(model_file, "rb") as f:
            proto.ParseFromString(f.read())
        proto.normalizer_spec.add_dummy_prefix = False
        self.sp_inner = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self._unk_piece = self.sp.id_to_piece(self.sp.unk_id())
        # Control pieces (<s>, </s>, <unk>) written in the text are single tokens, as in HF's tokenizers.
        self._control = {
            self.sp.id_to_piece(i): i for i in range(self._base) if self.sp.is_control(i) or self.sp.is_unknown(i)
        }
        self._rebuild_split()
        for tok, idx in sorted((added_tokens or {}).items(), key=lambda kv: kv[1]):
            self._register(tok, idx)

    def _rebuild_split(self) -> None:
        alts = sorted([*self._added, *self._control], key=len, reverse=True)  # longest first
        alts = [t for t in alts if t]
        self._split_re = re.compile("(" + "|".join(re.escape(t) for t in alts) + ")") if alts else None

    def _register(self, tok: str, idx: int) -> None:
        self._added[tok] = idx
        self._added_inv[idx] = tok
        self._rebuild_split()

    @property
    def vocab_size(self) -> int:
        return max([self._base - 1, *self._added.values()]) + 1

    def _add_tokens(self, tokens: Sequence[str]) -> None:
        for t in tokens:
            self._register(t, self.vocab_size)

    def token_to_id(self, token: str) -> int | None:
        if token in self._added:
            return self._added[token]
        idx = self.sp.piece_to_id(token)
        # piece_to_id answers unk for unknown pieces; only the real unk piece maps to unk.
        if idx == self.sp.unk_id() and token != self._unk_piece:
            return None
        return idx

    def id_to_token(self, idx: int) -> str | None:
        if idx in self._added_inv:
            return self._added_inv[idx]
        return self.sp.id_to_piece(idx) if 0 <= idx < self._base else None

    def _encode_segment(self, text: str, at_start: bool) -> list[int]:
        if not text:
            return []
        return list((self.sp if at_start else self.sp_inner).encode(text))

    def encode_continuation(self, text: str) -> list[int]:
        return self._encode(text, at_start=False)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        return self._wrap(self._encode(text, at_start=True), add_bos, add_eos)

    def _encode(self, text: str, at_start: bool) -> list[int]:
        ids: list[int] = []
        parts = self._split_re.split(text) if self._split_re is not None else [text]
        for part in parts:
            if part in self._added:
                ids.append(self._added[part])
            elif part in self._control:
                ids.append(self._control[part])
            else:
                ids.extend(self._encode_segment(part, at_start))
            if part:
                at_start = False
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        specials = {self.bos_id, self.eos_id, self.pad_id} - {None}
        out: list[str] = []
        run: list[int] = []

        def flush():
            if run:
                text = self.sp.decode(run)
                # SentencePiece drops the leading space of a run; it is real text after a special token.
                if out and self.sp.id_to_piece(run[0]).startswith("\u2581"):
                    text = " " + text
                out.append(text)
                run.clear()

        for i in ids:
            i = int(i)
            if i in self._added_inv or (i in specials and 0 <= i < self._base and self.sp.is_control(i)):
                flush()
                if not skip_special_tokens:
                    out.append(self._added_inv.get(i) or self.sp.id_to_piece(i))
            elif i in specials and skip_special_tokens:
                continue
            else:
                run.append(i)
        flush()
        return "".join(out)


class VocabularyStandIn(Tokenizer):
    """A tokenizer that knows only its vocabulary size and the special tokens added to it: what a task needs to
    build its model and parameter groups when it is only planned ahead of time (`python -m mmlm_jax.plan` for a
    paper config whose checkpoint tokenizer is not on this machine). It cannot encode or decode text."""

    def __init__(self, base_vocab_size: int):
        self.base_vocab_size = int(base_vocab_size)
        self.added: dict[str, int] = {}
        self.pad_id = 0

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        raise TokenizerError("VocabularyStandIn sizes a vocabulary for planning; it cannot encode text")

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        raise TokenizerError("VocabularyStandIn sizes a vocabulary for planning; it cannot decode ids")

    def token_to_id(self, token: str) -> int | None:
        return self.added.get(token)

    def id_to_token(self, idx: int) -> str | None:
        return {i: t for t, i in self.added.items()}.get(idx)

    @property
    def vocab_size(self) -> int:
        return self.base_vocab_size + len(self.added)

    def _add_tokens(self, tokens: Sequence[str]) -> None:
        for token in tokens:
            self.added[token] = self.vocab_size


class HFJsonTokenizer(Tokenizer):
    """A HF `tokenizers` tokenizer.json; bos/eos/pad from tokenizer_config.json / special_tokens_map.json."""

    def __init__(self, tokenizer_file: str | None = None, tokenizer_object=None, config: dict | None = None):
        from tokenizers import Tokenizer as _Tok

        if tokenizer_object is None:
            if not tokenizer_file or not os.path.isfile(tokenizer_file):
                raise TokenizerError(f"tokenizer.json not found: {tokenizer_file}")
            tokenizer_object = _Tok.from_file(tokenizer_file)
        self.tok = tokenizer_object
        self._encode_cache: dict[str, tuple[int, ...]] = {}
        # Encoding must not add the post-processor's specials: bos/eos are explicit arguments of encode.
        config = config or {}
        for name in ("bos", "eos", "pad"):
            tok = config.get(f"{name}_token")
            if isinstance(tok, dict):
                tok = tok.get("content")
            if tok is not None and self.tok.token_to_id(tok) is not None:
                setattr(self, f"{name}_id", self.tok.token_to_id(tok))

    @property
    def vocab_size(self) -> int:
        vocab = self.tok.get_vocab(with_added_tokens=True)
        return max(vocab.values()) + 1 if vocab else 0

    def _add_tokens(self, tokens: Sequence[str]) -> None:
        from tokenizers import AddedToken

        self.tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])
        self._encode_cache.clear()

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def id_to_token(self, idx: int) -> str | None:
        return self.tok.id_to_token(idx)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        # Data pipelines encode the same template pieces (system prompts, roles, questions) again and again: memoise
        # (bounded; cleared when tokens are added, since that changes how text splits).
        ids = self._encode_cache.get(text)
        if ids is None:
            ids = tuple(self.tok.encode(text, add_special_tokens=False).ids)
            if len(self._encode_cache) >= ENCODE_CACHE_SIZE:
                self._encode_cache.clear()
            self._encode_cache[text] = ids
        return self._wrap(list(ids), add_bos, add_eos)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


# --------------------------------------------------------------------------------------------------------------
# tiktoken -> tokenizer.json
# --------------------------------------------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Runs byte-level BPE on `token` using only merges ranked below `max_rank` (tiktoken's algorithm)."""
    parts = [bytes([b]) for b in token]
    while True:
        best, best_rank = None, None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < max_rank and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best is None:
            return parts
        parts = parts[:best] + [parts[best] + parts[best + 1]] + parts[best + 2 :]


def load_tiktoken_ranks(path: str) -> dict[bytes, int]:
    """Reads a `.tiktoken` file: one 'base64(token) rank' per line."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    return ranks


def tiktoken_to_tokenizer_json(
    tiktoken_file: str,
    pattern: str = QWEN_PATTERN,
    special_tokens: Sequence[str] = QWEN_SPECIAL_TOKENS,
    out_file: str | None = None,
):
    """Converts a tiktoken BPE file into a `tokenizers` byte-level BPE (returns it; writes tokenizer.json if asked).

    Each token of length > 1 gets exactly the merge that tiktoken's own BPE would use to build it, so encoding
    equals tiktoken's. Special tokens get ids right after the base vocabulary, in the given order
    (Qwen: <|endoftext|>=151643, <|im_start|>=151644, <|im_end|>=151645).
    """
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as _Tok

    ranks = load_tiktoken_ranks(tiktoken_file)
    b2u = _bytes_to_unicode()

    def s(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {s(tok): r for tok, r in ranks.items()}
    merges = []
    for tok, r in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) < 2:
            continue
        parts = _bpe_parts(ranks, tok, r)
        if len(parts) != 2:
            continue  # not reachable by merges (never produced by BPE); still usable as a whole word
        merges.append((s(parts[0]), s(parts[1])))
    tok = _Tok(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=True))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    if out_file:
        tok.save(out_file)
    return tok


# --------------------------------------------------------------------------------------------------------------
# Loading from a checkpoint directory
# --------------------------------------------------------------------------------------------------------------
def _read_json(path: str) -> dict:
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    return {}


def _checkpoint_config(checkpoint_dir: str) -> dict:
    """bos/eos/pad token strings from tokenizer_config.json, then special_tokens_map.json."""
    cfg: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        for k, v in _read_json(os.path.join(checkpoint_dir, name)).items():
            if k in ("bos_token", "eos_token", "pad_token") and v is not None:
                cfg[k] = v
    return cfg


def _sp_added_tokens(checkpoint_dir: str, base_size: int) -> dict[str, int]:
    """Added tokens of a SentencePiece checkpoint: added_tokens.json and tokenizer_config's added_tokens_decoder."""
    added = {k: int(v) for k, v in _read_json(os.path.join(checkpoint_dir, "added_tokens.json")).items()}
    dec = _read_json(os.path.join(checkpoint_dir, "tokenizer_config.json")).get("added_tokens_decoder", {})
    for idx, info in dec.items():
        if int(idx) >= base_size:
            added[info["content"]] = int(idx)
    return {k: v for k, v in added.items() if v >= base_size}


def load_tokenizer(checkpoint_dir: str) -> Tokenizer:
    """Loads the tokenizer of a local checkpoint directory (tokenizer.json, tokenizer.model or *.tiktoken)."""
    if not os.path.isdir(checkpoint_dir):
        raise TokenizerError(f"tokenizer directory does not exist: {checkpoint_dir}")
    cfg = _checkpoint_config(checkpoint_dir)
    tj = os.path.join(checkpoint_dir, "tokenizer.json")
    sp = os.path.join(checkpoint_dir, "tokenizer.model")
    if os.path.isfile(tj):
        return HFJsonTokenizer(tj, config=cfg)
    if os.path.isfile(sp):
        import sentencepiece as spm

        base = spm.SentencePieceProcessor(model_file=sp).vocab_size()
        tok = SentencePieceTokenizer(sp, added_tokens=_sp_added_tokens(checkpoint_dir, base))
        for name in ("bos", "eos", "pad"):
            t = cfg.get(f"{name}_token")
            t = t.get("content") if isinstance(t, dict) else t
            if t is not None and tok.token_to_id(t) is not None:
                setattr(tok, f"{name}_id", tok.token_to_id(t))
        return tok
    tik = sorted(f for f in os.listdir(checkpoint_dir) if f.endswith(".tiktoken"))
    if tik:
        obj = tiktoken_to_tokenizer_json(os.path.join(checkpoint_dir, tik[0]))
        cfg.setdefault("eos_token", "<|endoftext|>")
        return HFJsonTokenizer(tokenizer_object=obj, config=cfg)
    raise TokenizerError(
        f"no tokenizer in {checkpoint_dir}: expected tokenizer.json, tokenizer.model or a .tiktoken file"
    )


SAVED_TOKENIZER_FILE = "tokenizer.json"


def save_tokenizer(tokenizer, directory: str) -> None:
    """Writes tokenizer.json and tokenizer_config.json (its bos / eos / pad names) of an HFJsonTokenizer into
    `directory` (a training workdir, an exported checkpoint), where `build_tokenizer` finds it again. Other
    tokenizers (SentencePiece) are not written: their checkpoint folder stays the source."""
    if not isinstance(tokenizer, HFJsonTokenizer):
        return
    os.makedirs(directory, exist_ok=True)
    tokenizer.tok.save(os.path.join(directory, SAVED_TOKENIZER_FILE))
    names = {f"{k}_token": tokenizer.id_to_token(getattr(tokenizer, f"{k}_id"))
             for k in ("bos", "eos", "pad") if getattr(tokenizer, f"{k}_id") is not None}
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(names, f)


def build_tokenizer(tok_config, workdir: str | None, *, shapes_tokenizer: Callable[[int], Tokenizer],
                    default_vocab_size: int, family: str | None = None) -> Tokenizer:
    """A family's tokenizer from config.tokenizer: {kind: 'shapes_bpe', vocab_size} (the family's in-memory BPE of
    the bundled data, `shapes_tokenizer(vocab_size)`) or {kind: 'dir', path} (a checkpoint's tokenizer). A workdir
    holding a saved tokenizer.json (`save_tokenizer`, at a run's first start) wins, so a resumed run keeps its
    vocabulary whatever a later library version would build. `family` ('flamingo', 'llava'): its special tokens are
    added to a checkpoint's or a saved tokenizer (a no-op where they are in it already)."""
    tok_config = dict(tok_config or {"kind": "shapes_bpe"})
    if workdir and os.path.isfile(os.path.join(workdir, SAVED_TOKENIZER_FILE)):
        tokenizer = load_tokenizer(workdir)
    else:
        kind = tok_config.get("kind", "shapes_bpe")
        if kind == "shapes_bpe":
            return shapes_tokenizer(int(tok_config.get("vocab_size") or default_vocab_size))
        if kind != "dir":
            raise ValueError(f"unknown tokenizer kind {kind!r}; use 'shapes_bpe' or 'dir' (with path=)")
        if not tok_config.get("path"):
            raise ValueError("tokenizer kind 'dir' needs path= (a checkpoint folder with its tokenizer)")
        tokenizer = load_tokenizer(tok_config["path"])
    if family is not None:
        tokenizer.add_family_tokens(family)
    return tokenizer


def train_byte_level_bpe(corpus: Sequence[str], vocab_size: int, special_tokens: Sequence[str], *,
                         isolate_punctuation: bool = False) -> str:
    """A byte-level BPE (Qwen2-style pre-tokenisation) trained in memory on `corpus`, deterministically, for the
    tiny configs that have no pretrained tokenizer; returns the tokenizer.json text. `isolate_punctuation` splits
    every punctuation mark off first, so that words next to punctuation still map to their own tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    steps = [pre_tokenizers.Punctuation(behavior="isolated")] if isolate_punctuation else []
    steps += [pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
              pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return tok.to_str()
