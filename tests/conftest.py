"""Test-wide settings: float32 matmuls at full precision so parity tolerances mean what they say."""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

# CI runs property tests with a fixed seed sequence (reproducible verdicts); local runs keep exploring.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
