"""One run per output folder: ``<output>/.imagingflows.lock`` holds the running process's pid."""

from __future__ import annotations

import os
from pathlib import Path

from imagingflows.flows.runners import UsageError


class OutputLock:
    """``<output>/.imagingflows.lock`` holding the running process's pid: a second run into the
    same folder is refused (naming the holder), a lock left by a dead process is taken over."""

    NAME = ".imagingflows.lock"

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / self.NAME

    def __enter__(self) -> "OutputLock":
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and holder != os.getpid() and _alive(holder):
                    raise UsageError(f"{self.path.parent} is in use by another run (pid {holder}, lock "
                                     f"{self.path}); wait for it, or choose another output folder")
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            return self
        raise UsageError(f"could not take the lock {self.path}")

    def __exit__(self, *exc) -> None:
        if self._holder() == os.getpid():
            self.path.unlink(missing_ok=True)

    def _holder(self) -> int | None:
        try:
            return int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
