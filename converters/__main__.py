"""`python -m converters SRC DST [--dtype bfloat16]` (also `jaxvlm convert`): HF checkpoint dir -> jaxvlm dir.

Tensors are read one at a time from SRC's safetensors (single file or sharded index) into the stacked jax
layout, and the result is written with orbax to a temporary sibling of DST that is renamed into place only
when everything succeeded: a failed conversion leaves nothing at DST.
"""

from __future__ import annotations

import argparse
import sys
import time


def convert_checkpoint(src: str, dst: str, dtype: str = "float32", overwrite: bool = False,
                       progress: bool = True) -> str:
    """Convert the Hugging Face checkpoint directory `src` to a jaxvlm directory `dst`; returns dst."""
    from jaxvlm import io

    params, hf_config = io.load_hf(src, dtype=dtype, progress=progress)
    return io.save(params, dst, hf_config=hf_config, overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m converters", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="Hugging Face checkpoint directory (config.json + *.safetensors)")
    ap.add_argument("dst", help="output jaxvlm directory (created; must not exist unless --force)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--force", action="store_true", help="replace dst if it exists")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    out = convert_checkpoint(args.src, args.dst, args.dtype, overwrite=args.force, progress=not args.quiet)
    print(f"converted {args.src} -> {out} ({args.dtype}) in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
