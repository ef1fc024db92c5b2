"""`jaxvlm <command>`: each command lives in the module that owns it and exposes `main(argv)` (or the function
named after `module:`)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "demo": ("experiments.demo", "offline demo: unpruned vs FastV vs debiased FastV on real photos"),
    "convert": ("converters.__main__", "convert a Hugging Face checkpoint directory to jaxvlm's format"),
    "generate": ("jaxvlm.engine.cli", "generate text for an image + prompt with an optional pruning schedule"),
    "eval": ("jaxvlm.evaluation.cli:eval_main", "answer a standard benchmark under pruning schedules (resumable)"),
    "score": ("jaxvlm.evaluation.cli:score_main", "score an answers file as the benchmark's official script does"),
    "calibrate": ("experiments.calibrate", "fit a position trend (recency bias) on calibration samples"),
    "analyze": ("experiments.analyze", "measure and plot attention bias (position trend, padding sink)"),
    "bench": ("experiments.bench", "prefill/decode timing and FLOPs, jaxvlm vs transformers, pruned vs not"),
    "plan": ("jaxvlm.plan", "per-device memory, compile time and FLOPs of a generate program (no weights read)"),
}


def usage() -> str:
    lines = ["usage: jaxvlm <command> [--help]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"jaxvlm: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    from jaxvlm.errors import run_cli

    module, _, function = COMMANDS[name][0].partition(":")
    return run_cli(f"jaxvlm {name}", getattr(importlib.import_module(module), function or "main"), rest)


if __name__ == "__main__":
    sys.exit(main())
