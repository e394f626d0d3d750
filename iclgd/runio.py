"""Files of a run directory, written so that a crash never leaves a half-written file behind.

Every file is written to a temporary name in the same directory, flushed to disk and then
renamed over its final name (``os.replace`` is atomic on POSIX), so a reader sees the old file
or the new one, never a mixture. ``metrics.jsonl`` is the one file appended to; a torn last
line (a crash mid-append) is dropped when the run resumes.

Layout: config.toml, metrics.jsonl, checkpoints/step_XXXXXXXX.npz, results.json, params.npz,
figures (*.png) and report.md; while a process writes the run, ``.lock`` names it (``RunLock``).

Reading is defensive: ``load_npz`` reads every array's header (shape and dtype) before any
data and refuses arrays that the caller did not expect, or that claim more bytes than the file
can hold, so a small crafted file cannot make the reader allocate gigabytes; ``read_jsonl``
reports every line it cannot parse instead of dropping it silently.
"""
from __future__ import annotations

import datetime
import io
import json
import os
import socket
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".lock"
TEMP_SUFFIX = ".tmp"
#: Deflate cannot expand data by more than about 1032:1; a member claiming more is crafted.
MAX_DEFLATE_RATIO = 1100
#: The largest text array ``load_npz`` accepts where a short text is expected (bytes of UCS-4).
MAX_TEXT_BYTES = 4 * 4096


class RunFileError(ValueError):
    """A run-directory file that cannot be used (damaged, crafted, or of another run)."""


class RunLocked(ValueError):
    """Another process is writing the run directory."""


def warn(message: str) -> None:
    """One line on stderr, ``iclgd: warning: message`` (what a user must know, not a traceback)."""
    print(f"iclgd: warning: {message}", file=sys.stderr)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode of a new file
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez to memory, then an atomic write."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _read_npy_header(handle) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the header of a .npy stream, reading no data."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return tuple(int(n) for n in shape), np.dtype(dtype)


def npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Every array's (shape, dtype) in an .npz file, read from the headers alone.

    Raises RunFileError when the file is not a readable .npz, holds an object array, or an
    array claims more bytes than its zip member declares (or than deflate could expand to)."""
    path = Path(path)
    headers = {}
    try:
        real_size = os.path.getsize(path)
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    raise RunFileError(f"{path}: member {info.filename!r} is not a .npy array")
                if info.header_offset + info.compress_size > real_size:  # the zip's own sizes are the writer's word
                    raise RunFileError(f"{path}: member {info.filename!r} claims {info.compress_size} stored bytes "
                                       f"in a file of {real_size}")
                ratio_cap = 1 if info.compress_type == zipfile.ZIP_STORED else MAX_DEFLATE_RATIO
                if info.file_size > ratio_cap * info.compress_size + 1024:
                    raise RunFileError(
                        f"{path}: member {info.filename!r} claims {info.file_size} bytes from {info.compress_size} stored"
                    )
                with archive.open(info) as handle:
                    shape, dtype = _read_npy_header(handle)
                if dtype.hasobject:
                    raise RunFileError(f"{path}: array {info.filename[:-4]!r} holds Python objects; only numeric arrays are read")
                nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if nbytes > info.file_size:
                    raise RunFileError(
                        f"{path}: array {info.filename[:-4]!r} claims shape {shape} ({nbytes} bytes) "
                        f"in a member of {info.file_size} bytes"
                    )
                headers[info.filename[:-4]] = (shape, dtype)
    except RunFileError:
        raise
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - any damage (bad zip, unknown compression, encryption, I/O): refuse by name
        raise RunFileError(f"{path}: not a readable .npz file ({type(error).__name__}: {error})") from None
    return headers


def load_npz(path: Path, expected: dict[str, tuple[tuple[int, ...], str]] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, after checking every header (``npz_headers``).

    ``expected`` (name -> (shape, dtype name)), when given, must match the file exactly: the same
    names, shapes and dtypes (dtype "str": a unicode text of at most MAX_TEXT_BYTES); anything else raises RunFileError naming the first difference,
    before any array is read."""
    headers = npz_headers(path)
    if expected is not None:
        missing, unexpected = sorted(set(expected) - set(headers)), sorted(set(headers) - set(expected))
        if missing or unexpected:
            raise RunFileError(f"{path}: arrays missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, (shape, dtype) in expected.items():
            if dtype == "str":  # a short text (JSON) stored as a 0-d unicode array
                if headers[name][0] != tuple(shape) or headers[name][1].kind != "U" or headers[name][1].itemsize > MAX_TEXT_BYTES:
                    raise RunFileError(f"{path}: array {name!r} must be a short text; got shape {headers[name][0]}, dtype {headers[name][1]}")
            elif headers[name][0] != tuple(shape) or headers[name][1] != np.dtype(dtype):
                raise RunFileError(
                    f"{path}: array {name!r} has shape {headers[name][0]} and dtype {headers[name][1]}; "
                    f"expected {tuple(shape)} and {np.dtype(dtype)}"
                )
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - damage found while reading the data: refuse by name
        raise RunFileError(f"{path}: not a readable .npz file ({type(error).__name__}: {error})") from None


def save_params(path: Path, params: dict[str, np.ndarray]) -> None:
    """The API's flat dict name -> array, as an .npz whose keys are the parameter names."""
    save_npz(path, params)


def load_params(path: Path) -> dict[str, np.ndarray]:
    return load_npz(path)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}.npz"


