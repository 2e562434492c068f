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
    chex.assert_shape(speaker.pieces("☞ab"), (4, 16))
    out = list(speaker.speak_stream(["☞Yes, a red", " circle."]))
    assert [s for s, _ in out][0] == "☞Yes,"
    assert all(a.dtype == np.float32 and np.all(np.abs(a) <= 1) for _, a in out)
    assert sum(len(a) for _, a in out) > 0
    calls = itertools.count()
    stopped = list(speaker.speak_stream(["Yes, a red circle."], should_stop=lambda: next(calls) > 5))
    assert sum(len(a) for _, a in stopped) < sum(len(a) for _, a in out)
    assert list(speaker.speak_stream(["☟"])) == []  # nothing to say


def release_stream(decode, tokens, chunk, padding, window, threshold, hop, first_sentence, trim):
    """The release's streaming speech output, ported: llm2tts.py::llm2TTS.run's windows (commit 35d064a) followed by
    web_demo/server.py::tts_worker's first-sentence trim. decode: ids [1, n] -> audio [1, 1, n * hop]."""
    left, right = 0, padding
    buffer = torch.zeros([1, 1, 0])
    token = torch.zeros((1, 0), dtype=torch.long)

    def run():
        nonlocal left, buffer, token
        for next_token in tokens:
            token = torch.cat([token, torch.tensor([[int(next_token)]])], dim=-1)
            if token.size(1) == left + chunk + right:
                syn = decode(token)[:, :, left * hop: -right * hop]
                left = padding
                token = token[:, -(left + right):]
                buffer, syn = release_find_min_sum_index(buffer, syn, window, threshold)
                if syn is not None:
                    yield syn
        if token.size(1) > 0:
            syn = decode(token)[:, :, left * hop:]  # exactly the tokens left
            yield torch.cat([buffer, syn], dim=-1)

    for seg in run():
        if first_sentence:
            try:
                split_idx = torch.nonzero(seg.abs() > trim, as_tuple=True)[-1][0]
                seg = seg[:, :, split_idx:]
            except IndexError:  # the server's bare except: nothing loud, keep the packet
                pass
        yield seg[0, 0].numpy()


@pytest.mark.parametrize("first_sentence", [True, False])
@pytest.mark.parametrize("n_tokens", [77, 50])  # a 27-token tail after two windows; a window that ends exactly
def test_stream_matches_the_release(tiny_codec, first_sentence, n_tokens):
    """Every packet, the last window's included, equals the release's run + tts_worker on the same codec decode
    (the codec itself is compared with the release's in test_codec.py)."""
    codec, params = tiny_codec
    probe = tts.ChunkedCodecDecoder(codec, params)
    tokens = list(np.random.default_rng(n_tokens).integers(0, TINY.n_codes, n_tokens))
    level = float(np.median(np.abs(probe.decode(tokens))))  # a trim level that cuts somewhere inside packets
    cfg = tts.StreamConfig(window=2 * TINY.hop_length + 1, first_threshold=1e9, threshold=1e9, first_trim=level)
    dec = tts.ChunkedCodecDecoder(codec, params, config=cfg)
    got = list(dec.stream(iter(tokens), first_sentence=first_sentence))

    def decode(ids):
        return torch.from_numpy(np.array(dec.decode([int(i) for i in ids[0]])))[None, None]

    chunk = cfg.first_chunk if first_sentence else cfg.chunk
    want = [seg for seg in release_stream(decode, tokens, chunk, cfg.padding, cfg.window, 1e9, TINY.hop_length,
                                          first_sentence, level) if seg.size]
    assert len(got) == len(want) >= 2
    for g, w in zip(got, want):
        chex.assert_trees_all_close(g, w, atol=1e-6, rtol=1e-7)
    if first_sentence:  # the release trims every packet of the first sentence, not only the first one
        assert all(abs(float(g[0])) > level for g in got)


@pytest.mark.slow
def test_last_window_is_decoded_without_padding(tiny_codec):
    """The tail's samples are the decode of exactly its tokens: a padded window would change them (the codec looks
    ahead), which this compares against."""
    codec, params = tiny_codec
    dec = tts.ChunkedCodecDecoder(codec, params, config=tts.StreamConfig(first_threshold=1e9, threshold=1e9))
    tokens = list(np.random.default_rng(5).integers(0, TINY.n_codes, 77))
    audio = np.concatenate(list(dec.stream(iter(tokens), first_sentence=False)))
    hop, tail_start = TINY.hop_length, 50 - 20 + 10  # windows: 0 + 40 + 10, then 10 + 40 + 10 is never full
    tail = tokens[tail_start:]
    exact = dec.decode(tail)[10 * hop:]
    chex.assert_trees_all_close(audio[-len(exact):], exact, atol=1e-6, rtol=1e-7)
    padded = dec.decode(tail + [tail[-1]] * ((-len(tail)) % 10))[10 * hop: len(tail) * hop]
    assert float(np.abs(padded - exact).max()) > 1e-2 * float(np.abs(exact).max())  # the random codec is quiet
