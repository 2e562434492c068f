"""Shared fixtures for the data-layer tests: real images (scikit-image, matplotlib) and real speech."""
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def real_images():
    """name -> uint8 [H, W, 3] real photographs of several sizes and aspect ratios."""
    skd = pytest.importorskip("skimage.data")
    import matplotlib.cbook
    from PIL import Image

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        grace = np.asarray(Image.open(f).convert("RGB"))
    return {"astronaut": skd.astronaut(), "coffee": skd.coffee(), "chelsea": skd.chelsea(), "grace_hopper": grace}


@pytest.fixture(scope="session")
def camera_grey():
    skd = pytest.importorskip("skimage.data")
    return skd.camera()  # uint8 [512, 512] greyscale


@pytest.fixture(scope="session")
def png_rgb16():
    """uint16 [H, W, 3] -> a 48-bit RGB PNG (PIL cannot write one; it reads it as mode RGB, raw mode RGB;16B)."""
    import struct
    import zlib

    def encode(a: np.ndarray) -> bytes:
        h, w, _ = a.shape
        rows = a.astype(">u2")
        raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(h))

        def chunk(tag, data):
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

    return encode


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    """A Llama-style checkpoint directory holding mistral-common's real tokenizer.model.v1 (32000 pieces)."""
    import importlib.resources
    import shutil

    pytest.importorskip("mistral_common")
    src = importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1"
    d = tmp_path_factory.mktemp("llama_tok")
    shutil.copy(str(src), d / "tokenizer.model")
    return str(d)


@pytest.fixture()
def flamingo_tok(llama_dir):
    from common.tokenizers import load_tokenizer

    tok = load_tokenizer(llama_dir)
    tok.add_family_tokens("flamingo")
    return tok
