"""LLaVA conversation templates render exactly the original haotian-liu/LLaVA strings (expected strings written out
by hand from its conversation.py / train.py), answer-only loss masks are exact, and samples whose mask cannot be
built are counted by the pipeline, never trained on with a zero loss."""
import numpy as np
import pytest

from common.data import pipeline as P
from common.data.records import BadRecord, SkipCounter
from llava_jax import conversation as C
from llava_jax.data import LlavaSampleTransform

SAMPLE = [{"from": "human", "value": "What is this?\n<image>"}, {"from": "gpt", "value": "A cup."},
          {"from": "human", "value": "Why?"}, {"from": "gpt", "value": "Because."}]

VICUNA_V1 = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
             "detailed, and polite answers to the user's questions. USER: <image>\nWhat is this? ASSISTANT: A cup.</s>"
             "USER: Why? ASSISTANT: Because.</s>")
LLAVA_LLAMA_2 = ("[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to understand the "
                 "visual content that the user provides, and assist the user with a variety of tasks using natural "
                 "language.\n<</SYS>>\n\n<image>\nWhat is this? [/INST] A cup. </s><s>[INST] Why? [/INST] "
                 "Because. </s>")
CHATML_DIRECT = ("<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat is this?<|im_end|>"
                 "<|im_start|>assistant\nA cup.<|im_end|><|im_start|>user\nWhy?<|im_end|><|im_start|>assistant\n"
                 "Because.<|im_end|>")
QWEN = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nWhat is this?"
        "<|im_end|>\n<|im_start|>assistant\nA cup.<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n"
        "<|im_start|>assistant\nBecause.<|im_end|>\n")


@pytest.mark.parametrize("name, expected", [("vicuna_v1", VICUNA_V1), ("v1", VICUNA_V1),
                                            ("llava_llama_2", LLAVA_LLAMA_2), ("chatml_direct", CHATML_DIRECT),
                                            ("qwen_2", QWEN)])
def test_templates_render_the_original_strings(name, expected):
    assert C.render(name, C.to_messages(SAMPLE, name)) == expected


def test_plain_and_generation_prompts():
    caption = [{"from": "human", "value": "<image>\nDescribe briefly."}, {"from": "gpt", "value": "A red car."}]
    assert C.render("plain", C.to_messages(caption, "plain")) == "<image>A red car.\n"
    assert C.generation_prompt("v1", "Describe.") == (
        VICUNA_V1.split(" USER:")[0] + " USER: <image>\nDescribe. ASSISTANT:")
    assert C.generation_prompt("llava_llama_2", "Hi", num_images=0) == (
        "[INST] <<SYS>>\n" + C.LLAVA_LLAMA_2_SYSTEM + "\n<</SYS>>\n\nHi [/INST]")
    assert C.generation_prompt("qwen_2", "Hi").endswith("<|im_start|>user\n<image>\nHi<|im_end|>\n"
                                                        "<|im_start|>assistant\n")


def test_preprocessing_rules():
    # a leading gpt turn is dropped (as the original), alternation is enforced, markers must match the images
    msgs = C.to_messages([{"from": "gpt", "value": "x"}] + SAMPLE[:2], "v1")
    assert msgs[0] == ("USER", "<image>\nWhat is this?")
    with pytest.raises(BadRecord, match="malformed"):
        C.to_messages([SAMPLE[0], SAMPLE[0]], "v1")
    with pytest.raises(BadRecord, match="image_marker_mismatch"):
        C.to_messages(SAMPLE, "v1", num_images=2)
    # two images in one turn stay where they are (the original would collapse them into one)
    two = [{"from": "human", "value": "Left <image> right <image> same?"}, {"from": "gpt", "value": "No."}]
    assert C.to_messages(two, "v1", num_images=2)[0][1] == "Left <image> right <image> same?"


