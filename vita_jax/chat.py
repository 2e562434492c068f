"""Ask a VITA-1.5 model about an image / a video and a spoken (or typed) question; the answer is text, with the
state the model chose (☞ answer to speech, ☜ answer to text, ☟ noise: the model stays silent):

    python -m vita_jax.chat --model_dir VITA-1.5 --image a.jpg --audio q.wav [--question "..."] \
        [--max_tiles 1] [--max_new_tokens 256] [--dtype bfloat16] [--show_state]

--model_dir is the released VITA-1.5 folder (config.json, the four safetensors shards, tokenizer files, the audio
encoder folder with train.yaml / global_cmvn). Audio at any sample rate (resampled to 16 kHz); images are tiled with
InternVL's dynamic tiling up to --max_tiles (the release's real-time demo uses 1, its training 12).
"""
from __future__ import annotations

import argparse
import sys

from common.data.image_ops import decode_image
from common.tokenizers import load_tokenizer
from vita_jax import conversation, load_original
from vita_jax.inference import Request, generate_batch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Answer a spoken or typed question about images with VITA-1.5.")
    parser.add_argument("--model_dir", required=True, help="the released VITA-1.5 folder")
    parser.add_argument("--image", action="append", default=[], help="image file (repeat for several)")
    parser.add_argument("--audio", default=None, help="spoken question (wav / flac / ogg)")
    parser.add_argument("--question", default="", help="typed question (before the audio, as the release's demo)")
    parser.add_argument("--max_tiles", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--dtype", default=None, help="parameter / compute dtype (default float32)")
    parser.add_argument("--show_state", action="store_true", help="print the state token the answer began with")
    args = parser.parse_args(argv)
    if not args.image and not args.audio and not args.question:
        parser.error("give at least one of --image, --audio, --question")

    module, params = load_original(args.model_dir, dtype=args.dtype)
    tokenizer = load_tokenizer(args.model_dir)
    request = Request(question=args.question, images=[decode_image(p, convert_image_modes=True) for p in args.image],
                      audio=[args.audio] if args.audio else [])
    answer = generate_batch(module, params, tokenizer, [request], max_new_tokens=args.max_new_tokens,
                            max_tiles=args.max_tiles)[0]
    state = conversation.answer_state(answer)
    if args.show_state:
        print(f"[state: {state or 'none'}]")
    print("" if state == "noise" else conversation.strip_states(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
