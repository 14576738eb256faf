"""report.html in a real browser: headless Chromium (Debian's ``chromium``) opens it from ``file://``.

For a finished run of each pipeline (segment, restore, classify, demosaic; tiny models, sample data, one bad
input where the pipeline has one) and for a synthetic 2000-item manifest through the real renderer: no console
errors, no request that leaves ``file://``, every ``<img>`` complete with a natural width, one table row per
item; the big report shows its summary first and pages its table with pure CSS (clicked with real mouse
events). Screenshots go to the test's tmp dir, and also to ``$IMAGINGFLOWS_SCREENSHOTS`` (a folder) when set.

The browser is driven over the Chrome DevTools Protocol on a pipe (``--remote-debugging-pipe``: fd 3 in, fd 4
out, NUL-terminated JSON), so the test needs nothing beyond the standard library and the ``chromium`` package.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe"]
PIPELINES = ("segment", "restore", "classify", "demosaic")

pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                reason=f"{CHROMIUM} not found: the browser tests need Debian's chromium package "
                                       "(apt-get install chromium; .ci/run installs it)")


# ----------------------------------------------------------------------------- a small CDP client


class Chromium:
    """One headless Chromium process, driven over CDP on a pipe; ``call`` returns a command's result."""

    def __init__(self, profile: Path):
        self.log = profile / "chromium.log"
        to_child, self._w = os.pipe()
        self._r, from_child = os.pipe()
        self.pid = os.posix_spawn(str(CHROMIUM), [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}",
                                                  "about:blank"], os.environ, setpgroup=0, file_actions=[
            (os.POSIX_SPAWN_DUP2, to_child, 3), (os.POSIX_SPAWN_DUP2, from_child, 4),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, str(self.log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)])
        os.close(to_child)
        os.close(from_child)
        self._buf, self._id, self.events = b"", 0, []

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer in time; its log: {self.log}")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed its pipe: " + self.log.read_text(errors="replace")[-2000:])
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, session: str | None = None, timeout: float = 30, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._message(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_for(self, method: str, session: str, timeout: float = 30) -> dict:
        for i, m in enumerate(self.events):
            if m.get("method") == method and m.get("sessionId") == session:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            m = self._message(deadline)
            if m.get("method") == method and m.get("sessionId") == session:
                return m
            self.events.append(m)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (OSError, RuntimeError, TimeoutError):
            pass
        for _ in range(50):
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                break
            time.sleep(0.1)
        else:
            os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self._w)
        os.close(self._r)


