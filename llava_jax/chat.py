"""Terminal chat with a LLaVA model (Liu et al. 2023, "Visual Instruction Tuning", Sec. 5.1 multimodal chatbot;
the original's `llava/serve/cli.py`), with any number of images (the original took one):

    python -m llava_jax.chat --checkpoint WORKDIR_OR_EXPORT_OR_HF_DIR --image a.jpg [--image b.jpg] \
        [--prompt "What is in the image?"] [--template vicuna_v1] [--max_new_tokens 256] [--temperature 0.2]

With `--prompt` it answers once and exits; otherwise it reads one user turn per line from stdin until EOF or
`exit`, keeping the conversation history (the images go in front of the first turn, as the original).
--checkpoint takes a training workdir of ours (the tiny configs; LoRA adapters merged), a dir written by
`llava_jax.hf.export` (msgpack or HF), or an HF LLaVA checkpoint (config.json + safetensors + tokenizer).
"""
from __future__ import annotations

import argparse
import sys

import jax

from common.data.image_ops import decode_image
from common.generate import GenerationConfig
from common.tokenizers import IMAGE_TOKEN
from llava_jax import conversation
from llava_jax.hf import load_model
from llava_jax.inference import generate_batch


class ChatSession:
    """Multi-turn state: the template's (role, message) history and the images of the conversation."""

    def __init__(self, module, params, tokenizer, images=(), template: str = "vicuna_v1", max_new_tokens: int = 256,
                 temperature: float = 0.0, seed: int = 0):
        self.module, self.params, self.tokenizer = module, params, tokenizer
        self.images, self.template = list(images), conversation.get_template(template)
        self.messages: list[tuple[str, str]] = []
        eos = (tokenizer.eos_id,) if tokenizer.eos_id is not None else ()
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        self.gen_config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                           temperature=temperature if temperature > 0 else 1.0,
                                           eos_token_ids=eos, pad_token_id=pad)
        self.seed = seed

    def ask(self, text: str) -> str:
        user, assistant = self.template.roles
        if not self.messages and self.images and IMAGE_TOKEN not in text:
            text = (IMAGE_TOKEN + "\n") * len(self.images) + text
        prompt = conversation.render(self.template, self.messages + [(user, text), (assistant, None)])
        answer = generate_batch(self.module, self.params, self.tokenizer, [(self.images, prompt)], raw_prompt=True,
                                config=self.gen_config, rng=jax.random.key(self.seed + len(self.messages)))[0]
        self.messages += [(user, text), (assistant, answer)]
        return answer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Chat with a LLaVA model about images.")
    parser.add_argument("--checkpoint", required=True, help="training workdir, export dir or HF LLaVA dir")
    parser.add_argument("--image", action="append", default=[], help="image file (repeat for several)")
    parser.add_argument("--prompt", default=None, help="answer this once and exit (default: interactive)")
    parser.add_argument("--template", default=None, help="conversation template (default: the checkpoint's)")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    args = parser.parse_args(argv)

    module, params, tokenizer, template = load_model(args.checkpoint, args.template)
    images = [decode_image(path, convert_image_modes=True) for path in args.image]  # chat: any photo, made RGB
    session = ChatSession(module, params, tokenizer, images, template, args.max_new_tokens, args.temperature)
    if args.prompt is not None:
        print(session.ask(args.prompt))
        return 0
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("USER: ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip().lower() in ("exit", "quit"):
            break
        if not line.strip():
            continue
        answer = session.ask(line.strip())
        print(f"ASSISTANT: {answer}" if interactive else answer, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
