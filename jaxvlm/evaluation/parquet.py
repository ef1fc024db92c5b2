"""Local lmms-eval datasets: the Hugging Face parquet layout, images embedded.

A dataset folder as the Hub serves it (and `huggingface-cli download --repo-type dataset` leaves it):

    <dir>/<config>/<split>-00000-of-00003.parquet     (named configs, e.g. GQA testdev_balanced_instructions)
    <dir>/data/<split>-00000-of-00001.parquet          (the default config)
    <dir>/<split>-*.parquet | <dir>/<config>/<split>/*.parquet   (other writers)

Image cells are `{"bytes": b"...", "path": "..."}` structs (datasets' Image feature). Needs pyarrow
(`pip install 'jaxvlm[eval]'`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from jaxvlm.errors import require_module
from jaxvlm.evaluation.base import DataError


def is_parquet_dataset(data_dir: str | Path) -> bool:
    return any(Path(data_dir).rglob("*.parquet"))


def parquet_files(data_dir: str | Path, split: str, config: str | None = None) -> list[Path]:
    """The shards of `split` (of `config` when the dataset has named configs), in shard order."""
    root = Path(data_dir)
    files = sorted(root.rglob("*.parquet"))
    if config is not None:
        in_config = [f for f in files if config in f.relative_to(root).parts[:-1]]
        files = in_config or files
    chosen = [f for f in files if f.name.startswith(f"{split}-") or f.name.startswith(f"{split}.")
              or split in f.relative_to(root).parts[:-1]]
    if not chosen:
        have = sorted({f.relative_to(root).as_posix() for f in files})[:8]
        raise DataError(f"{root}: no parquet shard for split {split!r}"
                        + (f" of config {config!r}" if config else "") + f" (found {have})")
    return chosen


def read_rows(data_dir: str | Path, split: str, config: str | None = None,
              columns: list[str] | None = None) -> Iterator[tuple[str, dict]]:
    """("shard.parquet:row", row dict) for every row of the split, in shard then row order (row 1-based)."""
    pq = require_module("pyarrow.parquet", "eval", "reading lmms-eval parquet datasets", package="pyarrow")
    for path in parquet_files(data_dir, split, config):
        try:
            table = pq.read_table(path, columns=columns)
        except Exception as e:  # pyarrow raises several types for truncated / foreign files
            raise DataError(f"{path}: not a readable parquet file ({e})") from None
        if columns:
            missing = [c for c in columns if c not in table.column_names]
            if missing:
                raise DataError(f"{path}: lacks column(s) {missing} (has {table.column_names})")
        for i, row in enumerate(table.to_pylist(), 1):
            yield f"{path}:{i}", row


def image_bytes(cell, source: str) -> bytes:
    """The encoded image of a datasets Image cell ({"bytes", "path"} struct or raw bytes)."""
    if isinstance(cell, dict):
        cell = cell.get("bytes")
    if not isinstance(cell, (bytes, bytearray)) or not cell:
        raise DataError(f"{source}: image cell holds no embedded image bytes")
    return bytes(cell)
