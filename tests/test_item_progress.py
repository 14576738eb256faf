"""Progress inside one item: tiles (2D) and windows (3D) done/total reach the terminal callback
and the Prefect progress artifact, with the item's name."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from imagingflows.flows.run import execute, plan_run
from imagingflows.models.progress import listen
from imagingflows.models.sliding_window import run_windows, window_count
from imagingflows.models.tiling import predict_tiles


def test_sliding_window_reports_every_window_out_of_the_true_total():
    net = torch.nn.Conv3d(1, 2, 3, padding=1)
    image = torch.rand(1, 1, 40, 50, 36)
    seen: list[tuple[str, int, int]] = []
    with listen(lambda unit, done, total: seen.append((unit, done, total))):
        _, info = run_windows(net, image, (32, 32, 32), 2, device=torch.device("cpu"), overlap=0.5)
    total = window_count((40, 50, 36), (32, 32, 32), 0.5)
    assert info.windows == total == 2 * 3 * 2
    assert seen[-1] == ("window", total, total) and [d for _, d, _ in seen] == list(range(1, total + 1))


def test_tiles_report_both_passes_and_nothing_without_a_listener():
    net = torch.nn.Conv2d(3, 3, 3, padding=1).eval()
    image = np.random.default_rng(0).random((100, 90, 3), dtype=np.float32)
    seen = []
    with listen(lambda *a: seen.append(a)):
        _, info = predict_tiles(net, image, grid=1, tile=48, overlap=8, device=torch.device("cpu"))
    assert info.tiles > 1 and seen[-1] == ("tile", info.tiles, info.tiles) and len(seen) == info.tiles
    predict_tiles(net, image, grid=1, tile=48, overlap=8, device=torch.device("cpu"))  # no listener: no error


def test_a_restore_run_reports_tiles_with_the_item_name(tmp_path):
    (tmp_path / "in").mkdir()
    rgb = np.random.default_rng(1).integers(0, 256, (160, 200, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in" / "photo.png")
    plan = plan_run("restore", tmp_path / "in", tmp_path / "out",
                    {"task": "denoise", "tile": 64, "overlap": 8, "whole_max_pixels": 0, "precision": "fp32"})
    seen = []
    result = execute(plan, item_progress=lambda *a: seen.append(a))
    assert result["counts"]["done"] == 1
    names = {s[0] for s in seen}
    assert names == {"photo.png"} and seen[-1][1] == "tile" and seen[-1][2] == seen[-1][3] > 1


def test_two_batches_in_parallel_threads_each_get_their_own_callbacks(tmp_path):
    """The callbacks live in a ContextVar, not in module globals: two Python-API batches running at
    once in one process never report into each other's bars."""
    import threading

    seen: dict[str, set] = {"a": set(), "b": set()}
    plans = {}
    for name in seen:
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(np.full((40, 48, 3), 30 * i + 60, np.uint8)).save(tmp_path / name / f"{name}{i}.png")
        plans[name] = plan_run("restore", tmp_path / name, tmp_path / f"out_{name}",
                               {"task": "denoise", "tile": 32, "overlap": 4, "whole_max_pixels": 0,
                                "precision": "fp32"})

    def run(name):
        execute(plans[name], progress=lambda item, status: seen[name].add(item),
                item_progress=lambda item, *a: seen[name].add(item))

    threads = [threading.Thread(target=run, args=(n,)) for n in seen]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": {"a0.png", "a1.png"}, "b": {"b0.png", "b1.png"}}
