"""`jaxvlm generate`: answer a prompt about an image with an optional pruning schedule.

    jaxvlm generate CHECKPOINT --image photo.jpg --prompt "What is in the image?" [--prune fastv:keep=64]

CHECKPOINT is a Hugging Face checkpoint directory or a `jaxvlm.save` directory; the processor (tokenizer and
image processor) is read from --processor (default: CHECKPOINT). --prune takes `none`, a method of
`jaxvlm.prune.METHODS` or a preset (`debiased_fastv`, ...), optionally with keyword arguments:
`fastv:layer=2,keep=64`, `pdrop:layers=2/10/20,ratios=.32/.16/.08` (tuples separated by "/").
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def status(message: str) -> None:
    """A progress line on stderr (stdout carries only the answer)."""
    print(f"[jaxvlm] {message} ...", file=sys.stderr, flush=True)


def build_prompt(processor, prompt: str, template: str) -> str:
    """The text the processor expands: LLaVA-1.5's vicuna template, the tokenizer's chat template, or raw."""
    if template == "raw":
        return prompt
    has_chat = getattr(processor.hf, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)
    if template == "chat" or (template == "auto" and has_chat):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.hf.apply_chat_template(messages, add_generation_prompt=True)
    from jaxvlm.processor import llava_prompt

    return llava_prompt(prompt, image_token=getattr(processor.hf, "image_token", "<image>"))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxvlm generate", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="Hugging Face or jaxvlm checkpoint directory")
    p.add_argument("--image", required=True, help="image file (any format PIL reads)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--processor", default=None, help="processor directory (default: the checkpoint)")
    p.add_argument("--prune", default="none", help="none | METHOD[:key=value,...] | debiased_METHOD[:...]")
    p.add_argument("--template", choices=("auto", "vicuna", "chat", "raw"), default="auto")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="weights dtype (default: bfloat16 on GPU / TPU, float32 on CPU)")
    p.add_argument("--mesh", default=None, help="data=D[,model=M]: this process's devices, the weights split "
                   "over M (tensor parallel) and loaded straight into their shards (default: one device)")
    p.add_argument("--fsdp", action="store_true", help="also shard the weights over the data axis (FSDP)")
    p.add_argument("--compile-cache", metavar="DIR", default=None,
                   help="persistent compilation cache directory (default: $JAXVLM_COMPILE_CACHE, else none)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    import numpy as np

    import jaxvlm
    from jaxvlm import compile_cache, io, prune
    from jaxvlm.engine.sharding_spec import local_mesh, parse_mesh_spec
    from jaxvlm.errors import UserError
    from jaxvlm.images import open_image

    # Everything the user gave is checked before the model is read.
    schedule = prune.parse_schedule(args.prune)
    data, model = parse_mesh_spec(args.mesh)
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {args.max_new_tokens}: must be at least 1")
    if not 0.0 < args.top_p <= 1.0 or args.temperature < 0.0:
        raise UserError(f"--top-p {args.top_p} must be in (0, 1] and --temperature {args.temperature} >= 0")
    for flag, path in (("CHECKPOINT", args.checkpoint), ("--processor", args.processor)):
        if path is not None and not os.path.isdir(path):
            raise UserError(f"{flag} {path}: no such directory")
    compile_cache.enable_from(args.compile_cache)
    mesh = local_mesh(data if args.mesh else 1, model)[0]
    dtype = args.dtype or io.default_dtype()
    image = open_image(args.image, "--image")  # any PIL mode as the RGB picture it shows (jaxvlm.images)
    processor = jaxvlm.Processor.from_pretrained(args.processor or args.checkpoint)
    status(f"loading {args.checkpoint} ({dtype})")
    params = jaxvlm.load(args.checkpoint, dtype=dtype, progress=True, mesh=mesh, fsdp=args.fsdp)
    inputs = processor(text=build_prompt(processor, args.prompt, args.template), images=[image])
    tok = processor.tokenizer
    status("compiling and running (the first call for a shape bucket compiles its program)")
    start = time.perf_counter()
    out = jaxvlm.generate(params, **inputs, prune=schedule, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, mesh=mesh)
    tokens = np.asarray(out.tokens)[0]
    seconds = time.perf_counter() - start
    if tok.eos_token_id is not None and (tokens == tok.eos_token_id).any():
        tokens = tokens[: int(np.argmax(tokens == tok.eos_token_id))]
    print(processor.decode(tokens, skip_special_tokens=True).strip())
    kept = ", ".join(str(int((np.asarray(k)[0] >= 0).sum())) for k in out.kept) or "all"
    print(f"[{inputs['input_ids'].shape[1]} prompt tokens, visual tokens kept per stage: {kept}, "
          f"{len(tokens)} new tokens, {seconds:.2f} s incl. compilation]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
