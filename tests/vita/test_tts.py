"""Streaming speech output: the release's quiet-point split (against a torch port of find_min_sum_index), the
chunk windows (first packet after 20 + 10 tokens, nothing lost or repeated), segmenting and the Speaker pipeline."""
import itertools

import chex
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_codec import FAST as TINY  # noqa: E402
from vita_jax import codec as codec_lib  # noqa: E402
from vita_jax import speech_decoder as sd  # noqa: E402
from vita_jax import tts  # noqa: E402


def release_find_min_sum_index(buffer, syn, N, threshold):
    """llm2tts.py::find_min_sum_index, verbatim semantics on [1, 1, L] tensors."""
    arr = syn[0, 0, :]
    L = len(arr)
    mid = L // 2
    window_sums = torch.nn.functional.conv1d(arr.abs().view(1, 1, -1), torch.ones(N).view(1, 1, -1)).squeeze()
    start_index = mid - (N // 2)
    min_sum, min_index = torch.min(window_sums[start_index:], dim=0)
    start_index = max(0, min_index.item() + start_index)
    end_index = min(L, min_index.item() + N + start_index)
    _, min_index_real = torch.min(arr[start_index:end_index].abs(), dim=0)
    min_index = min_index_real.item() + start_index
    if min_sum / N < threshold:
        return syn[:, :, min_index:], torch.cat([buffer, syn[:, :, :min_index]], dim=-1)
    return torch.cat([buffer, syn], dim=-1), None


@pytest.mark.parametrize("threshold", [0.05, 1.0])
def test_quiet_point_split_matches_the_release(threshold):
    rng = np.random.default_rng(0)
    syn = (rng.standard_normal(12000) * np.linspace(0.01, 0.3, 12000)).astype(np.float32)
    syn[8000:8600] *= 0.01  # a quiet stretch in the second half
    buffer = rng.standard_normal(700).astype(np.float32)
    got_buf, got = tts.split_at_quiet_point(buffer, syn, 2401, threshold)
    want_buf, want = release_find_min_sum_index(torch.from_numpy(buffer)[None, None], torch.from_numpy(syn)[None, None],
                                                2401, threshold)
    chex.assert_trees_all_close(got_buf, want_buf[0, 0].numpy(), atol=1e-6, rtol=1e-7)
    assert (got is None) == (want is None)
    if got is not None:
        chex.assert_trees_all_close(got, want[0, 0].numpy(), atol=1e-6, rtol=1e-7)


def test_segments_for_speech():
    assert (tts.split_for_speech("☜Yes, there is a red circle. And two")
            == ["☜Yes,", " there is a red circle.", " And two"])
    assert tts.clean_for_speech("☞A **Red** circle<|im_end|>") == "a  red  circle"


@pytest.fixture(scope="module")
def tiny_codec():
    return codec_lib.Codec(TINY), codec_lib.init_params(TINY, jax.random.key(0))


@pytest.mark.slow
def test_chunk_windows(tiny_codec):
    codec, params = tiny_codec
    cfg = tts.StreamConfig(first_threshold=1.0, threshold=1.0)  # always split: packets leave as soon as decoded
    dec = tts.ChunkedCodecDecoder(codec, params, config=cfg)
    tokens = list(np.random.default_rng(0).integers(0, TINY.n_codes, 75))
    pulled = []

    def source():
        for t in tokens:
            pulled.append(t)
            yield t

    stream = dec.stream(source(), first_sentence=False)
    first = next(stream)
    assert len(pulled) == 40 + 10  # later sentences: the first window is 0 + 40 + 10 tokens
    rest = list(stream)
    audio = np.concatenate([first, *rest])
    assert len(audio) == 75 * TINY.hop_length  # every token's audio exactly once
    # the first packet is the first 40 tokens of the window's decode (up to the quiet-point split)
    full = dec.decode(tokens[:50])[:40 * TINY.hop_length]
    chex.assert_trees_all_close(first, full[:len(first)], atol=1e-6, rtol=1e-7)


@pytest.mark.slow
def test_speaker_streams_and_stops(tiny_codec):
    codec, codec_params = tiny_codec
    cfg = sd.SpeechDecoderConfig(idim=16, num_codes=TINY.n_codes, hidden_size=16, intermediate_size=32,
                                 num_layers=2, num_heads=2)
    decoder = sd.SpeechDecoder(cfg)
    params = sd.init_params(cfg, jax.random.key(1))
    table = np.random.default_rng(0).standard_normal((300, 32)).astype(np.float32)  # an LLM of width 32: 2 pieces

    class Bytes:  # a byte tokenizer is enough here
        def encode(self, text):
            return list(text.encode())

    speaker = tts.Speaker.from_params(table, decoder, params, codec, codec_params, Bytes(), max_tokens=35,
                                      max_text_pieces=64)
    assert speaker.pieces("☞ab").shape == (4, 16)
    out = list(speaker.speak_stream(["☞Yes, a red", " circle."]))
    assert [s for s, _ in out][0] == "☞Yes,"
    assert all(a.dtype == np.float32 and np.all(np.abs(a) <= 1) for _, a in out)
    assert sum(len(a) for _, a in out) > 0
    calls = itertools.count()
    stopped = list(speaker.speak_stream(["Yes, a red circle."], should_stop=lambda: next(calls) > 5))
    assert sum(len(a) for _, a in stopped) < sum(len(a) for _, a in out)
    assert list(speaker.speak_stream(["☟"])) == []  # nothing to say
