"""Schedules from command-line strings: `name[:key=value,...]`, e.g. `debiased_fastv:keep=64,setting="padding"`
or `pdrop:layers=2/10/20,ratios=.32/.16/.08` (`/` separates tuple items; values are Python literals).
`trend=FILE` takes a trend JSON (`jaxvlm calibrate`'s output) wherever a trend is accepted; `trend=self` is the
calibration-free `debias.SelfTrend`, and in the debiased presets `trend=release` the release's LLaVA-1.5 trend
(without `trend` a preset uses its per-family default, jaxvlm.prune.debiased)."""

from __future__ import annotations

import ast

from jaxvlm.errors import UserError

PATH_ARGUMENTS = ("trend",)  # taken verbatim (a file path: its "/" are not tuple separators)


def parse_schedule(spec: str | None):
    """A schedule tuple from `spec` (None for "none" / empty); names are the constructors of `jaxvlm.prune`."""
    from jaxvlm import prune

    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    name, _, rest = spec.partition(":")
    name = name.strip()
    builders = dict(prune.METHODS)
    builders.update({n: getattr(prune, n) for n in dir(prune) if n.startswith("debiased_")})
    if name not in builders:
        raise UserError(f"--prune {spec!r}: unknown pruning method {name!r}; have none, "
                        f"{', '.join(sorted(builders))}")
    kwargs = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"--prune {spec!r}: argument {item!r} is not key=value")
        key = key.strip()
        kwargs[key] = value.strip() if key in PATH_ARGUMENTS else _literal(value.strip())
    try:
        sched = builders[name](**kwargs)
    except UserError as e:
        raise UserError(f"--prune {spec!r}: {e}") from None
    except (TypeError, ValueError) as e:  # unknown keyword, bad value: the builder's own message
        raise UserError(f"--prune {spec!r}: {e}") from None
    return sched if isinstance(sched, tuple) else (sched,)


def _literal(value: str):
    if "/" in value:
        return tuple(_literal(v) for v in value.split("/"))
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value
