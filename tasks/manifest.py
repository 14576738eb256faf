"""``run.json``: the run manifest, rewritten atomically as items land (the run flow saves at most
once a second when they land faster: flows/run.py's ``_BatchManifest``).

It holds versions, device, config (and its hash), the model and weights hash,
and per-item status, hashes, outputs, timings and errors. A killed run leaves a
true record; a resumed run adds to it. :meth:`RunManifest.up_to_date` is the
resume rule: outputs exist and input, config and weights hashes all match.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import threading
from pathlib import Path
from typing import Any, Callable

from imagingflows.tasks.write import write_json

SCHEMA = 1


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def config_hash(config: dict, keys: tuple[str, ...]) -> str:
    """sha256 of the config entries that change outputs (JSON, sorted keys)."""
    subset = {k: config.get(k) for k in sorted(keys)}
    return hashlib.sha256(json.dumps(subset, sort_keys=True, default=str).encode()).hexdigest()


#: packages every run records; a pipeline adds the ones its outputs depend on (``Pipeline.packages``)
CORE_PACKAGES = ("imagingflows", "torch", "prefect", "numpy")


def versions(packages: tuple[str, ...] = ()) -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in dict.fromkeys(CORE_PACKAGES + tuple(packages)):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _recorded_outputs(entry: dict[str, Any]) -> list[str]:
    """Every output path a manifest entry lists (strings, or lists of strings, under ``outputs``)."""
    paths: list[str] = []
    for value in (entry.get("outputs") or {}).values():
        paths.extend([value] if isinstance(value, str) else [v for v in value if isinstance(v, str)])
    return paths


class RunManifest:
    """In-memory manifest with atomic saves; thread-safe ``record``."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = Path(path)
        self.data = data
        self._lock = threading.Lock()

    @classmethod
    def open(cls, out_dir: Path, *, pipeline: str, command: str, resume: bool,
             packages: tuple[str, ...] = ()) -> "RunManifest":
        path = Path(out_dir) / "run.json"
        previous: dict[str, Any] = {}
        if resume and path.is_file():
            try:
                previous = json.loads(path.read_text())
            except (json.JSONDecodeError, OSError):
                previous = {}
        same = previous.get("pipeline") == pipeline
        data = dict(previous) if same else {}  # a resumed run adds to the record
        data.update({
            "schema": SCHEMA,
            "pipeline": pipeline,
            "command": command,
            "started": now(),
            "finished": None,
            "versions": versions(packages),
            "items": dict(previous.get("items", {})) if same else {},
            "parts": dict(previous.get("parts", {})) if same else {},
            "runs": list(previous.get("runs", [])) + ([previous["started"]] if previous.get("started") else []),
        })
        return cls(path, data)

    def set(self, **fields: Any) -> None:
        with self._lock:
            self.data.update(fields)
            self._save()

    def record(self, item_id: str, entry: dict[str, Any]) -> None:
        with self._lock:
            self.data["items"][item_id] = entry
            self._save()

    def entry(self, item_id: str, section: str = "items") -> dict[str, Any] | None:
        return self.data.setdefault(section, {}).get(item_id)

    def record_part(self, part_id: str, entry: dict[str, Any]) -> None:
        """A part of an item that runs in parts (kept until the item is merged, for resume)."""
        with self._lock:
            self.data.setdefault("parts", {})[part_id] = entry
            self._save()

    def drop_parts(self, part_ids: list[str]) -> None:
        with self._lock:
            parts = self.data.setdefault("parts", {})
            for part_id in part_ids:
                parts.pop(part_id, None)
            self._save()

    def up_to_date(self, item_id: str, *, input_hash: str | Callable[[], str], cfg_hash: str,
                   weights_hash: str | None, outputs: list[Path], section: str = "items") -> bool:
        """The resume rule (for an item, or with ``section="parts"`` a part). ``input_hash`` may be a
        function: it is called (the inputs read) only when every cheaper check has passed."""
        e = self.entry(item_id, section)
        cheap = bool(
            e
            and e.get("status") == "done"
            and e.get("config_hash") == cfg_hash
            and e.get("weights_sha256") == weights_hash
            and all(Path(p).is_file() for p in outputs)
            and all((self.path.parent / p).is_file() for p in _recorded_outputs(e))
        )
        if not cheap:
            return False
        return e.get("input_hash") == (input_hash() if callable(input_hash) else input_hash)

    def finish(self, outcomes: dict[str, str], **extra: Any) -> dict[str, int]:
        """Close the run: ``outcomes`` maps this run's item ids to done/failed/skipped."""
        with self._lock:
            counts = {"done": 0, "failed": 0, "skipped": 0}
            for status in outcomes.values():
                counts[status] = counts.get(status, 0) + 1
            self.data["summary"] = {**counts, "total": len(outcomes), **extra}
            self.data["finished"] = now()
            self._save()
            return counts

    def _save(self) -> None:
        write_json(self.path, self.data)
