// Dummy Forcing live view: while a video is made, the frames decoded so far play on the node
// (AR Video Sampler, AR Video Decode) at the video's frame rate, chunk by chunk.
//
// nodes/live_view.py sends one small JSON event per chunk through ComfyUI's messaging:
//   {node, run, state: "frames", filename, subfolder, type, first, count, width, height, frame_rate}
//   {node, run, state: "complete" | "cancelled", frames}
// Each "frames" event names a JPEG sprite sheet (count frames stacked top to bottom) fetched
// through /view. A new run id restarts the player; "cancelled" stops it on the frame it shows;
// "complete" lets it play to the end, then loop; ComfyUI's execution_interrupted / execution_error
// stop a player still waiting for frames. Only the last MAX_KEPT_FRAMES frames are kept.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EVENT = "dummy_forcing.live";
const WIDGET_NAME = "df_live_view";
const LIVE_NODES = new Set(["ARVideoSampler", "ARVideoDecode"]);
const MAX_KEPT_FRAMES = 720; // browser memory: ~0.4 GB of decoded 512 x 288 frames at most
const MIN_VIDEO_PX = 120;
const MAX_FIT_PX = 400; // the node grows to show the video at most this tall (the user may resize)
const LABEL_PX = 18;

const players = new Map(); // node id (execution id) -> Player
const endedRuns = new Set(); // runs replaced by a newer one: their late events are ignored

// The node of an execution id: "12" in the root graph, "5:12" inside the subgraph of node 5.
function findNode(id) {
  try {
    const parts = String(id).split(":");
    let graph = app.graph;
    for (const part of parts.slice(0, -1)) graph = graph?.getNodeById?.(part)?.subgraph;
    const node = graph?.getNodeById?.(parts[parts.length - 1]);
    if (!node || !node.graph) return null;
    const ours = node.widgets?.some((w) => w.name === "live_preview") || LIVE_NODES.has(node.comfyClass ?? node.type);
    return ours ? node : null;
  } catch {
    return null;
  }
}

function liveWidget(node) {
  const found = node.widgets?.find((w) => w.name === WIDGET_NAME);
  if (found?.dfView) return { widget: found, created: false };
  const box = document.createElement("div");
  box.style.cssText = "display:flex;flex-direction:column;width:100%;height:100%;min-height:0;";
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 1;
  canvas.style.cssText = "flex:1 1 0;min-height:0;width:100%;object-fit:contain;background:#111;";
  const label = document.createElement("div");
  label.style.cssText = `flex:0 0 ${LABEL_PX}px;line-height:${LABEL_PX}px;font:11px monospace;opacity:0.8;` +
    "text-align:center;white-space:nowrap;overflow:hidden;";
  box.append(canvas, label);
  const widget = node.addDOMWidget(WIDGET_NAME, "df_live_view", box, {
    serialize: false,
    getMinHeight: () => MIN_VIDEO_PX + LABEL_PX,
  });
  widget.serialize = false; // not part of widgets_values or the prompt
  widget.dfView = { canvas, label, ctx: canvas.getContext("2d") };
  return { widget, created: true };
}

// Grow the node (never shrink it) so the video shows at the node's width, within reason.
function fitNode(node, width, height) {
  requestAnimationFrame(() => {
    try {
      if (!node.graph) return;
      const want = Math.min(MAX_FIT_PX, Math.max(MIN_VIDEO_PX, ((node.size[0] - 20) * height) / width));
      const size = node.computeSize();
      size[0] = Math.max(size[0], node.size[0]);
      size[1] = Math.max(size[1] + want - MIN_VIDEO_PX, node.size[1]);
      node.setSize(size);
      node.setDirtyCanvas?.(true, true);
    } catch (err) {
      console.warn("[dummy_forcing] live view: could not size the node", err);
    }
  });
}

class Player {
  constructor(id, node, run) {
    this.id = id;
    this.node = node;
    this.run = run;
    this.sheets = []; // {first, count, width, height, img, ready, failed}, in frame order
    this.received = 0; // frames announced so far
    this.fps = 16;
    this.state = "playing"; // | "complete" | "cancelled" | "stopped"
    this.shown = -1; // index of the frame on the canvas
    this.nextAt = 0;
    this.waiting = true; // no frame to show yet
    this.raf = 0;
    const { widget, created } = liveWidget(node);
    this.view = widget.dfView;
    this.fitPending = created;
    this.clear();
    this.setLabel("waiting for frames");
  }

  alive() {
    return this.state !== "stopped" && findNode(this.id) === this.node;
  }

  addSheet(d) {
    const first = Number(d.first), count = Number(d.count);
    if (!(count > 0) || !(first >= 0) || !(d.width > 0) || !(d.height > 0)) return;
    if (Number(d.frame_rate) > 0) this.fps = Number(d.frame_rate);
    const sheet = { first, count, width: d.width, height: d.height, img: new Image(), ready: false, failed: false };
    sheet.img.onload = () => {
      sheet.ready = true;
      if (this.fitPending && this.alive()) {
        this.fitPending = false;
        fitNode(this.node, sheet.width, sheet.height);
      }
      this.schedule();
    };
    sheet.img.onerror = () => {
      sheet.failed = true; // its frames are skipped
      this.schedule();
    };
    const query = new URLSearchParams({ filename: d.filename, subfolder: d.subfolder ?? "", type: d.type ?? "temp" });
    sheet.img.src = api.apiURL(`/view?${query}`);
    this.sheets.push(sheet);
    this.sheets.sort((a, b) => a.first - b.first);
    this.received = Math.max(this.received, first + count);
    while (this.sheets.length > 1 && this.received - this.sheets[1].first >= MAX_KEPT_FRAMES) {
      this.sheets.shift().img.src = ""; // release the oldest sheet
    }
    this.schedule();
  }

