"""nodes/live_view.py: the frames written to a LiveView come back from its sprite sheets (as the
browser reads them through /view), its events arrive in order with the right frame indices, Cancel
sends the cancelled event, and without a server (or node id) nothing happens and nothing breaks."""
from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

import folder_paths
import server
from helpers import ROOT
from node_helpers import load_pack

JPEG_TOL = 6 / 255  # mean abs error of a q85 JPEG on smooth content is ~1/255


@pytest.fixture
def lv():
    load_pack()
    return importlib.import_module("ComfyUI_Dummy_Forcing.nodes.live_view")


@pytest.fixture
def prompt_server(comfy_dirs):
    srv = server.PromptServer(None)
    srv.client_id = "client-1"
    yield srv
    server.PromptServer.uninstall()


def planted(b, t, h, w, seed=0):
    """[b, t, h, w, 3] smooth frames, each frame and each video clearly different (JPEG keeps them)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, h).view(1, 1, h, 1, 1)
    x = torch.linspace(0, 1, w).view(1, 1, 1, w, 1)
    base = torch.rand(b, t, 1, 1, 3, generator=g) * 0.6 + 0.2
    tilt = (torch.rand(b, t, 1, 1, 3, generator=g) - 0.5) * 0.4
    return (base + tilt * (x + y - 1)).clamp(0, 1)


def live_events(srv, lv):
    assert all(sid == "client-1" for _, _, sid in srv.events)
    return [d for e, d, _ in srv.events if e == lv.EVENT]


def read_sprite(ev):
    """The frames of one sheet as /view serves it: temp dir / subfolder / filename."""
    assert ev["type"] == "temp"
    path = os.path.join(folder_paths.get_directory_by_type(ev["type"]), ev["subfolder"], ev["filename"])
    sheet = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    assert sheet.shape == (ev["count"] * ev["height"], ev["width"], 3)
    return torch.from_numpy(sheet).view(ev["count"], ev["height"], ev["width"], 3)


def test_sprites_hold_the_frames_in_order(lv, prompt_server):
    video = planted(2, 21, 24, 40)
    view = lv.LiveView("7", frame_rate=16, max_side=512)
    view.write(video[:, :9], 0)
    view.write(video[:, 9:21], 9)
    view.close()
    evs = live_events(prompt_server, lv)
    assert [e["state"] for e in evs] == ["frames", "frames", "complete"]
    assert [(e["first"], e["count"]) for e in evs[:2]] == [(0, 9), (9, 12)]
    assert evs[2]["frames"] == 21
    assert {e["node"] for e in evs} == {"7"} and len({e["run"] for e in evs}) == 1
    assert all(e["width"] == 40 and e["height"] == 24 and e["frame_rate"] == 16.0 for e in evs[:2])
    got = torch.cat([read_sprite(e) for e in evs[:2]])
    err = (got - video[0]).abs().mean(dim=(1, 2, 3))
    assert err.max() < JPEG_TOL, err
    # each frame is closer to its own planted frame than to its neighbours and to video 1
    for i in range(21):
        others = [video[0, j] for j in (i - 1, i + 1) if 0 <= j < 21] + [video[1, i]]
        assert all((got[i] - o).abs().mean() > err[i] for o in others)


@pytest.mark.parametrize("h, w, max_side", [(64, 96, 48), (60, 100, 64), (100, 36, 40), (72, 180, 64)])
def test_downscaled_to_max_side(lv, prompt_server, h, w, max_side):
    video = planted(1, 5, h, w, seed=3)
    view = lv.LiveView("3", frame_rate=8, max_side=max_side)
    view.write(video, 0)
    (ev,) = live_events(prompt_server, lv)
    scale = max_side / max(h, w)
    assert (ev["width"], ev["height"]) == (round(w * scale), round(h * scale))
    assert max(ev["width"], ev["height"]) == max_side
    # an independent reference: PIL's (antialiased) bilinear resize of each frame
    ref = [Image.fromarray((f.numpy() * 255).round().astype(np.uint8)).resize((ev["width"], ev["height"]),
                                                                               Image.BILINEAR) for f in video[0]]
    ref = torch.from_numpy(np.stack([np.asarray(r) for r in ref])).float() / 255
    assert (read_sprite(ev) - ref).abs().mean() < JPEG_TOL


def test_long_chunk_split_into_sheets(lv, prompt_server, monkeypatch):
    monkeypatch.setattr(lv, "SHEET_MAX_PX", 100)  # 3 frames of 32 rows per sheet
    video = planted(1, 8, 32, 16, seed=1)
    view = lv.LiveView("2", frame_rate=16)
    view.write(video[:, :1], 0)
    view.write(video[:, 1:], 1)
    evs = live_events(prompt_server, lv)
    assert [(e["first"], e["count"]) for e in evs] == [(0, 1), (1, 3), (4, 3), (7, 1)]
    assert len({e["filename"] for e in evs}) == 4
    got = torch.cat([read_sprite(e) for e in evs])
    assert (got - video[0]).abs().mean() < JPEG_TOL


def test_abort_sends_cancelled_and_stops(lv, prompt_server):
    video = planted(1, 4, 16, 16)
    view = lv.LiveView("9", frame_rate=16)
    view.write(video[:, :2], 0)
    view.abort()
    view.write(video[:, 2:], 2)
    view.close()
    view.abort()
    evs = live_events(prompt_server, lv)
    assert [e["state"] for e in evs] == ["frames", "cancelled"]
    assert evs[1]["frames"] == 2


def test_events_are_small_json(lv, prompt_server):
    view = lv.LiveView("1", frame_rate=16)
    view.write(planted(1, 12, 240, 416), 0)
    view.close()
    for _, data, _ in prompt_server.events:
        assert len(json.dumps(data)) < 400  # the pixels travel as a file, never inside JSON


def test_new_run_replaces_the_node_s_old_sprites(lv, prompt_server):
    video = planted(1, 2, 16, 16)
    first = lv.LiveView("4", frame_rate=16)
    first.write(video, 0)
    other = lv.LiveView("45", frame_rate=16)
    other.write(video, 0)
    folder = os.path.join(folder_paths.get_temp_directory(), lv.SUBFOLDER)
    old = sorted(os.listdir(folder))
    second = lv.LiveView("4", frame_rate=16)
    second.write(video, 0)
    now = sorted(os.listdir(folder))
    assert first.run_id != second.run_id
    assert [n for n in old if first.run_id in n and n not in now] == [n for n in old if first.run_id in n] != []
    assert any(other.run_id in n for n in now) and any(second.run_id in n for n in now)


def test_nothing_without_a_server_or_node_id(lv, comfy_dirs):
    server.PromptServer.uninstall()
    view = lv.LiveView("5", frame_rate=16)
    view.write(planted(1, 3, 8, 8), 0)
    view.close()
    view.abort()
    srv = server.PromptServer(None)
    try:
        anonymous = lv.LiveView(None, frame_rate=16)
        anonymous.write(planted(1, 3, 8, 8), 0)
        anonymous.abort()
        assert srv.events == []
    finally:
        server.PromptServer.uninstall()
    assert not os.path.exists(os.path.join(comfy_dirs.temp, lv.SUBFOLDER))


def test_failures_never_break_the_run(lv, prompt_server, caplog, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setattr(folder_paths, "temp_directory", str(blocker / "temp"))  # cannot be created
    view = lv.LiveView("6", frame_rate=16)
    with caplog.at_level(logging.WARNING):
        view.write(planted(1, 3, 8, 8), 0)
        view.write(planted(1, 3, 8, 8), 3)
        view.close()
    assert len([r for r in caplog.records if "live view" in r.getMessage()]) == 1
    assert [d["state"] for _, d, _ in prompt_server.events] == ["complete"]

    def refuse(*a, **k):
        raise ConnectionError("socket gone")

    prompt_server.send_sync = refuse
    caplog.clear()
    view = lv.LiveView("6", frame_rate=16)
    with caplog.at_level(logging.WARNING):
        view.write(planted(1, 3, 8, 8), 0)
        view.write(planted(1, 3, 8, 8), 3)
        view.abort()
    assert len([r for r in caplog.records if "live view" in r.getMessage()]) == 1


def test_as_a_pixel_stream_sink(lv, prompt_server):
    from dummy_forcing_core.pixel_stream import PixelStream

    video = planted(1, 9, 16, 24, seed=5)

    class Decoder:  # hands out the planted frames 4 at a time, the rest at the end
        def __init__(self):
            self.at = 0

        def push(self, latent):
            out = video[:, self.at:self.at + 4]
            self.at += 4
            return out

        def finish(self):
            return video[:, self.at:]

    view = lv.LiveView("8", frame_rate=16)
    stream = PixelStream(Decoder(), [view])
    stream.push(torch.zeros(1))
    stream.push(torch.zeros(1))
    stream.finish()
    evs = live_events(prompt_server, lv)
    assert [(e["state"], e.get("first"), e.get("count")) for e in evs] == [
        ("frames", 0, 4), ("frames", 4, 4), ("frames", 8, 1), ("complete", None, None)]
    assert (torch.cat([read_sprite(e) for e in evs[:3]]) - video[0]).abs().mean() < JPEG_TOL

    view = lv.LiveView("8", frame_rate=16)
    stream = PixelStream(Decoder(), [view])
    stream.push(torch.zeros(1))
    stream.abort()
    assert [e["state"] for e in live_events(prompt_server, lv)[-2:]] == ["frames", "cancelled"]


def test_nan_and_out_of_range_pixels(lv, prompt_server):
    video = planted(1, 2, 16, 16)
    video[0, 0, :8] = float("nan")
    video[0, 1, :8] = 3.0
    view = lv.LiveView("11", frame_rate=16)
    view.write(video, 0)
    got = read_sprite(live_events(prompt_server, lv)[0])
    assert got[0, 1:6].max() < 0.1 and got[1, 1:6].min() > 0.9  # NaN shows black, > 1 white
    assert (got[:, 10:] - video[0, :, 10:]).abs().mean() < JPEG_TOL


# ------------------------------------------------------------------------------------ web/live_view.js
NODE_BIN = shutil.which("node")

# A fake page for web/live_view.js: app / api as ComfyUI's scripts export them, DOM elements,
# images whose loading the script decides, and requestAnimationFrame on a virtual clock.
FAKE_PAGE = r"""
const drawn = [];   // [t, sheet filename, frame index in the video] for each drawImage
const warnings = [];
console.warn = (...a) => warnings.push(a.map(String).join(" "));
let now = 0;
let rafs = new Map(), rafId = 0;
globalThis.requestAnimationFrame = (f) => { rafs.set(++rafId, f); return rafId; };
globalThis.cancelAnimationFrame = (id) => rafs.delete(id);
function advance(ms) {  // run the animation frames of the next `ms` milliseconds, 60 per second
  const end = now + ms;
  while (now < end) {
    now += 1000 / 60;
    const due = [...rafs.values()];
    rafs.clear();
    for (const f of due) f(now);
  }
}
const images = [];
globalThis.Image = class {
  set src(v) { this._src = v; if (v) images.push(this); }
  get src() { return this._src; }
};
const sheetName = (img) => new URLSearchParams(img.src.split("?")[1]).get("filename");
function loadAll(ok = true) { for (const img of images.splice(0)) (ok ? img.onload : img.onerror)?.(); }
function element(tag) {
  const el = { tag, style: {}, children: [], textContent: "", width: 0, height: 0,
               append(...c) { this.children.push(...c); } };
  if (tag === "canvas") el.getContext = () => ({
    clearRect() { el.cleared = (el.cleared || 0) + 1; },
    drawImage(img, sx, sy, sw, sh) { drawn.push([Math.round(now), sheetName(img), img.first + sy / sh]); },
  });
  return el;
}
globalThis.document = { createElement: element };

