"""A small text corpus generated in code (no download, identical on every machine), a byte-level tokenizer,
and a token-window iterator with per-host slicing and an exact, JSON-able position: the data of the LM-core
`tiny` config and of the trainer tests.

The corpus mixes templated sentences with learnable structure (arithmetic facts, counting, agreement), so
the loss of a tiny model falls visibly within a few hundred steps. The last `eval_fraction` of the sentences
are held out for evaluation.
"""
from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np

BYTE_VOCAB_SIZE = 256

_NAMES = ("ada", "bob", "cleo", "dan", "eve", "finn", "gus", "hana", "ivan", "june")
_NOUNS = ("cat", "dog", "bird", "fish", "apple", "book", "cup", "star", "tree", "boat")
_ADJECTIVES = ("red", "small", "old", "quiet", "bright", "tall", "green", "soft")
_VERBS = ("sees", "likes", "finds", "holds", "draws", "keeps")
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _sentence(kind: int, r: np.ndarray) -> str:
    """Sentence of template `kind` filled from the random integers r[0..4] (each in [0, 1000))."""
    if kind == 0:
        a, b = r[0] % 10, r[1] % 10
        return f"{a} plus {b} is {a + b}."
    if kind == 1:
        n, noun = 1 + r[0] % 9, _NOUNS[r[1] % len(_NOUNS)]
        return f"{_NAMES[r[2] % len(_NAMES)]} has {_NUMBER_WORDS[n]} {noun}{'s' if n > 1 else ''}."
    if kind == 2:
        start = r[0] % 6
        return "count: " + " ".join(_NUMBER_WORDS[start:start + 4]) + "."
    if kind == 3:
        return (f"the {_ADJECTIVES[r[0] % len(_ADJECTIVES)]} {_NOUNS[r[1] % len(_NOUNS)]} "
                f"{_VERBS[r[2] % len(_VERBS)]} the {_NOUNS[r[3] % len(_NOUNS)]}.")
    a, b = r[0] % 10, r[1] % 10
    return f"{a} times {b} is {a * b}."


@functools.lru_cache(maxsize=4)
def corpus(num_sentences: int = 20000, seed: int = 0) -> tuple[str, ...]:
    """`num_sentences` deterministic sentences."""
    rng = np.random.default_rng(seed)
    kinds = rng.integers(5, size=num_sentences).tolist()
    fills = rng.integers(1000, size=(num_sentences, 4)).tolist()
    return tuple(_sentence(k, r) for k, r in zip(kinds, fills))


def encode(text: str) -> np.ndarray:
    """UTF-8 bytes -> int32 token ids in [0, 256)."""
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)


def decode(ids) -> str:
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=4)
def token_splits(num_sentences: int = 20000, seed: int = 0, eval_fraction: float = 0.05) -> dict[str, np.ndarray]:
    """{'train': ids, 'eval': ids} (read-only): the corpus joined by newlines, the last sentences held out."""
    sentences = corpus(num_sentences, seed)
    n_eval = max(1, int(len(sentences) * eval_fraction))
    splits = {"train": encode("\n".join(sentences[:-n_eval]) + "\n"),
              "eval": encode("\n".join(sentences[-n_eval:]) + "\n")}
    for ids in splits.values():
        ids.flags.writeable = False
    return splits


class TokenWindowIterator:
    """Batches of next-token-prediction windows over a token array, shuffled per epoch.

    Global example g (= step * global_batch + row) is window `perm_epoch[g % W]` of epoch g // W, where W is
    the number of non-overlapping windows of seq_len + 1 tokens; so every host computes the same global batch
    and loads only its rows [index * local, (index + 1) * local). State: {'step': batches produced}.
    Yields {'input_ids', 'targets': int32 [local, seq_len], 'loss_mask': float32 [local, seq_len]}.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, global_batch: int, shard_index: int = 0,
                 shard_count: int = 1, seed: int = 0, shuffle: bool = True):
        if global_batch % shard_count:
            raise ValueError(f"global batch {global_batch} does not split over {shard_count} data shards")
        self.tokens, self.seq_len, self.global_batch = tokens, seq_len, global_batch
        self.local_batch = global_batch // shard_count
        self.row_start = shard_index * self.local_batch
        self.seed, self.shuffle = seed, shuffle
        self.num_windows = (len(tokens) - 1) // seq_len
        if self.num_windows < 1:
            raise ValueError(f"{len(tokens)} tokens are too few for windows of {seq_len + 1}")
        self.step = 0
        self._perm_epoch, self._perm = -1, None

    def _window(self, example: int) -> int:
        epoch, i = divmod(example, self.num_windows)
        if not self.shuffle:
            return i
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
            self._perm_epoch = epoch
        return int(self._perm[i])

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        first = self.step * self.global_batch + self.row_start
        rows = []
        for g in range(first, first + self.local_batch):
            start = self._window(g) * self.seq_len
            rows.append(self.tokens[start:start + self.seq_len + 1])
        windows = np.stack(rows)  # [local, T + 1]
        self.step += 1
        return {"input_ids": windows[:, :-1], "targets": windows[:, 1:],
                "loss_mask": np.ones(windows[:, 1:].shape, np.float32)}

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])