  end(state, frames) {
    if (this.state !== "playing") return;
    if (Number(frames) >= 0) this.received = Math.max(this.received, Number(frames));
    this.state = state;
    this.updateLabel();
    this.schedule();
  }

  stop() {
    this.state = "stopped";
    if (this.raf) cancelAnimationFrame(this.raf);
    this.raf = 0;
  }

  schedule() {
    if (!this.raf && this.state !== "stopped") this.raf = requestAnimationFrame((t) => this.tick(t));
  }

  sheetOf(i) {
    return this.sheets.find((s) => i >= s.first && i < s.first + s.count);
  }

  // The frame to show after `i`: the next one, past frames not kept, not sent or whose sheet
  // failed; from the first kept frame again once a complete video has played. null: not there yet.
  following(i) {
    const kept = this.sheets[0]?.first ?? 0;
    let next = Math.max(i + 1, kept);
    let wrapped = false;
    for (;;) {
      if (next >= this.received) {
        if (this.state !== "complete" || wrapped) return null;
        next = kept;
        wrapped = true;
      }
      const sheet = this.sheetOf(next);
      if (sheet && !sheet.failed) return sheet.ready ? next : null;
      const later = this.sheets.find((s) => s.first > next);
      next = later ? later.first : this.received;
    }
  }

  tick(now) {
    this.raf = 0;
    try {
      if (!this.alive()) return this.stop();
      if (this.state === "cancelled") return this.updateLabel(); // stays on the frame it shows
      const step = 1000 / this.fps;
      // after waiting for frames (or a hidden tab): the next frame now, then on time (no burst)
      if (this.waiting || now - this.nextAt > 4 * step) this.nextAt = Math.max(this.nextAt, now);
      this.waiting = false;
      let drawn = false;
      while (now >= this.nextAt) {
        const next = this.following(this.shown);
        if (next === null) break;
        this.shown = next;
        this.nextAt += step;
        drawn = true;
      }
      if (drawn) this.draw();
      this.updateLabel();
      // keep time while a next frame is there (playing, looping); otherwise idle until a sheet loads
      if (this.following(this.shown) !== null) this.schedule();
      else this.waiting = true;
    } catch (err) {
      console.warn("[dummy_forcing] live view stopped", err);
      this.stop();
    }
  }

  draw() {
    const sheet = this.sheetOf(this.shown);
    if (!sheet?.ready) return;
    const { canvas, ctx } = this.view;
    if (canvas.width !== sheet.width || canvas.height !== sheet.height) {
      canvas.width = sheet.width;
      canvas.height = sheet.height;
    }
    const row = this.shown - sheet.first;
    ctx?.drawImage(sheet.img, 0, row * sheet.height, sheet.width, sheet.height, 0, 0, sheet.width, sheet.height);
  }

  clear() {
    const { canvas, ctx } = this.view;
    ctx?.clearRect(0, 0, canvas.width, canvas.height);
  }

  updateLabel() {
    const n = this.shown + 1;
    const m = this.received;
    if (this.state === "complete") this.setLabel(`frame ${n} / ${m}`);
    else if (this.state === "cancelled") this.setLabel(`stopped: frame ${n} / ${m} (cancelled)`);
    else if (n > 0) this.setLabel(`frame ${n} / ${m} so far`);
    else this.setLabel(m ? `${m} frames so far, loading` : "waiting for frames");
  }

  setLabel(text) {
    if (this.view.label.textContent !== text) this.view.label.textContent = text;
  }
}

function onLiveEvent(d) {
  if (!d || d.node == null || !d.run || endedRuns.has(d.run)) return;
  const id = String(d.node);
  const node = findNode(id);
  let player = players.get(id);
  if (!node) {
    player?.stop();
    players.delete(id);
    return;
  }
  if (!player || player.node !== node || player.run !== d.run) {
    if (player) {
      player.stop();
      endedRuns.add(player.run);
      if (endedRuns.size > 256) endedRuns.delete(endedRuns.values().next().value);
    }
    player = new Player(id, node, d.run);
    players.set(id, player);
  }
  if (d.state === "frames") player.addSheet(d);
  else if (d.state === "complete" || d.state === "cancelled") player.end(d.state, d.frames);
}

app.registerExtension({
  name: "DummyForcing.LiveView",
  setup() {
    api.addEventListener(EVENT, (event) => {
      try {
        onLiveEvent(event?.detail);
      } catch (err) {
        console.warn("[dummy_forcing] live view event ignored", err);
      }
    });
    // a run that ends without its own "cancelled" event (an error before the video's end): stop too
    for (const name of ["execution_interrupted", "execution_error"]) {
      api.addEventListener(name, () => {
        for (const player of players.values()) player.end("cancelled");
      });
    }
  },
});