const { app } = await import("./scripts/app.js");
const { api } = await import("./scripts/api.js");
await import("./extensions/pack/live_view.mjs");
for (const e of app.extensions) e.setup?.();

function makeNode(id, { ours = true } = {}) {
  return { id, graph: {}, size: [300, 200], comfyClass: ours ? "ARVideoSampler" : "KSampler",
           widgets: ours ? [{ name: "live_preview", value: true }] : [],
           addDOMWidget(name, type, el, options) { const w = { name, type, element: el, options }; this.widgets.push(w); return w; },
           computeSize() { return [300, 260]; }, setSize(s) { this.size = s; } };
}
function graphOf(nodes) { const m = new Map(nodes.map((n) => [String(n.id), n])); return { m, getNodeById: (id) => m.get(String(id)) }; }
const send = (d) => api.dispatchEvent(new CustomEvent("dummy_forcing.live", { detail: d }));
let sheetNo = 0;
function frames(node, run, first, count, extra = {}) {
  const filename = `${node}_${run}_${sheetNo++}.jpg`;
  const before = images.length;
  send({ node, run, state: "frames", filename, subfolder: "dummy_forcing_live", type: "temp", first, count,
         width: 80, height: 48, frame_rate: 8, ...extra });
  if (images.length > before) images[images.length - 1].first = first;  // lets drawImage name the frame it draws
  return filename;
}
const live = (node) => node.widgets.find((w) => w.name === "df_live_view");
const label = (node) => live(node)?.element.children[1].textContent;
const out = {};
const take = (key) => { out[key] = { drawn: drawn.splice(0), label: label(nodeA) }; };

