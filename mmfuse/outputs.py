"""Output paths: checked before any work, and written by one process at a time.

`check_output_dir` / `check_output_file` refuse an output that cannot be written (a file in the way, a parent that
is a file, a read-only filesystem, no permission) with an `OutputError` naming it, before anything is computed.

`hold(target, command)` takes an exclusive `fcntl.flock` on `<target>/.mmfuse.lock` (or, for an output that is
renamed into place at the end, on `.<name>.mmfuse.lock` beside it) for as long as the returned `OutputLock` is held.
The kernel drops the lock when the process dies, so a killed run never leaves a stale lock; a second writer gets an
`OutputError` naming the holder (pid, command, start time), which the lock file records.

`atomic_file` / `write_atomic` / `atomic_dir` write a file or build a folder under a temporary name beside it and
rename it into place at the end: a reader never sees half of it, and an interrupted write leaves only the temporary.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import OutputError

LOCK = ".mmfuse.lock"


def _existing_ancestor(path: Path) -> Path:
    """`path`'s nearest ancestor (or itself) that exists; `Path.exists` is False under a file."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _unwritable(directory: Path) -> str | None:
    """Why no entry can be made in the existing `directory`, or None."""
    if not directory.is_dir():
        return f"{directory} is a file, not a directory"
    if os.access(directory, os.W_OK | os.X_OK):  # root passes mode bits, never a read-only mount (EROFS)
        return None
    with contextlib.suppress(OSError):
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return f"{directory} is on a read-only filesystem"
    return f"{directory} is not writable (permission denied)"


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """`path` as an output directory that can be made and written; raises `OutputError` naming the problem."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file, not a directory: choose another {flag}")
    base = _existing_ancestor(path)
    problem = _unwritable(base)
    if problem:
        made = "written in" if base == path else "created"
        raise OutputError(f"{flag} {path} cannot be {made}: {problem}")
    return path


def check_output_file(path: str | Path, flag: str = "--out") -> Path:
    """`path` as an output file whose folder can be made and written; raises `OutputError` naming the problem."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a directory: name the file to write")
    base = _existing_ancestor(path.parent)
    problem = _unwritable(base)
    if problem:
        raise OutputError(f"{flag} {path} cannot be written: {problem}")
    return path


class OutputLock:
    """An exclusive lock on an output, held until `release()` (or the end of a `with` block, or the process)."""

    def __init__(self, target: Path, file: Path, fd: int, created: list[Path]) -> None:
        self.target, self.file, self._fd, self._created = target, file, fd, created

    def release(self) -> None:
        """Remove the lock file, drop the lock, and remove the folders `hold` made if they are still empty."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.file.unlink(missing_ok=True)  # while still held: a waiting opener then retries on a new file
        os.close(self._fd)
        self._fd = None
        for folder in self._created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
                 ) -> None:
        self.release()


def holder_of(file: str | Path) -> dict[str, Any]:
    """What a lock file records about its holder ({} if it is empty or unreadable)."""
    for _ in range(20):  # the holder writes right after taking the lock
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError:
            return {}
        if text.strip():
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                return {}
            return data if isinstance(data, dict) else {}
        time.sleep(0.025)
    return {}


def describe_holder(holder: dict[str, Any]) -> str:
    """'pid 123: mmfuse embed --out x, started 2026-01-01 10:00:00 UTC' from a lock file's record."""
    if not holder:
        return "a process that has not recorded itself yet"
    command = str(holder.get("command", "?"))
    if len(command) > 120:
        command = command[:117] + "..."
    return f"pid {holder.get('pid', '?')}: {command}, started {holder.get('started', '?')}"


def _record(command: str) -> bytes:
    """The lock file's record: pid, the command line (this process's when it is that mmfuse command), start."""
    line = f"mmfuse {command}"
    if Path(sys.argv[0]).name in ("mmfuse", "__main__.py") and sys.argv[1:2] == [command]:
        line = shlex.join(["mmfuse", *sys.argv[1:]])
    return json.dumps({"pid": os.getpid(), "command": line,
                       "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}).encode()


def hold(target: str | Path, command: str, beside: bool = False, flag: str = "--out") -> OutputLock:
    """Lock the output directory `target` for this process, making it (and its missing parents) if needed.

    Args:
        target: the output directory.
        command: the sub-command writing it (recorded for the message a second writer gets).
        beside: lock `.<name>.mmfuse.lock` next to `target` instead of a file inside it (an output built in a
            temporary directory and renamed into place; `target` itself is not made).
        flag: the option `target` came from, for messages.

    Raises:
        OutputError: `target` cannot be written, or another process holds it (named).
    """
    target = check_output_dir(target, flag)
    folder = target.parent if beside else target
    created = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / (f".{target.name}{LOCK}" if beside else LOCK)
    while True:
        fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(f"{flag} {target} is being written by another mmfuse process "
                              f"({describe_holder(holder_of(file))}); wait for it to end, or choose another "
                              f"{flag}") from None
        try:
            same = os.stat(file).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # the holder released (and removed) it between our open and our lock
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, _record(command))
    return OutputLock(target, file, fd, created)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path` (`.<name>.<pid>.tmp`) to write; it is renamed onto `path` when the
    block ends, and removed if the block raises."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to `path` whole or not at all (`atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


@contextlib.contextmanager
def atomic_dir(out: str | Path, prefix: str | None = None, replace: bool = False) -> Iterator[Path]:
    """Yields a new temporary folder beside `out` (named `prefix`... , default `.<name>-`) to fill; it is renamed
    onto `out` when the block ends, and removed if the block raises.

    An existing `out` must be empty, or, with `replace`, is removed first (the caller has checked that it may be).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{out.name}-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out) if replace else out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