#: The files the training writer writes (its temp files are its own to clean up); results, reports
#: and figures are written by whoever evaluates the run, outside the training lock.
TRAINING_FILES = ("config.toml", "metrics.jsonl", "evaluations.jsonl", "baselines.json", LOCK_FILE)


def remove_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temp files (``.NAME.XXXX.tmp``) that killed training writers left: those of
    TRAINING_FILES and of every checkpoint; returns what was removed.  Call it only while holding
    the RunLock."""
    run_dir = Path(run_dir)
    candidates = [p for name in TRAINING_FILES for p in run_dir.glob(f".{name}.*{TEMP_SUFFIX}")]
    if (run_dir / CHECKPOINT_DIR).is_dir():
        candidates += list((run_dir / CHECKPOINT_DIR).glob(f".*{TEMP_SUFFIX}"))
    for path in candidates:
        path.unlink(missing_ok=True)
    return candidates


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every finished checkpoint, in step order (temp files are ignored)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    found = []
    for path in folder.glob("step_*.npz") if folder.is_dir() else []:
        try:
            found.append((int(path.stem.split("_")[1]), path))
        except (IndexError, ValueError):
            continue
    return sorted(found)


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def read_jsonl(path: Path, report=warn) -> list[dict]:
    """Every parseable line of a JSON-lines file, as dicts.  A line that is not a JSON object
    (a torn last line after a crash mid-append, or damage) is left out and ``report``ed with its
    file and line number; ``report=None`` keeps quiet."""
    if not Path(path).exists():
        return []
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif report is not None:
            report(f"{path}: line {number} is not a JSON record and is left out: {line[:60]!r}")
    return records


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


class RunLock:
    """An exclusive lock on a run directory for the life of a writer.

    ``acquire()`` creates the directory if needed and takes ``flock(LOCK_EX | LOCK_NB)`` on the
    directory itself; the kernel releases it when the process ends, however it ends, so a killed
    writer never leaves a stale lock.  The holder's pid, host, start time and command line are
    written to ``.lock`` for the message another writer gets (``RunLocked``), and the file is
    removed on ``release()``.  Linux/macOS only (fcntl)."""

    def __init__(self, run_dir: Path):
        self.path, self.fd = Path(run_dir), None

    def _locked_descriptor(self) -> int:
        """A descriptor of the directory holding ``flock(LOCK_EX | LOCK_NB)``, or RunLocked naming
        the holder when another process has it."""
        import fcntl

        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLocked(f"{self.path} is being written by another process ({self.holder()}); "
                            "wait for it to finish or choose another output directory") from None
        return fd

    def acquire(self) -> "RunLock":
        self.path.mkdir(parents=True, exist_ok=True)
        self.fd = self._locked_descriptor()
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                  "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        try:
            atomic_write_text(self.path / LOCK_FILE, json.dumps(holder) + "\n")
        except BaseException:
            self.release()
            raise
        return self

    def check_free(self) -> None:
        """Raise RunLocked if another process holds the lock now (takes and drops it; writes nothing)."""
        if self.path.is_dir():
            os.close(self._locked_descriptor())

    def holder(self) -> str:
        """Who holds the lock, as ``.lock`` says (best effort: it may be mid-write)."""
        try:
            info = json.loads((self.path / LOCK_FILE).read_text(encoding="utf-8"))
            return f"pid {info['pid']} on {info['host']}, since {info['since']}: {info['command']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            (self.path / LOCK_FILE).unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