const nodeA = makeNode(7), inner = makeNode(12), other = makeNode(8, { ours: false });
const sub = makeNode(5); sub.subgraph = graphOf([inner]);
app.graph = graphOf([nodeA, other, sub]);

frames("7", "A", 0, 4); loadAll(); advance(1000); take("first_sheet");
frames("7", "A", 4, 4); advance(300); take("sheet_loading");
loadAll(); advance(1000); take("second_sheet");
send({ node: "7", run: "A", state: "complete", frames: 8 }); advance(2000); take("complete");
frames("7", "B", 0, 3); const cleared = live(nodeA).element.children[0].cleared;
frames("7", "A", 8, 4);  // late sheet of the replaced run
out.late_fetched = images.some((i) => i.first === 8);
loadAll(); advance(200); take("new_run");
send({ node: "7", run: "B", state: "cancelled", frames: 3 }); advance(1000); take("cancelled");
out.widgets = nodeA.widgets.map((w) => [w.name, w.serialize ?? null, w.options?.serialize ?? null]);
out.cleared = cleared;
out.size = nodeA.size;
frames("7", "I", 0, 4); loadAll(); advance(200);
api.dispatchEvent(new CustomEvent("execution_interrupted", { detail: {} })); advance(1000); take("interrupted");
frames("7", "C", 0, 2); loadAll(false); frames("7", "C", 2, 2); loadAll(); advance(1000); take("failed_sheet");
frames("7", "D", 0, 2); loadAll(); advance(100);
app.graph.m.delete("7");  // the node removed while its video plays
advance(500); take("node_removed");
out.rafs_after_removal = rafs.size;
frames("7", "E", 0, 2); out.removed_node_fetched = images.length; images.splice(0);
frames("8", "F", 0, 2); out.other_type_widget = !!live(other); images.splice(0);
frames("9", "G", 0, 2); out.missing_node_fetched = images.length; images.splice(0);
frames("5:12", "H", 0, 2); loadAll(); advance(300); out.subgraph = { drawn: drawn.splice(0), label: label(inner) };
send(null); send({}); send({ node: "5:12" }); send({ node: "5:12", run: "H", state: "frames", first: -1, count: "x" });
app.graph = graphOf([nodeA]); app.graph.m.set("7", nodeA);
for (let k = 0; k < 10; k++) { frames("7", "K", k * 100, 100); }  // 1000 frames: only the newest are kept
out.released = images.filter((i) => i.src === "").map((i) => i.first);
loadAll(); advance(200); take("kept");
out.warnings = warnings;
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(NODE_BIN is None, reason="node.js not installed")
def test_web_player(tmp_path):
    """web/live_view.js in node.js on a fake page (virtual clock): frames drawn in order at the frame
    rate as sheets load, a new run restarts, late events of a replaced run are ignored, cancel
    stops, complete loops, failed sheets are skipped, a removed or foreign node is left alone."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "extensions" / "pack").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "web", "live_view.js"), tmp_path / "extensions" / "pack" / "live_view.mjs")
    (tmp_path / "scripts" / "app.js").write_text(
        "export const app = { extensions: [], graph: null, registerExtension(e) { this.extensions.push(e); } };\n")
    (tmp_path / "scripts" / "api.js").write_text(
        "export const api = new EventTarget();\napi.apiURL = (route) => '/api' + route;\n")
    (tmp_path / "package.json").write_text('{"type": "module"}')
    (tmp_path / "run.mjs").write_text(FAKE_PAGE)
    r = subprocess.run([NODE_BIN, str(tmp_path / "run.mjs")], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    frames_of = lambda key: [f for _, _, f in out[key]["drawn"]]  # noqa: E731
    times_of = lambda key: [t for t, _, _ in out[key]["drawn"]]  # noqa: E731

    def at_frame_rate(times, fps=8):  # frame k at t0 + k / fps, to within one animation frame
        return all(abs(t - times[0] - k * 1000 / fps) <= 17 for k, t in enumerate(times))

    assert frames_of("first_sheet") == [0, 1, 2, 3] and at_frame_rate(times_of("first_sheet"))
    assert out["first_sheet"]["label"] == "frame 4 / 4 so far"
    assert frames_of("sheet_loading") == [] and out["sheet_loading"]["label"] == "frame 4 / 8 so far"
    assert frames_of("second_sheet") == [4, 5, 6, 7] and at_frame_rate(times_of("second_sheet"))  # no burst
    assert frames_of("complete")[:9] == [0, 1, 2, 3, 4, 5, 6, 7, 0]  # loops once complete
    assert out["complete"]["label"].endswith("/ 8") and "so far" not in out["complete"]["label"]
    assert out["late_fetched"] is False
    assert frames_of("new_run") == [0, 1] and all("_B_" in f for _, f, _ in out["new_run"]["drawn"])
    assert out["cleared"] >= 2  # the canvas is cleared for the new run
    assert frames_of("cancelled") == [] and "cancelled" in out["cancelled"]["label"]
    assert out["cancelled"]["label"].startswith("stopped: frame 2 / 3")
    assert [w for w in out["widgets"] if w[0] == "df_live_view"] == [["df_live_view", False, False]]  # one, unsaved
    assert out["size"][1] > 200  # grown to show the video
    assert frames_of("interrupted") == [0, 1] and "cancelled" in out["interrupted"]["label"]
    assert frames_of("failed_sheet") == [2, 3]
    assert frames_of("node_removed") == [0] and out["rafs_after_removal"] == 0
    assert out["removed_node_fetched"] == 0 and out["other_type_widget"] is False and out["missing_node_fetched"] == 0
    assert [f for _, _, f in out["subgraph"]["drawn"]] == [0, 1] and out["subgraph"]["label"] == "frame 2 / 2 so far"
    assert out["released"] == [0, 100]  # 1000 frames sent: the oldest beyond 720 dropped
    assert frames_of("kept")[0] == 200  # the playhead starts at the oldest kept frame
    assert out["warnings"] == []
