"""`jaxvlm convert SRC DST [--dtype bfloat16]` (also `python -m converters`): HF checkpoint dir -> jaxvlm dir.

Tensors are read one at a time from SRC's safetensors (single file or sharded index) into the stacked jax
layout, and the result is written with orbax to a work directory beside DST that is renamed into place only
when everything succeeded: a failed conversion leaves nothing at DST. DST is refused before anything is read
when it is SRC, inside SRC or contains it, or exists (unless --force, which replaces only a jaxvlm
directory). The tokenizer, processor, chat-template and generation-config files of SRC are copied into DST,
so `jaxvlm generate` / `eval` work on DST without --processor. NaN / Inf weights are refused (naming the
tensor) unless --allow-nonfinite.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Files of a Hugging Face checkpoint besides config.json and the weights that `jaxvlm.Processor` and
# generation read: tokenizer (fast / sentencepiece / BPE vocabularies), image processor, processor,
# chat templates, generation defaults.
SIDE_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
    "preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
    "chat_template.json", "chat_template.jinja", "additional_chat_templates", "generation_config.json",
)


def side_files(src: str) -> list[str]:
    """The paths of SIDE_FILES present in the checkpoint directory `src`."""
    return [os.path.join(src, f) for f in SIDE_FILES if os.path.exists(os.path.join(src, f))]


def check_source(src: str) -> None:
    """Refuse a source that is not a directory or is already a jaxvlm directory."""
    from converters.core import ConversionError
    from jaxvlm import io

    if not os.path.isdir(src):
        raise io.CheckpointNotFoundError(f"{src} is not a directory")
    if io.is_jaxvlm_dir(src):
        raise ConversionError(f"{src} is already a jaxvlm directory (jaxvlm.load reads it as it is)")


def convert_checkpoint(src: str, dst: str, dtype: str = "float32", overwrite: bool = False,
                       progress: bool = True, allow_nonfinite: bool = False) -> str:
    """Convert the Hugging Face checkpoint directory `src` to a jaxvlm directory `dst` (weights, config and
    the tokenizer / processor files); returns dst. Refuses a `dst` that overlaps `src`, or exists unless
    `overwrite`, before reading anything."""
    from jaxvlm import io

    src, dst = os.fspath(src), os.fspath(dst)
    check_source(src)
    io.prepare_destination(dst, overwrite, src=src)
    params, hf_config = io.load_hf(src, dtype=dtype, progress=progress, allow_nonfinite=allow_nonfinite,
                                   desc=f"converting {src}")
    return io.save(params, dst, hf_config=hf_config, overwrite=overwrite, files=side_files(src))


def main(argv: list[str] | None = None, prog: str = "jaxvlm convert") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="Hugging Face checkpoint directory (config.json + *.safetensors)")
    ap.add_argument("dst", help="output jaxvlm directory (created; must not exist unless --force)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--force", action="store_true", help="replace dst if it is an existing jaxvlm directory")
    ap.add_argument("--allow-nonfinite", action="store_true", help="convert even if weights hold NaN / Inf")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    from jaxvlm import io

    check_source(args.src)
    io.prepare_destination(args.dst, args.force, src=args.src, hint="pass --force to replace it")
    t0 = time.perf_counter()
    out = convert_checkpoint(args.src, args.dst, args.dtype, overwrite=args.force, progress=not args.quiet,
                             allow_nonfinite=args.allow_nonfinite)
    print(f"converted {args.src} -> {out} ({args.dtype}) in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    from jaxvlm.errors import run_cli

    PROG = "python -m converters"
    sys.exit(run_cli(PROG, lambda argv: main(argv, prog=PROG), None))
