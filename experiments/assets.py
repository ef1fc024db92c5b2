"""Offline assets for demos, benchmarks and processor tests: real photos, a trained tokenizer, a LLaVA config.

Nothing here downloads anything: the photos come from scikit-image's `skimage.data` (public domain / CC0),
the tokenizer is a byte-level BPE trained on the spot with `tokenizers`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxvlm.processor import LLAVA_SYSTEM, llava_prompt

# skimage.data names -> (height, width) as shipped; a mix of square, portrait and landscape photographs.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "hubble_deep_field")

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN)

def vicuna_prompt(question: str) -> str:
    return llava_prompt(question, IMAGE_TOKEN)


def photo(name: str) -> np.ndarray:
    """An RGB uint8 photograph (H, W, 3) from skimage.data (grey or alpha photos through jaxvlm.images.to_rgb)."""
    from skimage import data

    from jaxvlm.images import to_rgb

    return to_rgb(data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)())


CORPUS = (
    LLAVA_SYSTEM,
    "USER: ASSISTANT: What is shown in this image? Describe the photo in detail.",
    "The image shows a person, a cat, a cup of coffee, a rocket, a motorcycle and stars in the sky.",
    "Answer the question using a single word or phrase. Is there a red object? Yes No",
)


def train_tokenizer(vocab_size: int = 600):
    """A byte-level BPE `PreTrainedTokenizerFast` with LLaVA's special tokens, trained on a tiny corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(list(CORPUS) * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


def llava_hf_config(vocab_size: int, image_token_id: int, pad_token_id: int, *, hidden: int = 256,
                    layers: int = 4, heads: int = 4, vision_hidden: int = 64, vision_layers: int = 2) -> dict:
    """A LLaVA-1.5-shaped config.json dict: CLIP 336px / patch 14 (the real 576-token image span) with small
    widths, and a small Llama."""
    return {
        "model_type": "llava",
        "architectures": ["LlavaForConditionalGeneration"],
        "image_token_index": image_token_id,
        "pad_token_id": pad_token_id,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "llama", "vocab_size": vocab_size, "hidden_size": hidden,
            "intermediate_size": hidden * 8 // 3, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": heads, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096,
        },
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": vision_hidden, "intermediate_size": vision_hidden * 4,
            "num_hidden_layers": vision_layers, "num_attention_heads": 4, "image_size": 336, "patch_size": 14,
        },
    }


def llava_processor_dir(path: str | Path, vocab_size: int = 600) -> Path:
    """Write a LLaVA-1.5 processor (pad-to-square image processor + trained tokenizer) to `path`."""
    from transformers import LlavaImageProcessorPil, LlavaProcessor

    path = Path(path)
    tokenizer = train_tokenizer(vocab_size)
    image_processor = LlavaImageProcessorPil(
        do_pad=True, size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token=IMAGE_TOKEN,
    )
    processor.save_pretrained(path)
    return path
