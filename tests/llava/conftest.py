"""Fixtures for the LLaVA tests: real photographs (scikit-image) and tiny random HF LLaVA checkpoints."""
import numpy as np
import pytest


@pytest.fixture(scope="session")
def real_images():
    """name -> uint8 [H, W, 3]: astronaut 512x512, coffee 400x600, chelsea 300x451 (three aspect ratios)."""
    skd = pytest.importorskip("skimage.data")
    return {"astronaut": skd.astronaut(), "coffee": skd.coffee(), "chelsea": skd.chelsea()}


@pytest.fixture
def np_rng():
    return np.random.RandomState(0)


@pytest.fixture(scope="session")
def llama_tok(tmp_path_factory):
    """mistral-common's real Llama-style tokenizer.model.v1 (32000 pieces) with `<image>` added."""
    import importlib.resources
    import shutil

    pytest.importorskip("mistral_common")
    from common.tokenizers import load_tokenizer

    src = importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1"
    d = tmp_path_factory.mktemp("llama_tok")
    shutil.copy(str(src), d / "tokenizer.model")
    tok = load_tokenizer(str(d))
    tok.add_family_tokens("llava")
    return tok


@pytest.fixture(scope="session")
def chatml_tok():
    """A small byte-level BPE with Qwen's pre-tokenizer (which keeps "\\n\\n" in one piece) and the ChatML specials,
    trained in memory on a few sentences."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from common.tokenizers import QWEN_PATTERN, HFJsonTokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
    corpus = ["system\nYou are a helpful assistant.\n\nuser\nWhat is in the image?\n\nassistant\nA cat on a sofa.",
              "Hello there.\n\nThe answer is a cup of coffee.\n\n"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return HFJsonTokenizer(tokenizer_object=tok, config={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