def test_vicuna_loss_mask_is_exactly_the_answers(llama_tok):
    ex = C.tokenize_conversation(llama_tok, SAMPLE, "vicuna_v1")
    ids, mask = ex["input_ids"].tolist(), ex["loss_mask"]
    assert ids == llama_tok.encode(VICUNA_V1, add_bos=True)
    answers = (llama_tok.encode_continuation(" A cup.</s>") + llama_tok.encode_continuation(" Because.</s>"))
    assert ex["input_ids"][mask].tolist() == answers
    assert ids[0] == llama_tok.bos_id and not mask[0] and ids.count(llama_tok.eos_id) == 2


def test_plain_and_llama2_masks(llama_tok):
    image = llama_tok.token_to_id("<image>")
    caption = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "A red car."}]
    ex = C.tokenize_conversation(llama_tok, caption, "plain")
    # the original's tokenizer_image_token keeps bos; bos and <image> are ignored, caption + "\n" are targets
    assert ex["input_ids"][:2].tolist() == [llama_tok.bos_id, image]
    assert ex["loss_mask"].tolist() == [False, False] + [True] * (len(ex["input_ids"]) - 2)
    assert llama_tok.decode(ex["input_ids"][ex["loss_mask"]]) == "A red car.\n"
    ex = C.tokenize_conversation(llama_tok, SAMPLE, "llava_llama_2")
    assert llama_tok.decode(ex["input_ids"][ex["loss_mask"]]).replace("</s>", "|") == "A cup. | Because. |"


def test_expand_image_tokens(llama_tok):
    image = llama_tok.token_to_id("<image>")
    ex = C.tokenize_conversation(llama_tok, SAMPLE, "vicuna_v1")
    out = C.expand_image_tokens(ex, image, 5)
    assert (out["input_ids"] == image).sum() == 5 and len(out["input_ids"]) == len(ex["input_ids"]) + 4
    assert not out["loss_mask"][out["input_ids"] == image].any()
    assert out["input_ids"][out["loss_mask"]].tolist() == ex["input_ids"][ex["loss_mask"]].tolist()
    out = C.expand_image_tokens(ex, image, [3], placeholder_id=-200)  # the original's IMAGE_TOKEN_INDEX
    assert (out["input_ids"] == -200).sum() == 3
    with pytest.raises(BadRecord, match="image_marker_mismatch"):
        C.expand_image_tokens(ex, image, [3, 4])


def test_tokenization_mismatch_is_counted_not_zeroed(chatml_tok):
    good = [{"from": "human", "value": "What is in the image?"}, {"from": "gpt", "value": "A cat on a sofa."}]
    ex = C.tokenize_conversation(chatml_tok, good, "qwen_2", num_images=0)
    assert chatml_tok.decode(ex["input_ids"][ex["loss_mask"]]) == "A cat on a sofa.<|im_end|>"
    # "assistant\n" + "\nHello": Qwen's pre-tokenizer joins "\n\n" across the answer boundary -> no exact mask
    bad = [{"from": "human", "value": "Hello there."}, {"from": "gpt", "value": "\nThe answer is a cup of coffee."}]
    with pytest.raises(BadRecord, match="tokenization_mismatch"):
        C.tokenize_conversation(chatml_tok, bad, "qwen_2", num_images=0)
    records = [{"image": None, "conversations": c} for c in (good, bad, good, good)]
    counter = SkipCounter(max_skip_fraction=1.0)
    ds, counter = P.build_dataset(records, LlavaSampleTransform(chatml_tok, "qwen_2", image_token_id=-1,
                                                                tokens_per_image=1, max_len=64), batch_size=3,
                                  collate=P.Collate(64, chatml_tok.pad_id), shuffle=False, counter=counter)
    batches = list(ds)
    assert counter.summary()["by_reason"] == {"tokenization_mismatch": 1}
    assert len(batches) == 1 and all(row.sum() > 0 for row in batches[0]["loss_mask"])  # every kept sample trains
    assert np.array_equal(batches[0]["input_ids"][0][batches[0]["loss_mask"][0]], ex["input_ids"][ex["loss_mask"]])
