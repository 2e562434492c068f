"""Stage 2.0 of the VITA miniature (vita_jax.ctc): the CTC loss against PyTorch's ctc_loss, the transcript labels cut
from a collated ASR batch, greedy best-path decoding, WeNet-style global CMVN, and the VITA task with objective 'ctc'
(its parameters, trainable groups and a finite loss on real espeak speech)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from vita_jax import ctc as ctc_lib


class CTCLossTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_torch_ctc_loss_per_utterance(self):
        rng = np.random.default_rng(0)
        batch, frames, classes, max_labels = 3, 12, 7, 5  # blank = classes - 1
        logits = rng.normal(size=(batch, frames, classes)).astype(np.float32)
        log_probs = jax.nn.log_softmax(jnp.asarray(logits))
        frame_lengths = np.array([12, 9, 6], np.int32)
        label_lengths = np.array([5, 3, 2], np.int32)
        labels = rng.integers(0, classes - 1, size=(batch, max_labels)).astype(np.int32)
        labels[0, 1] = labels[0, 2]  # a repeated label needs a blank between: the path count changes
        paddings = (np.arange(max_labels)[None] >= label_lengths[:, None]).astype(np.float32)

        loss, aux = self.variant(ctc_lib.ctc_loss, static_argnames="blank_id")(
            log_probs, jnp.asarray(frame_lengths), jnp.asarray(labels), jnp.asarray(paddings), blank_id=classes - 1)

        expected = torch.nn.functional.ctc_loss(
            torch.from_numpy(np.array(log_probs)).transpose(0, 1), torch.from_numpy(labels).long(),
            torch.from_numpy(frame_lengths).long(), torch.from_numpy(label_lengths).long(), blank=classes - 1,
            reduction="none").numpy()  # [B] negative log-likelihoods
        chex.assert_trees_all_close(loss, np.mean(expected / label_lengths), atol=1e-4, rtol=1e-5)
        chex.assert_trees_all_close(aux["ctc_per_utterance"], expected.mean(), atol=1e-4, rtol=1e-5)
        chex.assert_trees_all_close(aux["tokens"], float(label_lengths.sum()))

    def test_an_utterance_without_targets_counts_for_nothing(self):
        log_probs = jax.nn.log_softmax(jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 4)), jnp.float32))
        labels = jnp.array([[1, 2], [0, 0]])
        paddings = jnp.array([[0.0, 0.0], [1.0, 1.0]])
        both, _ = ctc_lib.ctc_loss(log_probs, jnp.array([6, 6]), labels, paddings, blank_id=3)
        first, _ = ctc_lib.ctc_loss(log_probs[:1], jnp.array([6]), labels[:1], paddings[:1], blank_id=3)
        chex.assert_trees_all_close(both, first)


def test_transcript_labels_keep_the_answer_tokens_in_order_without_state_and_end_tokens():
    ids = jnp.array([[5, 6, 90, 11, 12, 13, 2, 0], [5, 91, 21, 2, 0, 0, 0, 0]])
    mask = jnp.array([[0, 0, 1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0, 0, 0]])
    labels, paddings = ctc_lib.transcript_labels(ids, mask, excluded_ids=(90, 91, 2))
    chex.assert_shape(labels, (2, 8))
    chex.assert_trees_all_equal(np.asarray(labels)[0, :3], np.asarray([11, 12, 13]))
    chex.assert_trees_all_equal(np.asarray(labels)[1, :1], np.asarray([21]))
    chex.assert_trees_all_equal(np.asarray(paddings),
                                np.asarray([[0, 0, 0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1, 1]]))


def test_greedy_decode_merges_repeats_drops_blanks_and_stops_at_the_length():
    blank = 4
    best = np.array([[1, 1, 4, 1, 2, 2, 4, 3], [4, 0, 0, 0, 4, 4, 2, 2]])
    log_probs = np.log(np.eye(5)[best] * 0.96 + 0.01)
    out = ctc_lib.greedy_decode(jnp.asarray(log_probs), jnp.array([8, 5]), blank)
    assert out == [[1, 1, 2, 3], [0]]


def test_cmvn_statistics_are_the_pooled_mean_and_inverse_std_and_replace_the_encoders():
    rng = np.random.default_rng(2)
    feats = [rng.normal(3.0, 2.0, size=(n, 80)).astype(np.float32) for n in (50, 7, 130)]
    mean, istd = ctc_lib.cmvn_statistics(feats)
    pooled = np.concatenate(feats).astype(np.float64)
    chex.assert_trees_all_close(mean, pooled.mean(0).astype(np.float32), atol=1e-5)
    chex.assert_trees_all_close(istd, (1 / pooled.std(0)).astype(np.float32), rtol=1e-4)
    params = {"audio_encoder": {"global_cmvn_mean": jnp.zeros(80), "global_cmvn_istd": jnp.ones(80), "w": 1},
              "lm": {}}
    new = ctc_lib.with_cmvn(params, mean, istd)
    chex.assert_trees_all_close(new["audio_encoder"]["global_cmvn_istd"], istd)
    assert new["audio_encoder"]["w"] == 1 and new["lm"] is params["lm"]
    with pytest.raises(ValueError, match="CMVN global_cmvn_mean has shape"):
        ctc_lib.with_cmvn(params, mean[:40], istd)
    with pytest.raises(ValueError, match="no fbank frames"):
        ctc_lib.cmvn_statistics([])


def test_the_ctc_stage_task_trains_the_encoder_and_head_on_real_speech(tmp_path):
    import re

    import flax.linen as nn

    from configs import load_config
    from vita_jax.model import STAGE_TRAINABLE
    from vita_jax.task import make_task

    config = load_config("vita/tiny_stage2_0")
    config.init_from = ""
    config.batch_size = 4
    config.data.cmvn_utterances = 8
    task = make_task(config, str(tmp_path))
    params = nn.unbox(task.init_params(jax.random.key(0)))
    vocab = task.model_config.text.vocab_size
    chex.assert_shape(params["ctc_head"]["kernel"], (task.model_config.audio.hidden_size, vocab + 1))
    params = task.load_pretrained(params)  # the CMVN from 8 utterances of the ASR data
    assert float(jnp.abs(params["audio_encoder"]["global_cmvn_mean"]).max()) > 1.0
    batch = next(iter(task.make_train_data(_one_shard())["asr"]))
    loss, aux = task.loss_fn(params, jax.tree.map(jnp.asarray, batch), jax.random.key(1))
    chex.assert_tree_all_finite(loss)
    assert float(aux["tokens"]) >= 4 and 0.0 < float(loss) < 100.0
    trained = [p for p in ("ctc_head/kernel", "audio_encoder/subsampling_out/kernel", "audio_encoder/global_cmvn_istd",
                           "lm/embed/embedding", "audio_adapter/project/kernel")
               if any(re.fullmatch(pattern, p) for pattern in STAGE_TRAINABLE["2.0"])]
    assert trained == ["ctc_head/kernel", "audio_encoder/subsampling_out/kernel"]


def _one_shard():
    from common.trainer import DataShard

    return DataShard(index=0, count=1)
