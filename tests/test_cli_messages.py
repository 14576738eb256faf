"""What an operator sees: failure reasons one line per item (also with --quiet), set-up errors as
one line and exit 2, --version, and the lock that keeps two runs out of one output folder."""

from __future__ import annotations

import os
import subprocess
import sys

from imagingflows.flows.output_lock import OutputLock

from helpers_cli import cli, pngs


def test_failure_reasons_are_printed_one_line_each_even_quiet(tmp_path):
    code, text = cli("restore", "--task", "denoise", "-i", pngs(tmp_path / "in", 1, bad=True),
                     "-o", tmp_path / "out", "--precision", "fp32", "--quiet")
    assert code == 1, text
    lines = [line for line in text.splitlines() if "failed broken.png" in line]
    assert len(lines) == 1 and len(lines[0].split("failed broken.png: ", 1)[1]) > 10, text
    assert "ok0.png" not in text  # done items are not listed under --quiet


def test_training_set_up_error_is_one_line_and_exit_2(tmp_path):
    code, text = cli("train", "restore", "--task", "denoise", "--data", pngs(tmp_path / "clean", 1),
                     "-o", tmp_path / "run", "--epochs", "1", "--quiet")
    assert code == 2, text
    assert "need at least 2 images" in text and "Traceback" not in text
    assert len(text.strip().splitlines()) == 1, text


def test_version():
    code, text = cli("--version")
    assert code == 0 and text.startswith("imagingflows ") and "prefect" in text


def test_a_second_run_into_a_locked_folder_exits_2_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        out = tmp_path / "out"
        out.mkdir()
        (out / OutputLock.NAME).write_text(f"{holder.pid}\n")
        code, text = cli("restore", "--task", "denoise", "-i", pngs(tmp_path / "in", 1), "-o", out)
        assert code == 2 and f"pid {holder.pid}" in text and "in use by another run" in text, text
        assert not (out / "run.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_and_released(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / OutputLock.NAME).write_text(f"{dead.pid}\n")
    code, text = cli("restore", "--task", "denoise", "-i", pngs(tmp_path / "in", 1), "-o", out,
                     "--precision", "fp32")
    assert code == 0, text
    assert (out / "ok0.png").is_file() and not (out / OutputLock.NAME).exists()


def test_the_lock_holds_our_pid_while_held_and_is_removed_after(tmp_path):
    with OutputLock(tmp_path):
        assert (tmp_path / OutputLock.NAME).read_text().split()[0] == str(os.getpid())
    assert not (tmp_path / OutputLock.NAME).exists()
