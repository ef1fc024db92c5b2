"""Answers files that cannot lie: LLaVA's answers JSONL tied to the run that wrote it.

    store = AnswerStore(path, identity, samples, overwrite=False)   # lock, check identity, repair, validate
    with store:
        for records in ...:                 # the answers of lines store.done, store.done + 1, ... in order
            store.append(records)           # written, flushed and fsynced

- The file holds one line per question line, in question order (`base.answer_record`), so it is always a
  prefix of the finished answers file and resuming keys on line position: line i answers `samples[i]` (its
  `question_id` and `prompt` are checked, so a question file edited since cannot be resumed into).
- `<answers>.run.json` (the sidecar) holds the run identity (`run_identity`: model, dtype, schedule, prompt
  variant, max_new_tokens, jaxvlm version, benchmark, data). Opening with another identity raises a UserError
  and never touches the file; `overwrite=True` starts it over.
- A partial last line (a run killed mid-write) is cut off on open; the line is answered again.
- `<answers>.lock` is held with an exclusive `fcntl.flock` while the store is open: a second writer is refused
  with a one-line error, and the lock dies with its process (no stale locks after a kill).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

from jaxvlm.errors import UserError
from jaxvlm.evaluation.base import Sample

SIDECAR_SUFFIX = ".run.json"
LOCK_SUFFIX = ".lock"


def config_hash(model_dir: str | os.PathLike) -> str:
    """sha256 of the checkpoint's config file (config.json, or jaxvlm.json for a jaxvlm directory)."""
    for name in ("config.json", "jaxvlm.json"):
        f = Path(model_dir) / name
        if f.is_file():
            return hashlib.sha256(f.read_bytes()).hexdigest()
    raise UserError(f"--model {model_dir}: no config.json or jaxvlm.json (not a checkpoint directory)")


def jaxvlm_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("jaxvlm")
    except metadata.PackageNotFoundError:
        return "unknown"


def run_identity(*, model: str, dtype: str, schedule, variant: str, max_new_tokens: int, benchmark: str,
                 data: str, image_folder: str | None = None, shard: tuple[int, int] | None = None) -> dict:
    """Everything that decides the answers of a run (`schedule` as its repr: every stage argument)."""
    return {
        "model": os.path.abspath(model), "model_config_sha256": config_hash(model), "dtype": dtype,
        "schedule": repr(schedule), "variant": variant, "max_new_tokens": int(max_new_tokens),
        "jaxvlm_version": jaxvlm_version(), "benchmark": benchmark, "data": os.path.abspath(data),
        "image_folder": os.path.abspath(image_folder) if image_folder else None,
        "shard": list(shard) if shard else None,
    }


def identity_digest(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(f"{path}{SIDECAR_SUFFIX}")


def read_sidecar(path: str | os.PathLike) -> dict | None:
    f = sidecar_path(path)
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{f}:{e.lineno}: run identity file is not valid JSON ({e.msg}); rerun with --overwrite")


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _differences(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:3])


def repair_tail(path: Path) -> int:
    """Cut a partial last line (no trailing newline, or not JSON) off `path`; returns the bytes removed."""
    data = path.read_bytes()
    end = len(data)
    if data and not data.endswith(b"\n"):
        end = data.rfind(b"\n") + 1
    elif data:
        start = data.rfind(b"\n", 0, len(data) - 1) + 1
        try:
            json.loads(data[start:])
        except json.JSONDecodeError:
            end = start
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return len(data) - end


class AnswerStore:
    """The answers file of one (benchmark, schedule) run; see the module docstring."""

    def __init__(self, path: str | os.PathLike, identity: dict, samples: Sequence[Sample], overwrite: bool = False):
        self.path = Path(path)
        self.identity = identity
        self.samples = samples
        self.overwrite = overwrite
        self.done = 0
        self.repaired = 0
        self._lock = None
        self._sink = None

    # ---------------------------------------------------------------- open / close
    def __enter__(self) -> "AnswerStore":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> "AnswerStore":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            self._check_identity()
            self.done = self._resume()
            self._sink = open(self.path, "a", encoding="utf-8")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _acquire_lock(self) -> None:
        lock = open(f"{self.path}{LOCK_SUFFIX}", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise UserError(f"{self.path}: another jaxvlm eval is writing this answers file ({holder}); "
                            "wait for it or stop it") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def _check_identity(self) -> None:
        old = read_sidecar(self.path)
        if self.overwrite or (old is None and not self.path.exists()):
            self.path.write_bytes(b"")
            write_json_atomic(sidecar_path(self.path), {"identity": self.identity, "runs": []})
            return
        if old is None:
            raise UserError(f"{self.path}: answers without a run identity ({sidecar_path(self.path).name} "
                            "missing); move it away or rerun with --overwrite")
        if old.get("identity") != self.identity:
            changed = _differences(old.get("identity") or {}, self.identity)
            raise UserError(f"{self.path}: written by another run ({changed}); "
                            "use another --out or rerun with --overwrite")
        if not self.path.exists():
            self.path.touch()

    def _resume(self) -> int:
        self.repaired = repair_tail(self.path)
        n = 0
        with open(self.path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                where = f"{self.path}:{n}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise UserError(f"{where}: not a JSON line; rerun with --overwrite") from None
                if n > len(self.samples):
                    raise UserError(f"{where}: more answers than the {len(self.samples)} questions; "
                                    "rerun with --overwrite")
                sample = self.samples[n - 1]
                written = sample.record_prompt
                if record.get("question_id") != sample.question_id or record.get("prompt") != written:
                    raise UserError(f"{where}: answers question {record.get('question_id')!r} but line {n} of "
                                    f"the questions is {sample.question_id!r} ({sample.source}); the question "
                                    "file changed: rerun with --overwrite")
        return n

    # ---------------------------------------------------------------- writing
    def append(self, records: Sequence[dict]) -> None:
        """Write the answers of lines done .. done + len(records) - 1 (in that order), then fsync."""
        if self._sink is None:
            raise RuntimeError("AnswerStore.append on a closed store")
        for i, record in enumerate(records):
            sample = self.samples[self.done + i]
            if record["question_id"] != sample.question_id:
                raise RuntimeError(f"answer for {record['question_id']!r} written at line {self.done + i + 1} "
                                   f"({sample.question_id!r})")
            self._sink.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._sink.flush()
        os.fsync(self._sink.fileno())
        self.done += len(records)

    def log_run(self, **stats) -> None:
        """Append this invocation's statistics (samples, seconds, compiles, ...) to the sidecar."""
        meta = read_sidecar(self.path) or {"identity": self.identity, "runs": []}
        meta.setdefault("runs", []).append(stats)
        write_json_atomic(sidecar_path(self.path), meta)

    @property
    def complete(self) -> bool:
        return self.done == len(self.samples)


@contextlib.contextmanager
def open_stores(stores: Sequence[AnswerStore]):
    """Open every store (all or none: a refusal closes the ones already opened)."""
    with contextlib.ExitStack() as stack:
        for s in stores:
            stack.enter_context(s)
        yield stores
