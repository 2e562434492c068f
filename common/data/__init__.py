"""Data layer: embedded shapes dataset, loaders for user formats, preprocessing, bad-record accounting, grain pipelines.

Modules (import what you need; heavy dependencies such as tensorflow_datasets load lazily):
  shapes       the embedded dataset generator (ShapesSource, generate, KINDS, SPLITS)
  tfds_shapes  prepare_shapes() -> array_record via tfds; PreparedShapesSource reads it without TensorFlow
  speech       committed espeak-ng word bank -> real 16 kHz utterances (load_word_bank().say(text, rng))
  formats      coco_captions, tfds_coco_captions, llava_json, interleaved_jsonl (MMC4 / OBELICS), vqav2, librispeech
  image_ops    decode_image (non-RGB images skipped per reason unless convert_image_modes=True), CLIP / ImageNet /
               InternViT normalisation, resize / crop, expand_to_square, LLaVA-NeXT anyres, InternVL tiling, video
               frame sampling
  audio        load_audio (sample-rate checked), Kaldi fbank (numpy), speech_fbank
  batching     tokenize_segments, fit_length, pad_batch
  packing      several whole samples per row with their media (grain's packer), PackedCollate
  prompts      Flamingo / LLaVA / VITA prompt formats with loss masks
  pipeline     build_dataset, DataIterator (checkpointable), Collate, family transforms
  records      BadRecord, SkipCounter, TooManyBadRecords, DataPathError, the skip reasons
"""
from common.data.records import BadRecord, DataPathError, SkipCounter, TooManyBadRecords  # noqa: F401
