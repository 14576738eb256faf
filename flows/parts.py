"""Items that run as parts: which parts each item has, what has landed, when it can be merged.

A pipeline with ``split``/``merge`` hooks (pipelines/base.py) turns one big item into parts that
run as separate tasks, so the process and Dask runners spread one item over their workers. The
flow records each part as it lands (run.json ``parts``: resume skips the parts that are done),
merges an item once all its parts are done, then records the item and forgets its parts.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from imagingflows.pipelines.base import parts_folder


@dataclass
class PartGroup:
    """One item's parts: ``item`` (its dict), ``part_ids`` in order, the entries landed so far."""

    item: dict
    part_ids: list[str]
    entries: dict[str, dict] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.entries) == len(self.part_ids)

    def failure(self) -> str | None:
        """The first failed part's reason, as the item's error; None when every part is done."""
        for part_id in self.part_ids:
            e = self.entries.get(part_id) or {}
            if e.get("status") == "failed":
                return f"part {part_id.rsplit('#', 1)[-1]}: {e.get('error') or 'failed'}"
        return None

    def ordered_entries(self) -> list[dict]:
        return [self.entries[p] for p in self.part_ids]


class PartGroups:
    """The items of this run that run in parts, by item id."""

    def __init__(self) -> None:
        self.groups: dict[str, PartGroup] = {}

    def add(self, item: dict, part_ids: list[str]) -> PartGroup:
        self.groups[item["id"]] = group = PartGroup(item, list(part_ids))
        return group

    def landed(self, part: dict, entry: dict) -> PartGroup | None:
        """Record a part's entry; returns its group when that was the group's last part."""
        group = self.groups[part["meta"]["part"]["of"]]
        group.entries[part["id"]] = entry
        return group if group.complete else None

    def item_of(self, d: dict) -> str:
        """The item id a part (or item) dict belongs to."""
        return (d.get("meta") or {}).get("part", {}).get("of", d["id"])


def remove_parts(out_dir: Path, item_id: str) -> None:
    """The parts' results of a merged item (their folder under ``.parts/``)."""
    folder = parts_folder(out_dir, item_id)
    shutil.rmtree(folder, ignore_errors=True)
    top = parts_folder(out_dir, "")
    for parent in folder.parents:  # the empty folders left above it, up to .parts/ itself
        if not parent.is_dir() or any(parent.iterdir()):
            break
        parent.rmdir()
        if parent == top:
            break