class Page:
    """A tab showing one file; collects its console errors and every URL it requested."""

    def __init__(self, browser: Chromium, path: Path, width: int = 1280, height: int = 900):
        self.b = browser
        self.target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        self.s = browser.call("Target.attachToTarget", targetId=self.target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.call(f"{domain}.enable", self.s)
        browser.call("Emulation.setDeviceMetricsOverride", self.s, width=width, height=height,
                     deviceScaleFactor=1, mobile=False)
        browser.call("Page.navigate", self.s, url=path.resolve().as_uri())
        browser.wait_for("Page.loadEventFired", self.s)

    def js(self, expression: str):
        r = self.b.call("Runtime.evaluate", self.s, expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in r, r["exceptionDetails"]
        return r["result"].get("value")

    def _events(self, *methods: str) -> list[dict]:
        return [m["params"] for m in self.b.events if m.get("sessionId") == self.s and m.get("method") in methods]

    def console_errors(self) -> list[str]:
        self.js("0")  # flush: events sent before this answer are in self.b.events
        out = [e["entry"].get("text", "") + " " + e["entry"].get("url", "")
               for e in self._events("Log.entryAdded") if e["entry"].get("level") == "error"]
        out += [" ".join(str(a.get("value", a.get("description", ""))) for a in e.get("args", []))
                for e in self._events("Runtime.consoleAPICalled") if e.get("type") in ("error", "assert")]
        out += [e["exceptionDetails"].get("text", "") for e in self._events("Runtime.exceptionThrown")]
        return out

    def requested(self) -> list[str]:
        return [e["request"]["url"] for e in self._events("Network.requestWillBeSent")]

    def images(self, visible_only: bool = False) -> list[list]:
        """[src, complete, naturalWidth] of every (visible) <img>, after loading the lazy ones."""
        pick = "[...document.images]" + (".filter(i => i.getClientRects().length)" if visible_only else "")
        return self.js(f"""(async () => {{ const imgs = {pick};
            imgs.forEach(i => {{ i.loading = 'eager'; }});
            await Promise.allSettled(imgs.map(i => i.decode()));
            return imgs.map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]); }})()""")

    def click(self, selector: str) -> None:
        """A real left click (mouse events) on the centre of the first element matching ``selector``."""
        x, y = self.js(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
        for kind in ("mousePressed", "mouseReleased"):
            self.b.call("Input.dispatchMouseEvent", self.s, type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """The whole page, or the viewport as scrolled now."""
        png = self.b.call("Page.captureScreenshot", self.s, format="png", captureBeyondViewport=full_page)["data"]
        path.write_bytes(base64.b64decode(png))
        if os.environ.get("IMAGINGFLOWS_SCREENSHOTS"):
            keep = Path(os.environ["IMAGINGFLOWS_SCREENSHOTS"])
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, keep / path.name)
        return path

    def close(self) -> None:
        self.b.call("Target.closeTarget", targetId=self.target)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        chromium.call("Browser.getVersion")
        yield chromium
    finally:
        chromium.close()


# ----------------------------------------------------------------------------- one small run per pipeline


def _png(path: Path, source: Path, box: tuple[int, int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(source).crop(box).save(path)


def _segment(root: Path) -> dict:
    from conftest import TINY_PROFILE
    from sample_data import brats

    from imagingflows.flows import segment
    from imagingflows.models.checkpoints import save_checkpoint
    from imagingflows.models.swin_unetr import build

    torch.manual_seed(0)
    cfg = {"in_channels": 4, "out_channels": 3, "feature_size": 12, "patch_merging": "current"}
    weights = save_checkpoint(root / "tiny.pt", build(**cfg), arch="swin_unetr", config=cfg,
                              meta={"profile": TINY_PROFILE})
    brats.make_case(root / "in", "case00", 0, spacing=(3.0, 3.0, 3.0))
    (root / "in" / "case01").mkdir()
    (root / "in" / "case01" / "case01_flair.nii.gz").write_bytes(b"not a volume")
    return segment(root / "in", root / "out", weights=str(weights), device="cpu")


def _restore(root: Path) -> dict:
    from imagingflows.flows import run_pipeline
    from imagingflows.models import nafnet
    from imagingflows.models.checkpoints import save_checkpoint

    torch.manual_seed(0)
    cfg = {"img_channel": 3, "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 1], "dec_blk_nums": [1, 1],
           "local_train_size": None}
    weights = save_checkpoint(root / "nafnet.pt", nafnet.build(**cfg), arch="nafnet", config=cfg)
    samples = ROOT / "sample_data" / "restore"
    _png(root / "in" / "scan #1 é.png", samples / "camera.png", (100, 40, 260, 200))  # '#', space, non-ASCII
    _png(root / "in" / "sub" / "chelsea.png", samples / "chelsea.jpg", (60, 40, 220, 160))
    (root / "in" / "broken.png").write_bytes(b"not a png")
    return run_pipeline("restore", root / "in", root / "out", task="denoise", weights=str(weights), device="cpu")


def _classify(root: Path) -> dict:
    from imagingflows.flows import run_pipeline
    from imagingflows.models import load
    from imagingflows.models.checkpoints import save_checkpoint
    from imagingflows.models.heads import LinearProbe

    encoder_file = ROOT / "tests" / "data" / "parity_scalemae" / "scalemae-tiny.pth"  # embed 64, patch 16
    torch.manual_seed(0)
    encoder = load(encoder_file, num_heads=4)
    meta = {"level": "patch", "classes": {0: "dark", 1: "bright", 2: "other"},
            "encoder": {"file": encoder_file.name, "sha256": encoder.weights_sha256}, "bands": ["1", "2", "3"],
            "tile": 64, "res": 1.0, "pool": "cls",
            "normalization": {"mean": [60.0, 60.0, 60.0], "std": [40.0, 40.0, 40.0]}}
    head = LinearProbe(64, 3).eval()
    with torch.no_grad():
        head.norm.running_mean.normal_()
        head.fc.weight.normal_()
    (root / "heads").mkdir(parents=True)
    weights = save_checkpoint(root / "heads" / "patch.pt", head, arch="linear_probe",
                              config={"dim": 64, "classes": 3}, meta=meta)
    shutil.copy(encoder_file, root / "heads" / encoder_file.name)  # the head finds its encoder beside it
    (root / "in").mkdir()
    shutil.copy(ROOT / "sample_data" / "remote_sensing" / "RGB.byte.tif", root / "in" / "rgb.tif")
    return run_pipeline("classify", root / "in", root / "out", weights=weights, num_heads=4, device="cpu",
                        precision="fp32")


def _demosaic(root: Path) -> dict:
    from imagingflows.flows import run_pipeline

    (root / "in").mkdir()
    shutil.copy(ROOT / "sample_data" / "demosaic" / "halide_bayer_small.png", root / "in")
    (root / "in" / "broken.png").write_bytes(b"not a png")
    return run_pipeline("demosaic", root / "in", root / "out", pattern="GRBG", black=25, white=1023,
                        method="bilinear", format="png")


BUILD = {"segment": _segment, "restore": _restore, "classify": _classify, "demosaic": _demosaic}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """pipeline -> run folder, each pipeline's run built once (on first use)."""
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            root = tmp_path_factory.mktemp(name)
            result = BUILD[name](root)
            assert result["counts"]["done"] >= 1, result
            built[name] = root / "out"
        return built[name]

    return get


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_report_of_a_finished_run_in_chromium(browser, runs, pipeline, tmp_path):
    out = runs(pipeline)
    items = json.loads((out / "run.json").read_text())["items"]
    page = Page(browser, out / "report.html")
    try:
        imgs = page.images()  # loads the lazy ones first, so the screenshot shows every picture
        page.screenshot(tmp_path / f"report_{pipeline}.png")
        assert imgs, "the report shows no image"
        assert [i for i in imgs if not (i[1] and i[2] > 0)] == [], "images that did not load"
        assert page.console_errors() == []
        assert [u for u in page.requested() if not u.startswith("file://")] == []  # self-contained
        rows = page.js("[...document.querySelectorAll('table.items tbody tr')]"
                       ".map(r => [r.cells[0].textContent, r.className, r.getClientRects().length > 0])")
        assert sorted(r[0] for r in rows) == sorted(items)  # one row per item, all shown
        assert all(r[2] for r in rows)
        assert {r[0] for r in rows if "failed" in r[1].split()} == {k for k, v in items.items()
                                                                    if v.get("status") == "failed"}
        assert page.js("document.documentElement.scrollWidth") <= 1280  # wide tables scroll, not the page
    finally:
        page.close()


# ----------------------------------------------------------------------------- 2000 items


def _big_run(run: Path, n: int = 2000) -> dict:
    """A synthetic segment-like manifest (3 previews, 3 volumes, 6 metrics per item; 1 in 50 failed)."""
    from imagingflows.tasks.report import write_report

    rng = np.random.default_rng(0)
    preview = run / "_preview.png"
    run.mkdir(parents=True)
    Image.fromarray(np.full((96, 128, 3), (200, 60, 60), np.uint8)).save(preview)
    items = {}
    for i in range(n):
        iid = f"case{i:05d}"
        if i % 50 == 7:
            items[iid] = {"status": "failed", "seconds": 0.1,
                          "error": f"expected 4 modalities (flair, t1ce, t1, t2), found 3 in case {iid}: missing t2"}
            continue
        (run / iid).mkdir()
        names = [f"{iid}/preview_{v}.png" for v in ("axial", "coronal", "sagittal")]
        for name in names:
            os.link(preview, run / name)  # one file, many names: cheap and every image exists
        items[iid] = {"status": "done", "seconds": float(rng.uniform(1, 9)),
                      "summary": {k: float(rng.uniform(0, 2e5)) for k in ("TC_mm3", "WT_mm3", "ET_mm3")},
                      "metrics": {f"{m}_{r}": float(rng.uniform(0, 1)) for m in ("dice", "hd95")
                                  for r in ("TC", "WT", "ET")},
                      "outputs": {"seg": f"{iid}/{iid}_seg.nii.gz", "previews": names},
                      **({"warnings": ["spacing 5 mm along z"]} if i % 333 == 5 else {})}
    manifest = {"schema": 1, "pipeline": "segment", "command": "run", "started": "2026-12-02T01:00:00+00:00",
                "finished": "2026-12-02T05:00:00+00:00", "items": items, "metrics": {"mean": {"dice_WT": 0.9}}}
    write_report(run, manifest)
    return manifest


def test_report_of_2000_items_summary_first_and_paged(browser, tmp_path):
    from imagingflows.tasks.report import PAGE_SIZE

    manifest = _big_run(tmp_path / "big")
    n, failed = len(manifest["items"]), sorted(k for k, v in manifest["items"].items() if v["status"] == "failed")
    html = tmp_path / "big" / "report.html"
    assert html.stat().st_size < 4_000_000, html.stat().st_size  # about 2.1 MB measured
    page = Page(browser, html)
    try:
        top = page.js("""(() => { const c = document.querySelector('.counts').getBoundingClientRect();
            const t = document.querySelector('table.items').getBoundingClientRect();
            return [c.top, t.top, window.innerHeight]; })()""")
        assert top[0] < top[2] < top[1]  # the counts in the first screen, the long table below it
        assert page.js("document.querySelector('.counts').textContent").startswith(f"{n - len(failed):,} done")
        page.screenshot(tmp_path / "report_2000_top.png", full_page=False)
        page.click('.toc a[href="#sec-items"]')  # the section links under the counts reach the table
        assert page.js("document.querySelector('.pager').getBoundingClientRect().top") < 900 / 2

        def shown() -> list[str]:
            return page.js("[...document.querySelectorAll('table.items tbody tr')]"
                           ".filter(r => r.getClientRects().length).map(r => r.cells[0].textContent)")

        assert page.js("document.querySelectorAll('table.items tbody tr').length") == n
        ids = list(manifest["items"])
        assert shown() == ids[:PAGE_SIZE]
        page.click('.pager label[for="items-p2"]')
        assert shown() == ids[PAGE_SIZE:2 * PAGE_SIZE]
        visible = page.images(visible_only=True)  # the previews of page 2 only
        assert len(visible) == 3 * sum(1 for i in ids[PAGE_SIZE:2 * PAGE_SIZE] if i not in failed)
        assert all(i[1] and i[2] == 128 for i in visible) and all(i[0].startswith("case000") for i in visible)
        page.screenshot(tmp_path / "report_2000_page2.png", full_page=False)
        last = -(-n // PAGE_SIZE)
        page.click(f'.pager label[for="items-p{last}"]')
        assert shown() == ids[(last - 1) * PAGE_SIZE:]
        page.click('.pager label[for="items-failed"]')
        assert shown() == failed
        browser.call("Emulation.setEmulatedMedia", page.s, media="print")
        assert len(shown()) == n  # printed: every row, whatever page is chosen
        browser.call("Emulation.setEmulatedMedia", page.s, media="")
        assert shown() == failed
        page.click('.pager label[for="items-all"]')
        assert len(shown()) == n
        assert page.console_errors() == []
        assert [u for u in page.requested() if not u.startswith("file://")] == []
    finally:
        page.close()
