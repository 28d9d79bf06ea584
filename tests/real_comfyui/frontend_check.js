#!/usr/bin/env node
// Manual / optional check (not part of pytest): the example workflows in workflows/ in ComfyUI's
// real web frontend, driven by a headless Chromium, and the Cache Stats / Profile Heads text
// widget (web/dummy_forcing.js) after a real run on the harness's tiny Wan checkpoint; runs queued
// from the page: text-to-video (AR Video Sampler decoding through a tiny random Wan2.1 VAE named
// as in the workflow, IMAGE -> Create Video -> Save Video), long_video_sink_window (a tiny random
// lighttaew2_1, mp4 written by the sampler, Preview Image; skipped where ComfyUI reads no TAEHV),
// the image-to-video template (ComfyUI 0.21+), first_try_tiny_model as shipped; and the
// live view player (web/live_view.js) fed by nodes/live_view.py through a test-only node
// (live_view_probe.py): frames shown in order with the colours planted, looping once complete,
// stopped on cancel, no error when the node is removed mid-run (live_view*.png).
// DF_FRONTEND_ONLY=live_view runs only that part (no workflows, no model run).
//
// Needs node >= 18, Debian's chromium and playwright-core (no browser download):
//   apt-get install -y chromium
//   npm install --prefix /tmp/fe playwright-core
//   COMFYUI_DIR=/opt/comfyui COMFYUI_PYTHON=/opt/comfyui-venv/bin/python \
//     NODE_PATH=/tmp/fe/node_modules node tests/real_comfyui/frontend_check.js [OUT_DIR]
// OUT_DIR (default /tmp/df_frontend_check) gets report.json and one screenshot per workflow
// (wf_<name>.png), the run (run_graph.png) and the Cache Stats / Profile Heads nodes after it
// (run_cache_stats.png, run_profile_heads.png; run_cache_stats_large.png at 780x940, the picture
// in assets/cache_stats_node.png). Exit status 0 = no problem found; 1 = problems (listed).
//
// The server is started by harness.py (loopback only, temp base dir, --cpu) with the
// test-only random text conditioning pack of test_pack_nodes.py, and with empty placeholder
// files named like the workflows' models so that their combos list them (as for a user who
// has the models). COMFYUI_URL=http://127.0.0.1:PORT uses a running server instead (the run
// check then needs that server to have the tiny checkpoint and DFTestTextContext).
"use strict";
const { spawn } = require("child_process");
const fs = require("fs");
const path = require("path");
const { chromium } = require("playwright-core");

const HERE = __dirname;
const REPO = path.resolve(HERE, "..", "..");
const PACK = "ComfyUI-Dummy-Forcing";
const OUT = path.resolve(process.argv[2] || "/tmp/df_frontend_check");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const WORKFLOWS = ["text_to_video_dummy_forcing", "long_video_sink_window", "profile_and_reuse",
                   "causal_forcing_i2v_dummy_forcing", "long_video_prompt_switch", "first_try_tiny_model"];
const FRONTEND_ONLY = new Set(["MarkdownNote", "Note"]);
const NEEDS_CORE = { causal_forcing_i2v_dummy_forcing: ["SamplerARVideo", "ARVideoI2V"] };
const WIDGET_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"]);
const REPORT_WIDGET = "df_report"; // web/dummy_forcing.js
const LIVE_WIDGET = "df_live_view"; // web/live_view.js
const ONLY = process.env.DF_FRONTEND_ONLY || "";

// What each workflow is meant to set, by widget name (README / docs): checked on what the
// frontend shows, on top of the positional comparison with widgets_values.
const INTENDED = {
  text_to_video_dummy_forcing: {
    UNETLoader: { unet_name: "self_forcing_dmd_bf16.safetensors", weight_dtype: "default" },
    CLIPLoader: { clip_name: "umt5_xxl_fp8_e4m3fn_scaled.safetensors", type: "wan", device: "default" },
    VAELoader: { vae_name: "wan_2.1_vae.safetensors" },
    EmptyHunyuanLatentVideo: { width: 832, height: 480, length: 81, batch_size: 1 },
    ApplyDummyForcing: { dummy_heads: 0.5, scope: "global", normalised_cost: true, ar_start: 1,
                         context_packing: true, long_context_frames: 0 },
    ARVideoSampler: { seed: 42, control_after_generate: "fixed", denoise_timesteps: "1000,750,500,250",
                      shift: 5, frames_per_chunk: 3, cache: "full", return_frames: true, save_video: "off",
                      frame_rate: 16, live_preview: true, warm_start: true },
    CreateVideo: { fps: 16 },
    SaveVideo: { filename_prefix: "video/dummy_forcing", format: "auto", codec: "auto" },
  },
  long_video_sink_window: {
    UNETLoader: { unet_name: "longlive_bf16.safetensors" },
    CLIPLoader: { type: "wan" },
    EmptyHunyuanLatentVideo: { width: 832, height: 480, length: 241 },
    ApplyDummyForcing: { dummy_heads: 0.5, ar_start: 2, long_context_frames: 36, context_packing: true },
    VAELoader: { vae_name: "lighttaew2_1.safetensors" },
    ARVideoSampler: { seed: 7, control_after_generate: "fixed", cache: "sink + window", sink_frames: 3,
                      window_frames: 12, frames_per_chunk: 3, return_frames: false, save_video: "mp4",
                      filename_prefix: "video/dummy_forcing_long", frame_rate: 16, live_preview: true },
    PreviewImage: {},
  },
  profile_and_reuse: {
    ProfileHeads: { seed: 0, control_after_generate: "fixed", save_name: "self_forcing_480p",
                    denoise_timesteps: "1000,750,500,250", preview_dummy_heads: 0.5, frames_per_chunk: 3 },
    LoadHeadProfile: { profile_name: "self_forcing_480p.safetensors" },
    CLIPLoader: { type: "wan" },
  },
  // ComfyUI's own AR template (0.21+): core nodes that an older ComfyUI lacks are reported there
  causal_forcing_i2v_dummy_forcing: {
    UNETLoader: { unet_name: "causal_forcing-framewise.safetensors", weight_dtype: "default" },
    CLIPLoader: { type: "wan" },
    ARVideoI2V: { width: 832, height: 480, length: 81, batch_size: 1 },
    ApplyDummyForcing: { dummy_heads: 0.5, scope: "global", ar_start: 1, context_packing: true },
    CFGGuider: { cfg: 1 },
    BasicScheduler: { scheduler: "simple", steps: 4 },
    SamplerARVideo: { num_frame_per_block: 1 },
    RandomNoise: { noise_seed: 42 },
  },
  long_video_prompt_switch: {
    UNETLoader: { unet_name: "longlive_bf16.safetensors" },
    EmptyHunyuanLatentVideo: { width: 832, height: 480, length: 241 },
    ApplyDummyForcing: { dummy_heads: 0.5, ar_start: 2, reprofile_on_prompt_switch: false },
    ARVideoSampler: { seed: 7, cache: "sink + window", sink_frames: 3, window_frames: 12, frames_per_chunk: 3,
                      noise_layout: "pack", recache_on_switch: true },
  },
  // the small model that ships with the pack: full cache vs Dummy Forcing, side by side
  first_try_tiny_model: {
    DFTinyModelLoader: {},
    DFTinyEmptyLatent: { frames: 24 },
    ApplyDummyForcing: { dummy_heads: 0.5, ar_start: 1 },
    ARVideoSampler: { seed: 0, control_after_generate: "fixed", cache: "full", frames_per_chunk: 3, save_video: "off" },
    DFTinyDecode: {},
    ImageStitch: { direction: "right" },
    SaveAnimatedWEBP: { filename_prefix: "dummy_forcing_tiny/full_cache_vs_dummy_forcing" },
    CacheStats: {},
  },
};

const problems = [];
const notes = [];
const report = { workflows: {}, run: null, page_errors: [], console_errors: [], http_errors: [], external_requests: [], notes };
// A newer ComfyUI may append widgets to a core node (CreateVideo's bit_depth in 0.27): a file
// saved without them loads with their defaults. Reported as notes, not problems; the pack's own
// nodes get no such leniency.
function note(msg) {
  notes.push(msg);
  console.log("note: " + msg);
}
function problem(msg) {
  problems.push(msg);
  console.log("PROBLEM: " + msg);
}
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------------------------ server
const LAUNCHER = String.raw`
import ast, json, os, sys
sys.path.insert(0, os.getcwd())
from harness import ComfyServer
src = open("test_pack_nodes.py").read()
text_pack = next(n.value.value for n in ast.parse(src).body if isinstance(n, ast.Assign)
                 and getattr(n.targets[0], "id", "") == "TEXT_PACK_SOURCE")
import live_view_probe
srv = ComfyServer.from_env(extra_packs={"df_test_text_context": text_pack,
                                        live_view_probe.PACK_NAME: live_view_probe.SOURCE})
srv.prepare()
placeholders = {"diffusion_models": ["self_forcing_dmd_bf16.safetensors", "longlive_bf16.safetensors",
                                     "causal_forcing-framewise.safetensors"],
                "text_encoders": ["umt5_xxl_fp8_e4m3fn_scaled.safetensors"],
                "vae": ["wan_2.1_vae.safetensors", "lighttaew2_1.safetensors"],
                "dummy_forcing_profiles": ["self_forcing_480p.safetensors"]}
for sub, names in placeholders.items():
    os.makedirs(os.path.join(srv.base_dir, "models", sub), exist_ok=True)
    for n in names:
        open(os.path.join(srv.base_dir, "models", sub, n), "wb").close()
# Tiny random VAEs under the workflows' own names (replacing the empty placeholders), so that the
# runs from the page decode through AR Video Sampler's 'vae' input: a Wan2.1 VAE (0.2x reads its
# width from the weights, 0.3.x builds it at 96) and, where this ComfyUI reads one, a TAEHV in the
# lighttaew2_1 layout (bf16, 16 latent channels). Load VAE (0.2x) lists models/vae and the video
# TAEs of models/vae_approx, but reads a file named exactly lighttaew2_1.safetensors from
# models/vae_approx only: it goes there (the placeholder in models/vae is removed), as a user must
# put it. real_vaes lists the files that hold weights.
real_vaes = []
try:
    sys.path.insert(0, os.environ["COMFYUI_DIR"])
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options
    comfy.options.enable_args_parsing()
    import torch
    import comfy.ldm.wan.vae as wan_vae
    from safetensors.torch import save_file

    def randomised(module, scale=1.0):
        gen = torch.Generator().manual_seed(0)
        sd = {}
        for k, v in module.state_dict().items():
            fan = v[0].numel() if v.ndim > 1 else v.numel()
            sd[k] = torch.ones(v.shape) if "gamma" in k else \
                (torch.randn(v.shape, generator=gen) * scale / max(fan, 1) ** 0.5).contiguous()
        return sd

    vae_dir = os.path.join(srv.base_dir, "models", "vae")
    dim = 16 if hasattr(wan_vae, "count_cache_layers") else 96
    save_file(randomised(wan_vae.WanVAE(dim=dim, z_dim=16, temperal_downsample=[False, True, True])),
              os.path.join(vae_dir, "wan_2.1_vae.safetensors"))
    real_vaes.append("wan_2.1_vae.safetensors")
    try:
        import comfy.taesd.taehv as taehv
    except ImportError:  # no TAEHV in this ComfyUI: lighttaew2_1 stays a placeholder
        taehv = None
    if taehv is not None:
        sd = {k: v.to(torch.bfloat16) for k, v in randomised(taehv.TAEHV(latent_channels=16), 0.5).items()}
        approx_dir = os.path.join(srv.base_dir, "models", "vae_approx")
        os.makedirs(approx_dir, exist_ok=True)
        save_file(sd, os.path.join(approx_dir, "lighttaew2_1.safetensors"))
        os.remove(os.path.join(vae_dir, "lighttaew2_1.safetensors"))
        real_vaes.append("lighttaew2_1.safetensors")
except Exception as err:  # the load checks still run; the runs that decode are skipped
    print("no tiny VAE:", err, file=sys.stderr)
# the start image of the image-to-video workflow, as a user would have put it in input/
from PIL import Image
os.makedirs(os.path.join(srv.base_dir, "input"), exist_ok=True)
Image.new("RGB", (64, 64), (200, 120, 40)).save(os.path.join(srv.base_dir, "input", "example.png"))
srv.start()
print(json.dumps({"url": srv.url, "base_dir": srv.base_dir, "tiny": srv.tiny_wan_info, "real_vaes": real_vaes}), flush=True)
try:
    sys.stdin.read()  # until the parent closes stdin (or dies)
finally:
    srv.stop()
`;

async function startServer() {
  if (process.env.COMFYUI_URL) return { url: process.env.COMFYUI_URL.replace(/\/$/, ""), stop: async () => {} };
  if (!process.env.COMFYUI_DIR) throw new Error("set COMFYUI_DIR (and COMFYUI_PYTHON) or COMFYUI_URL");
  const py = process.env.COMFYUI_PYTHON || "python3";
  const child = spawn(py, ["-c", LAUNCHER], { cwd: HERE, stdio: ["pipe", "pipe", "inherit"] });
  const info = await new Promise((resolve, reject) => {
    let buf = "";
    child.stdout.on("data", (d) => {
      buf += d;
      const line = buf.split("\n").find((l) => l.startsWith("{"));
      if (line) resolve(JSON.parse(line));
    });
    child.on("exit", (code) => reject(new Error(`server launcher exited with ${code}`)));
  });
  const stop = async () => {
    child.stdin.end();
    await new Promise((r) => (child.exitCode !== null ? r() : child.on("exit", r)));
  };
  return { ...info, stop };
}

// ------------------------------------------------------------------------------------ page helpers
async function openDialogs(page) {
  return page.evaluate(() => {
    const visible = (el) => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
    const dialogs = [...document.querySelectorAll(".p-dialog")].filter(visible).map((d) => d.innerText.trim());
    const toasts = [...document.querySelectorAll(".p-toast-message")].filter(visible).map((d) => d.innerText.trim());
    return { dialogs, toasts };
  });
}

async function closeDialogs(page) {
  for (let i = 0; i < 5; i++) {
    const n = await page.evaluate(() => {
      const btns = [...document.querySelectorAll(".p-dialog .p-dialog-close-button, .p-toast-close-button")];
      btns.forEach((b) => b.click());
      return btns.length;
    });
    if (!n) return;
    await sleep(300);
  }
}

// The frontend's view of the graph: nodes, widgets (name, type, value), serialized values.
async function readGraph(page) {
  return page.evaluate((REPORT_WIDGET) => {
    const registered = window.LiteGraph.registered_node_types;
    const ser = window.app.graph.serialize();
    const serById = Object.fromEntries(ser.nodes.map((n) => [n.id, n]));
    return window.app.graph._nodes.map((n) => ({
      id: n.id,
      type: n.type,
      title: n.title,
      mode: n.mode,
      registered: n.type in registered,
      has_errors: !!n.has_errors,
      size: [...n.size],
      widgets: (n.widgets || []).map((w) => ({
        name: w.name, type: w.type,
        value: typeof w.value === "object" && w.value !== null ? JSON.parse(JSON.stringify(w.value)) : w.value,
        options: w.type === "combo" ? (typeof w.options?.values === "function" ? w.options.values() : w.options?.values) : undefined,
        serialize: w.serialize !== false && w.options?.serialize !== false,
      })),
      serialized_widgets_values: serById[n.id]?.widgets_values,
      inputs: (n.inputs || []).map((i) => ({ name: i.name, link: i.link, widget: i.widget?.name })),
    }));
  }, REPORT_WIDGET);
}

// Widget names in frontend order, from /object_info (what the JSON's widgets_values follow).
function expectedWidgetNames(def) {
  const names = [];
  const all = { ...(def.input.required || {}), ...(def.input.optional || {}) };
  const order = [...(def.input_order?.required || []), ...(def.input_order?.optional || [])];
  for (const name of order) {
    const [type, opts = {}] = all[name];
    const isWidget = Array.isArray(type) || WIDGET_TYPES.has(type);
    if (!isWidget || opts.forceInput) continue;
    names.push(name);
    if (opts.image_upload) names.push("upload"); // the frontend's upload button (its value is the folder type)
    if (opts.control_after_generate || (type === "INT" && ["seed", "noise_seed"].includes(name))) {
      names.push("control_after_generate");
    }
  }
  return names;
}

function checkWidgetValue(where, name, value, spec) {
  if (!spec) return; // control_after_generate
  const [type, opts = {}] = spec;
  const options = Array.isArray(type) ? type : type === "COMBO" ? opts.options : null;
  if (options) {
    if (!options.includes(value)) problem(`${where}: ${name} = ${JSON.stringify(value)} not among ${JSON.stringify(options)}`);
  } else if (type === "INT" || type === "FLOAT") {
    if (typeof value !== "number") problem(`${where}: ${name} = ${JSON.stringify(value)} is not a number`);
    else if ((opts.min != null && value < opts.min) || (opts.max != null && value > opts.max))
      problem(`${where}: ${name} = ${value} outside [${opts.min}, ${opts.max}]`);
    else if (type === "INT" && !Number.isInteger(value)) problem(`${where}: ${name} = ${value} is not an integer`);
  } else if (type === "BOOLEAN" && typeof value !== "boolean") {
    problem(`${where}: ${name} = ${JSON.stringify(value)} is not a boolean`);
  } else if (type === "STRING" && typeof value !== "string") {
    problem(`${where}: ${name} = ${JSON.stringify(value)} is not a string`);
  }
}

async function fitView(page) {
  await page.evaluate(() => {
    const c = window.app.canvas;
    const nodes = window.app.graph._nodes;
    const x0 = Math.min(...nodes.map((n) => n.pos[0])), y0 = Math.min(...nodes.map((n) => n.pos[1] - 40));
    const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])), y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1]));
    const W = c.canvas.clientWidth, H = c.canvas.clientHeight;
    const s = Math.min(W / (x1 - x0 + 80), H / (y1 - y0 + 80), 1.2);
    c.ds.scale = s;
    c.ds.offset = [(W / s - (x1 - x0)) / 2 - x0, (H / s - (y1 - y0)) / 2 - y0];
    c.setDirty(true, true);
  });
  await sleep(600);
}

// ------------------------------------------------------------------------------------ workflows
async function checkWorkflow(page, url, name, defs, templatesList) {
  const file = path.join(REPO, "workflows", name + ".json");
  const json = JSON.parse(fs.readFileSync(file, "utf8"));
  const r = { file: path.relative(REPO, file), missing_node_types: [], dialogs: [], toasts: [], nodes: [] };
  report.workflows[name] = r;
  const needs = (NEEDS_CORE[name] || []).filter((t) => !defs[t]);
  if (needs.length) { // a template of ComfyUI's own AR path on an older ComfyUI: not expected to load
    note(`${name}: skipped, this ComfyUI has no ${needs.join(", ")} (core AR video, ComfyUI 0.21+)`);
    r.skipped = needs;
    return;
  }
  // as served to the Templates browser (custom node templates)
  if (!(templatesList[PACK] || []).includes(name)) problem(`${name}: not in /api/workflow_templates`);
  const served = await page.evaluate(async (u) => (await fetch(u)).json(), `${url}/api/workflow_templates/${PACK}/${name}.json`);
  if (!same(served, json)) problem(`${name}: the template served differs from the file`);

  const errorsBefore = report.page_errors.length;
  await page.evaluate(async ([wf, name]) => {
    await window.app.loadGraphData(wf, true, true, name + ".json");
  }, [served, name]);
  await sleep(1500);
  const d = await openDialogs(page);
  r.dialogs = d.dialogs;
  r.toasts = d.toasts;
  for (const t of d.dialogs) problem(`${name}: dialog after loading: ${t.slice(0, 300)}`);
  for (const t of d.toasts) problem(`${name}: toast after loading: ${t.slice(0, 300)}`);
  await page.screenshot({ path: path.join(OUT, `wf_${name}.png`) });
  await fitView(page);
  await page.screenshot({ path: path.join(OUT, `wf_${name}_fit.png`) });
  await closeDialogs(page);

  const graph = await readGraph(page);
  r.nodes = graph;
  const newErrors = report.page_errors.slice(errorsBefore);
  if (newErrors.length) problem(`${name}: page errors while loading: ${newErrors.join(" | ")}`);
  if (graph.length !== json.nodes.length) problem(`${name}: ${graph.length} nodes in the frontend, ${json.nodes.length} in the file`);
  const byId = Object.fromEntries(graph.map((n) => [n.id, n]));
  const intended = INTENDED[name] || {};
  const seenTypes = new Set();
  for (const jn of json.nodes) {
    const fn = byId[jn.id];
    const where = `${name}: node ${jn.id} ${jn.type}`;
    if (!fn) { problem(`${where}: not in the frontend's graph`); continue; }
    if (fn.type !== jn.type) problem(`${where}: frontend type ${fn.type}`);
    if (!fn.registered) { r.missing_node_types.push(jn.type); problem(`${where}: node type not registered (missing node)`); }
    if (fn.has_errors) problem(`${where}: has_errors`);
    if ((fn.mode || 0) !== (jn.mode || 0)) problem(`${where}: mode ${fn.mode}, file ${jn.mode}`);
    const jv = jn.widgets_values || [];
    // "$$..." widgets are the frontend's own (e.g. LoadImage's image preview): never saved or sent
    const shown = fn.widgets.filter((w) => w.name !== REPORT_WIDGET && !String(w.name).startsWith("$$"));
    const values = shown.map((w) => w.value);
    const core = !FRONTEND_ONLY.has(jn.type) && defs[jn.type] && !String(defs[jn.type].python_module).startsWith("custom_nodes.");
    const appended = (got) => core && got.length > jv.length && same(got.slice(0, jv.length), jv);
    if (appended(values)) note(`${where}: this ComfyUI appends widgets ${JSON.stringify(values.slice(jv.length))} (defaults)`);
    else if (!same(values, jv)) problem(`${where}: widgets show ${JSON.stringify(values)}, file has ${JSON.stringify(jv)}`);
    const saved = fn.serialized_widgets_values || [];
    if (!same(saved, jv) && !appended(saved))
      problem(`${where}: re-saved widgets_values ${JSON.stringify(fn.serialized_widgets_values)} != file ${JSON.stringify(jv)}`);
    if (!FRONTEND_ONLY.has(jn.type)) {
      const def = defs[jn.type];
      if (!def) { problem(`${where}: not in /object_info`); continue; }
      const names = expectedWidgetNames(def);
      if (!same(shown.map((w) => w.name), names))
        problem(`${where}: frontend widgets ${JSON.stringify(shown.map((w) => w.name))}, object_info order ${JSON.stringify(names)}`);
      const all = { ...(def.input.required || {}), ...(def.input.optional || {}) };
      for (const w of shown) {
        checkWidgetValue(where, w.name, w.value, all[w.name]);
        if (w.name === "control_after_generate" && !["fixed", "increment", "decrement", "randomize"].includes(w.value))
          problem(`${where}: control_after_generate = ${JSON.stringify(w.value)}`);
      }
    }
    const want = intended[jn.type];
    if (want && !seenTypes.has(jn.type)) {
      seenTypes.add(jn.type);
      for (const [k, v] of Object.entries(want)) {
        const w = shown.find((x) => x.name === k);
        if (!w) problem(`${where}: no widget ${k}`);
        else if (!same(w.value, v)) problem(`${where}: ${k} shows ${JSON.stringify(w.value)}, intended ${JSON.stringify(v)}`);
      }
    }
  }
  for (const t of Object.keys(intended)) if (!seenTypes.has(t)) problem(`${name}: no ${t} node`);

  // layout as shown: no node covering another, no node sticking out of a group it overlaps
  const TH = 30; // title height
  const box = (n) => [n.pos[0], n.pos[1] - TH, n.pos[0] + n.size[0], n.pos[1] + n.size[1]];
  const hit = (a, b) => a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3];
  const posById = Object.fromEntries(json.nodes.map((n) => [n.id, n.pos]));
  const boxes = graph.map((n) => ({ id: n.id, type: n.type, b: box({ pos: posById[n.id], size: n.size }) }));
  for (let i = 0; i < boxes.length; i++)
    for (let j = i + 1; j < boxes.length; j++)
      if (hit(boxes[i].b, boxes[j].b)) problem(`${name}: node ${boxes[i].id} ${boxes[i].type} overlaps node ${boxes[j].id} ${boxes[j].type}`);
  for (const g of json.groups || []) {
    const [gx, gy, gw, gh] = g.bounding;
    const gb = [gx, gy, gx + gw, gy + gh];
    for (const { id, type, b } of boxes) {
      const inside = b[0] >= gb[0] && b[1] >= gb[1] && b[2] <= gb[2] && b[3] <= gb[3];
      if (hit(b, gb) && !inside) problem(`${name}: node ${id} ${type} partly inside group "${g.title.slice(0, 40)}"`);
    }
  }

  // the prompt the frontend would queue: every widget (named) reaches the server unchanged
  const prompt = await page.evaluate(async () => (await window.app.graphToPrompt()).output);
  r.api_prompt = prompt;
  for (const jn of json.nodes) {
    const muted = jn.mode === 2 || jn.mode === 4;
    const p = prompt[String(jn.id)];
    if (FRONTEND_ONLY.has(jn.type) || muted) {
      if (p) problem(`${name}: node ${jn.id} ${jn.type} (frontend-only or muted) is in the prompt`);
      continue;
    }
    if (!p) { problem(`${name}: node ${jn.id} ${jn.type} missing from the prompt`); continue; }
    const names = expectedWidgetNames(defs[jn.type]);
    names.forEach((wn, i) => {
      if (wn === "control_after_generate" || wn === "upload") return;
      if (i >= jn.widgets_values.length && !String(defs[jn.type].python_module).startsWith("custom_nodes.")) return;  // appended (note above)
      if (!same(p.inputs[wn], jn.widgets_values[i]))
        problem(`${name}: prompt node ${jn.id} ${jn.type}.${wn} = ${JSON.stringify(p.inputs[wn])}, file ${JSON.stringify(jn.widgets_values[i])}`);
    });
    if (REPORT_WIDGET in p.inputs) problem(`${name}: ${REPORT_WIDGET} sent in the prompt`);
  }
  console.log(`${name}: ${graph.length} nodes, missing types ${JSON.stringify(r.missing_node_types)}, dialogs ${r.dialogs.length}, toasts ${r.toasts.length}`);
}

// Queue the loaded graph like the Run button; the server's events until it ends (or 240 s).
async function queueFromPage(page) {
  return page.evaluate(async () => {
    const api = window.app.api;
    const events = [];
    const listeners = [];
    const done = new Promise((resolve) => {
      for (const name of ["executed", "execution_success", "execution_error"]) {
        const fn = (e) => {
          events.push({ name, node: e.detail?.node ?? e.detail?.node_id, prompt_id: e.detail?.prompt_id,
                        text: e.detail?.output?.text, images: e.detail?.output?.images?.length,
                        files: e.detail?.output?.images?.map((i) => ({ filename: i.filename, subfolder: i.subfolder, type: i.type })),
                        error: e.detail?.exception_message });
          if (name !== "executed") resolve();
        };
        api.addEventListener(name, fn);
        listeners.push([name, fn]);
      }
      const onLive = (e) => events.push({ name: "live", node: e.detail?.node, state: e.detail?.state, frames: e.detail?.frames });
      api.addEventListener("dummy_forcing.live", onLive);
      listeners.push(["dummy_forcing.live", onLive]);
    });
    await window.app.queuePrompt(0, 1);
    await Promise.race([done, new Promise((r) => setTimeout(r, 240000))]);
    await new Promise((r) => setTimeout(r, 1500));
    for (const [name, fn] of listeners) api.removeEventListener(name, fn);
    return events;
  });
}

// ------------------------------------------------------------------------------------ image-to-video run
// causal_forcing_i2v_dummy_forcing.json as loaded, on the tiny causal checkpoint and a tiny random
// VAE under the workflow's name (64x64, 21 frames), a random text conditioning instead of umT5 (CLIP nodes muted): core's
// SamplerCustomAdvanced + Sampler AR Video with Apply Dummy Forcing, queued from the page.
async function runCheckI2V(page) {
  const json = JSON.parse(fs.readFileSync(path.join(REPO, "workflows", "causal_forcing_i2v_dummy_forcing.json"), "utf8"));
  await page.evaluate(async (wf) => { await window.app.loadGraphData(wf, true, true, "run_check_i2v.json"); }, json);
  await sleep(800);
  await closeDialogs(page);
  const ids = await page.evaluate(() => {
    const LG = window.LiteGraph, g = window.app.graph;
    const find = (t) => g._nodes.find((n) => n.type === t);
    const setW = (n, name, v) => { const w = n.widgets.find((x) => x.name === name); w.value = v; w.callback?.(v); };
    setW(find("UNETLoader"), "unet_name", "tiny_wan_causal.safetensors");
    const i2v = find("ARVideoI2V");
    setW(i2v, "width", 64); setW(i2v, "height", 64); setW(i2v, "length", 21);
    find("CLIPLoader").mode = 2;
    for (const n of g._nodes.filter((n) => n.type === "CLIPTextEncode")) n.mode = 2;
    const text = LG.createNode("DFTestTextContext");
    text.pos = [i2v.pos[0], i2v.pos[1] + i2v.size[1] + 80];
    g.add(text);
    const guider = find("CFGGuider");
    text.connect(0, guider, "positive");
    text.connect(0, guider, "negative");
    g.setDirtyCanvas(true, true);
    return { stats: find("CacheStats").id, save: find("SaveVideo").id };
  });
  const events = await queueFromPage(page);
  const statsText = await page.evaluate((id) =>
    window.app.graph.getNodeById(id).widgets?.find((x) => x.name === "df_report")?.value, ids.stats);
  const result = { events, stats_text: statsText };
  report.run_i2v = result;
  const last = result.events[result.events.length - 1];
  if (!last || last.name !== "execution_success") problem(`run i2v: did not succeed: ${JSON.stringify(last)}`);
  const text = String(result.stats_text || "");
  for (const must of ["loop: ComfyUI Sampler AR Video", "dummy forcing: dummy heads 0.5", "per-head cache from chunk 2"])
    if (!text.includes(must)) problem(`run i2v: Cache Stats text does not contain ${JSON.stringify(must)}: ${text.slice(0, 300)}`);
  if (!result.events.some((e) => e.name === "executed" && String(e.node) === String(ids.save)))
    problem("run i2v: SaveVideo produced no output");
  await fitView(page);
  await page.screenshot({ path: path.join(OUT, "run_i2v_graph.png") });
  console.log(`run i2v: ${last?.name}; Cache Stats: ${text.split("\n").slice(0, 4).join(" | ")}`);
}

// ------------------------------------------------------------------------------------ long video run
// long_video_sink_window.json as loaded, on the tiny checkpoint and a tiny random lighttaew2_1
// (TAEHV) under the workflow's name, a random text conditioning instead of umT5 (CLIP nodes
// muted), 64x64 x 81 frames (21 latent frames: the sink + window cache of 3 + 12 drops frames).
// AR Video Sampler writes the mp4 while it samples (return_frames off): Preview Image gets the
// last frame only.
async function runCheckLong(page) {
  const json = JSON.parse(fs.readFileSync(path.join(REPO, "workflows", "long_video_sink_window.json"), "utf8"));
  await page.evaluate(async (wf) => { await window.app.loadGraphData(wf, true, true, "run_check_long.json"); }, json);
  await sleep(800);
  await closeDialogs(page);
  const ids = await page.evaluate(() => {
    const LG = window.LiteGraph, g = window.app.graph;
    const find = (t) => g._nodes.find((n) => n.type === t);
    const setW = (n, name, v) => { const w = n.widgets.find((x) => x.name === name); w.value = v; w.callback?.(v); };
    const empty = find("EmptyHunyuanLatentVideo"), sampler = find("ARVideoSampler");
    setW(find("UNETLoader"), "unet_name", "tiny_wan_t2v.safetensors");
    setW(empty, "width", 64); setW(empty, "height", 64); setW(empty, "length", 81);
    for (const t of ["CLIPLoader", "CLIPTextEncode"]) find(t).mode = 2;
    const text = LG.createNode("DFTestTextContext");
    text.pos = [empty.pos[0], empty.pos[1] + empty.size[1] + 80];
    g.add(text);
    text.connect(0, sampler, "positive");
    g.setDirtyCanvas(true, true);
    return { sampler: sampler.id, preview: find("PreviewImage").id, stats: find("CacheStats").id };
  });
  const events = await queueFromPage(page);
  const statsText = await page.evaluate((id) =>
    window.app.graph.getNodeById(id).widgets?.find((x) => x.name === "df_report")?.value, ids.stats);
  report.run_long = { events, stats_text: statsText };
  const last = events[events.length - 1];
  if (!last || last.name !== "execution_success") problem(`run long: did not succeed: ${JSON.stringify(last)}`);
  const ex = (id) => events.find((e) => e.name === "executed" && String(e.node) === String(id));
  if (!ex(ids.sampler)?.images) problem(`run long: AR Video Sampler showed no saved video: ${JSON.stringify(ex(ids.sampler))}`);
  const mp4 = ex(ids.sampler)?.files?.[0];
  if (mp4) { // the file as the browser gets it: its length in the video element (81 frames at 16 fps)
    const media = await page.evaluate(async (f) => {
      const u = `/api/view?${new URLSearchParams(f)}`;
      const res = await fetch(u);
      const bytes = (await res.arrayBuffer()).byteLength;
      const v = document.createElement("video");
      v.muted = true;
      const meta = await new Promise((resolve) => {
        v.onloadedmetadata = () => resolve({ duration: v.duration, width: v.videoWidth, height: v.videoHeight });
        v.onerror = () => resolve({ error: String(v.error?.message || v.error?.code) });
        setTimeout(() => resolve({ error: "timeout" }), 15000);
        v.src = u;
      });
      return { status: res.status, bytes, ...meta };
    }, mp4);
    report.run_long.mp4 = { ...mp4, ...media };
    if (media.status !== 200 || !media.bytes) problem(`run long: ${mp4.filename} not served: ${JSON.stringify(media)}`);
    else if (media.error) note(`run long: this Chromium cannot read ${mp4.filename} (${media.error}); ${media.bytes} bytes`);
    else {
      if (Math.abs(media.duration - 81 / 16) > 0.2) problem(`run long: ${mp4.filename} lasts ${media.duration} s, 81 frames at 16 fps = 5.06 s`);
      if (media.width !== 64 || media.height !== 64) problem(`run long: ${mp4.filename} is ${media.width}x${media.height}, 64x64 expected`);
    }
    console.log(`run long: ${mp4.filename}: ${JSON.stringify(media)}`);
  }
  if (ex(ids.preview)?.images !== 1) problem(`run long: Preview Image got ${ex(ids.preview)?.images} images, return_frames off: the last frame`);
  if (!events.some((e) => e.name === "live" && String(e.node) === String(ids.sampler)))
    problem("run long: no live view event for AR Video Sampler");
  const text = String(statsText || "");
  if (!text.includes("dummy forcing: dummy heads 0.5")) problem(`run long: Cache Stats text: ${text.slice(0, 300)}`);
  await fitView(page);
  await page.screenshot({ path: path.join(OUT, "run_long_graph.png") });
  console.log(`run long: ${last?.name}; sampler ${JSON.stringify(ex(ids.sampler))}; preview ${JSON.stringify(ex(ids.preview))}`);
}

// ------------------------------------------------------------------------------------ small model run
// first_try_tiny_model.json exactly as loaded (its models ship with the pack): both samplers, the
// side-by-side WEBP and both Cache Stats reports.
async function runCheckTinyModel(page) {
  const json = JSON.parse(fs.readFileSync(path.join(REPO, "workflows", "first_try_tiny_model.json"), "utf8"));
  await page.evaluate(async (wf) => { await window.app.loadGraphData(wf, true, true, "run_check_tiny.json"); }, json);
  await sleep(800);
  await closeDialogs(page);
  const ids = await page.evaluate(() => {
    const g = window.app.graph;
    return { save: g._nodes.find((n) => n.type === "SaveAnimatedWEBP").id,
             stats: g._nodes.filter((n) => n.type === "CacheStats").map((n) => n.id) };
  });
  const events = await queueFromPage(page);
  const texts = await page.evaluate((ids) => ids.map((id) =>
    String(window.app.graph.getNodeById(id).widgets?.find((x) => x.name === "df_report")?.value ?? "")), ids.stats);
  report.run_tiny = { events, stats_texts: texts };
  const last = events[events.length - 1];
  if (!last || last.name !== "execution_success") problem(`run tiny: did not succeed: ${JSON.stringify(last)}`);
  if (!events.some((e) => e.name === "executed" && String(e.node) === String(ids.save) && e.images))
    problem("run tiny: Save Animated WEBP produced no image");
  if (texts.some((t) => !t.trim())) problem(`run tiny: a Cache Stats node shows no report: ${JSON.stringify(texts.map((t) => t.slice(0, 80)))}`);
  if (!texts.some((t) => t.includes("dummy heads 0.5"))) problem(`run tiny: no Cache Stats report of the Dummy Forcing run: ${JSON.stringify(texts.map((t) => t.slice(0, 120)))}`);
  await fitView(page);
  await page.screenshot({ path: path.join(OUT, "run_tiny_graph.png") });
  console.log(`run tiny: ${last?.name}; Cache Stats: ${texts.map((t) => t.split("\n")[0]).join(" || ")}`);
}

// ------------------------------------------------------------------------------------ run check
// The text-to-video workflow with the tiny checkpoint, a tiny random Wan2.1 VAE under the
// workflow's name and a random text conditioning instead of umT5 (CLIP nodes muted); a Profile
// Heads node added on the same inputs. Queued from the page like the Run button: AR Video
// Sampler decodes through its 'vae' input, its IMAGE goes to Create Video -> Save Video.
async function runCheck(page, url, server) {
  const json = JSON.parse(fs.readFileSync(path.join(REPO, "workflows", "text_to_video_dummy_forcing.json"), "utf8"));
  await page.evaluate(async (wf) => { await window.app.loadGraphData(wf, true, true, "run_check.json"); }, json);
  await sleep(800);
  await closeDialogs(page);
  const setup = await page.evaluate(() => {
    const LG = window.LiteGraph, g = window.app.graph;
    const find = (t) => g._nodes.find((n) => n.type === t);
    const setW = (n, name, v) => { const w = n.widgets.find((x) => x.name === name); w.value = v; w.callback?.(v); };
    const unet = find("UNETLoader"), empty = find("EmptyHunyuanLatentVideo"), sampler = find("ARVideoSampler");
    const apply = find("ApplyDummyForcing"), stats = find("CacheStats");
    setW(unet, "unet_name", "tiny_wan_t2v.safetensors");
    setW(empty, "width", 64); setW(empty, "height", 64); setW(empty, "length", 21);
    setW(sampler, "frames_per_chunk", 1);
    for (const t of ["CLIPLoader", "CLIPTextEncode"]) find(t).mode = 2;
    const text = LG.createNode("DFTestTextContext");
    text.pos = [empty.pos[0], empty.pos[1] + empty.size[1] + 80];
    g.add(text);
    text.connect(0, sampler, "positive");
    const prof = LG.createNode("ProfileHeads");
    prof.pos = [Math.min(sampler.pos[0], stats.pos[0] - 480), sampler.pos[1] + sampler.size[1] + 120];
    g.add(prof);
    unet.connect(0, prof, "model");
    text.connect(0, prof, "conditioning");
    empty.connect(0, prof, "latent");
    for (const [k, v] of Object.entries({ frames_per_chunk: 1, chunks_to_profile: 2, sink_frames: 1, save_name: "frontend_check" }))
      setW(prof, k, v);
    g.setDirtyCanvas(true, true);
    return { stats: stats.id, prof: prof.id, apply: apply.id, sampler: sampler.id, save: find("SaveVideo").id };
  });
  const events = await queueFromPage(page);
  const result = await page.evaluate(async ([ids, events]) => {
    const read = (id) => {
      const n = window.app.graph.getNodeById(id);
      const w = n.widgets?.find((x) => x.name === "df_report");
      const el = w && (w.element ?? w.inputEl);
      return { widget: !!w, value: w?.value, element_value: el?.value, element_visible: !!(el && el.offsetWidth && el.offsetHeight),
               read_only: el?.readOnly, client: el && [el.clientWidth, el.clientHeight],
               scroll: el && [el.scrollWidth, el.scrollHeight], lines: String(w?.value ?? "").split("\n").length, images: n.imgs?.length ?? 0, size: [...n.size],
               serialized_widgets_values: n.serialize().widgets_values };
    };
    return { events, stats: read(ids.stats), prof: read(ids.prof) };
  }, [setup, events]);
  report.run = result;
  const last = result.events[result.events.length - 1];
  if (!last || last.name !== "execution_success") problem(`run: did not succeed: ${JSON.stringify(last)}`);
  for (const [label, r, must] of [["Cache Stats", result.stats, "dummy forcing: dummy heads 0.5"],
                                   ["Profile Heads", result.prof, "head profile:"]]) {
    if (!r.widget) problem(`run: ${label} has no ${REPORT_WIDGET} widget`);
    else {
      if (!String(r.value).includes(must)) problem(`run: ${label} text does not contain ${JSON.stringify(must)}: ${String(r.value).slice(0, 200)}`);
      if (r.element_value !== r.value) problem(`run: ${label} textarea does not show the widget's value`);
      if (!r.element_visible) problem(`run: ${label} textarea not visible`);
      if (!r.read_only) problem(`run: ${label} textarea is editable`);
      // the whole report readable without scrolling (short reports; ComfyUI's textarea cannot scroll sideways)
      if (r.scroll[0] > r.client[0] + 2) problem(`run: ${label} text wider than its box (${r.scroll[0]} > ${r.client[0]} px): clipped`);
      if (r.lines <= 16 && r.scroll[1] > r.client[1] + 2)
        problem(`run: ${label} text taller than its box (${r.scroll[1]} > ${r.client[1]} px, ${r.lines} lines)`);
    }
    if (!r.images) problem(`run: ${label} shows no image`);
  }
  if (!result.events.some((e) => e.name === "executed" && String(e.node) === String(setup.save) && e.images))
    problem("run: Save Video (fed by AR Video Sampler's IMAGE) produced no video");
  const live = result.events.filter((e) => e.name === "live" && String(e.node) === String(setup.sampler));
  if (!live.length) problem("run: no live view event for AR Video Sampler (live_preview on, vae connected)");
  console.log(`run: ${last?.name}; ${live.length} live view events for the sampler`);
  if (!same(result.stats.serialized_widgets_values || [], [])) problem(`run: Cache Stats saves widgets_values ${JSON.stringify(result.stats.serialized_widgets_values)}`);
  const p = await page.evaluate(async (id) => (await window.app.graphToPrompt()).output[String(id)], setup.prof);
  if (p && REPORT_WIDGET in p.inputs) problem("run: df_report in the prompt after a run");

  await fitView(page);
  await page.screenshot({ path: path.join(OUT, "run_graph.png") });
  await nodeShot(page, setup.stats, path.join(OUT, "run_cache_stats.png"));
  await nodeShot(page, setup.prof, path.join(OUT, "run_profile_heads.png"));
  // a roomier Cache Stats (as a user would drag it): no wrapped lines, larger plots
  await page.evaluate((id) => { const n = window.app.graph.getNodeById(id); n.setSize([780, 940]); }, setup.stats);
  await nodeShot(page, setup.stats, path.join(OUT, "run_cache_stats_large.png"));

  // Save / reload after the run: values stay on their widgets (the report widget adds nothing).
  const reload = await page.evaluate(async () => {
    const before = window.app.graph.serialize();
    await window.app.loadGraphData(before, true, true, "run_check_reloaded.json");
    const after = window.app.graph.serialize();
    const diff = [];
    for (const n of before.nodes) {
      const m = after.nodes.find((x) => x.id === n.id);
      const a = (n.widgets_values || []).filter((v) => v !== null && v !== undefined);
      const b = (m?.widgets_values || []).filter((v) => v !== null && v !== undefined);
      if (JSON.stringify(a) !== JSON.stringify(b)) diff.push({ id: n.id, type: n.type, before: n.widgets_values, after: m?.widgets_values });
    }
    const prof = window.app.graph._nodes.find((n) => n.type === "ProfileHeads");
    return { diff, prof_widgets: prof.widgets.map((w) => [w.name, w.value]) };
  });
  report.run.reload = reload;
  if (reload.diff.length) problem(`run: save + reload changed widgets_values: ${JSON.stringify(reload.diff).slice(0, 600)}`);
  const profWant = { frames_per_chunk: 1, chunks_to_profile: 2, sink_frames: 1, save_name: "frontend_check" };
  for (const [k, v] of Object.entries(profWant)) {
    const got = reload.prof_widgets.find(([n]) => n === k)?.[1];
    if (got !== v) problem(`run: after reload ProfileHeads.${k} = ${JSON.stringify(got)}, expected ${JSON.stringify(v)}`);
  }
  return setup;
}

// ------------------------------------------------------------------------------------ live view
// frame i of DFTestLiveView is one flat colour (live_view_probe.frame_color)
const frameColor = (i) => [(40 + 67 * i) % 256, (200 + 101 * i) % 256, (90 + 29 * i) % 256];

// One DFTestLiveView node on a fresh graph, queued from the page; the player sampled every 100 ms
// (label, centre pixel of its canvas) until `afterMs` after the prompt ended. `removeOnFirst`:
// the node is removed from the graph as soon as it shows a frame.
async function liveRun(page, inputs, afterMs, removeOnFirst = false) {
  return page.evaluate(async ([inputs, afterMs, removeOnFirst, WIDGET]) => {
    const app = window.app, api = app.api, g = app.graph;
    for (const n of [...g._nodes]) g.remove(n);
    const node = window.LiteGraph.createNode("DFTestLiveView");
    node.pos = [200, 150];
    g.add(node);
    for (const [k, v] of Object.entries(inputs)) {
      const w = node.widgets.find((x) => x.name === k);
      w.value = v;
      w.callback?.(v);
    }
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [0, 0];
    g.setDirtyCanvas(true, true);
    let ended = null;
    const onEnd = (name) => (e) => { ended ??= { name, at: performance.now() }; };
    const handlers = ["execution_success", "execution_error", "execution_interrupted"].map((n) => [n, onEnd(n)]);
    for (const [n, fn] of handlers) api.addEventListener(n, fn);
    const live = [];
    const onLive = (e) => live.push(e.detail);
    api.addEventListener("dummy_forcing.live", onLive);
    await app.queuePrompt(0, 1);
    const samples = [];
    const t0 = performance.now();
    let removed = false;
    while (performance.now() - t0 < 60000) {
      await new Promise((r) => setTimeout(r, 100));
      const w = node.widgets?.find((x) => x.name === WIDGET);
      const canvas = w?.element?.querySelector?.("canvas");
      const label = w?.element?.innerText ?? null;
      let pixel = null;
      if (canvas && canvas.width > 1) {
        pixel = [...canvas.getContext("2d").getImageData(canvas.width >> 1, canvas.height >> 1, 1, 1).data.slice(0, 3)];
      }
      samples.push({ t: Math.round(performance.now() - t0), label, pixel, size: canvas ? [canvas.width, canvas.height] : null,
                     visible: !!(w?.element?.offsetWidth && w.element.offsetHeight), ended: !!ended });
      if (removeOnFirst && !removed && label && /frame [1-9]/.test(label)) {
        g.remove(node);
        removed = true;
      }
      if (ended && performance.now() - ended.at > afterMs) break;
    }
    for (const [n, fn] of handlers) api.removeEventListener(n, fn);
    api.removeEventListener("dummy_forcing.live", onLive);
    const alive = !!g.getNodeById(node.id);
    return { id: node.id, ended: ended?.name ?? null, samples, live, alive,
             widgets_values: alive ? node.serialize().widgets_values : null,
             prompt_inputs: alive ? Object.keys((await app.graphToPrompt()).output[String(node.id)]?.inputs ?? {}) : null,
             node_size: alive ? [...node.size] : null };
  }, [inputs, afterMs, removeOnFirst, LIVE_WIDGET]);
}

function parseLabel(label) {
  const m = /frame (\d+) \/ (\d+)( so far)?/.exec(label || "");
  return m ? { n: Number(m[1]), m: Number(m[2]), soFar: !!m[3], cancelled: /cancel/.test(label) } : null;
}

async function liveViewCheck(page) {
  const r = {};
  report.live_view = r;
  const errorsBefore = report.page_errors.length;
  // 1. a run of 24 frames in 4 chunks, 0.6 s apart, played at 8 fps; then looped
  const base = { frames: 24, chunk: 6, height: 48, width: 80, frame_rate: 8, delay: 0.6, cancel: false, live_preview: true };
  const run = await liveRun(page, { ...base, nonce: 1 }, 4000);
  r.run = { ended: run.ended, labels: [...new Set(run.samples.map((s) => s.label))], widgets_values: run.widgets_values,
            prompt_inputs: run.prompt_inputs, node_size: run.node_size, live: run.live };
  await nodeShot(page, run.id, path.join(OUT, "live_view.png"));
  if (run.ended !== "execution_success") problem(`live view: run ended with ${run.ended}`);
  const seen = run.samples.map((s) => ({ ...s, p: parseLabel(s.label) })).filter((s) => s.p);
  if (!seen.length) problem(`live view: the node never showed a frame: ${JSON.stringify(run.samples.slice(-3))}`);
  let colourMismatch = 0;
  for (const s of seen) {
    const want = frameColor(s.p.n - 1);
    if (!s.pixel || s.pixel.some((v, k) => Math.abs(v - want[k]) > 12)) colourMismatch++;
    if (!s.size || s.size[0] !== 80 || s.size[1] !== 48) problem(`live view: canvas ${JSON.stringify(s.size)}, frames are 80 x 48`);
  }
  // a sample may fall between the label and the picture of one frame: allow a few
  if (colourMismatch > Math.max(2, seen.length * 0.1))
    problem(`live view: ${colourMismatch} of ${seen.length} samples show a colour other than the labelled frame's`);
  const during = seen.filter((s) => !s.ended);
  if (!during.some((s) => s.p.soFar)) problem("live view: no 'so far' frame shown while the prompt ran");
  const totals = during.map((s) => s.p.m);
  if (totals.some((m, k) => k && m < totals[k - 1])) problem(`live view: frames so far went down: ${totals}`);
  if (new Set(totals).size < 2) problem(`live view: the frames did not arrive chunk by chunk: ${[...new Set(totals)]}`);
  if (during.some((s) => s.p.n > s.p.m)) problem("live view: showed a frame not yet received");
  const ns = during.map((s) => s.p.n);
  if (ns.some((n, k) => k && n < ns[k - 1])) problem(`live view: frames not in order while running: ${ns}`);
  const stepMs = 1000 / base.frame_rate; // played at the frame rate: no bursts after a wait
  const bursts = during.filter((s, k) => k && s.p.n - during[k - 1].p.n > Math.ceil((s.t - during[k - 1].t) / stepMs) + 1);
  if (bursts.length) problem(`live view: frames skipped faster than the frame rate at ${bursts.map((s) => s.t)} ms: ${ns}`);
  const after = seen.filter((s) => s.ended && !s.p.soFar);
  if (!after.length || after.some((s) => s.p.m !== 24)) problem(`live view: complete label wrong: ${after.map((s) => s.label).slice(-3)}`);
  const an = after.map((s) => s.p.n);
  if (!an.some((n, k) => k && n < an[k - 1])) problem(`live view: the finished video did not loop: ${an}`);
  if (!run.samples.some((s) => s.visible)) problem("live view: the player's element is never visible");
  if (run.prompt_inputs?.includes(LIVE_WIDGET)) problem("live view: df_live_view sent in the prompt");
  if ((run.widgets_values || []).length !== 9) problem(`live view: widgets_values ${JSON.stringify(run.widgets_values)} (9 widgets)`);
  if (run.node_size && (run.node_size[1] > 900 || run.node_size[0] > 900)) problem(`live view: node grew to ${run.node_size}`);

  // 2. cancelled after 2 of 4 chunks' worth: stops on its frame and says so
  const cancel = await liveRun(page, { ...base, frames: 12, cancel: true, nonce: 2 }, 1500);
  const cs = cancel.samples.map((s) => parseLabel(s.label)).filter((p) => p && p.cancelled);
  r.cancel = { ended: cancel.ended, labels: [...new Set(cancel.samples.map((s) => s.label))] };
  if (!cs.length) problem(`live view: no cancelled label: ${r.cancel.labels.slice(-3)}`);
  else if (new Set(cs.map((p) => p.n)).size !== 1) problem(`live view: kept playing after cancel: ${cs.map((p) => p.n)}`);
  await nodeShot(page, cancel.id, path.join(OUT, "live_view_cancelled.png"));

  // 3. the node removed while frames still come: nothing thrown
  const removed = await liveRun(page, { ...base, frames: 18, nonce: 3 }, 800, true);
  r.removed = { ended: removed.ended, alive: removed.alive };
  if (removed.alive) problem("live view: the node was not removed");
  const newErrors = report.page_errors.slice(errorsBefore);
  if (newErrors.length) problem(`live view: page errors: ${newErrors.join(" | ")}`);
  console.log(`live view: run ${run.ended}, ${seen.length} samples with a frame, labels ${r.run.labels.slice(0, 3).join(" | ")} ... ` +
              `${r.run.labels.slice(-2).join(" | ")}; cancel: ${r.cancel.labels.slice(-1)}`);
}

async function nodeShot(page, id, file, pad = 24) {
  // centre the node at scale 1 and clip the screenshot to it
  const box = await page.evaluate(([id, pad]) => {
    const c = window.app.canvas, n = window.app.graph.getNodeById(id);
    const TH = window.LiteGraph.NODE_TITLE_HEIGHT;
    const W = c.canvas.clientWidth, H = c.canvas.clientHeight;
    const s = Math.min(1, (H - 2 * pad) / (n.size[1] + TH), (W - 2 * pad) / n.size[0]);
    c.ds.scale = s;
    c.ds.offset = [(W / s - n.size[0]) / 2 - n.pos[0], (H / s - n.size[1] - TH) / 2 - n.pos[1] + TH];
    c.setDirty(true, true);
    const r = c.canvas.getBoundingClientRect();
    const x = r.left + (n.pos[0] + c.ds.offset[0]) * s, y = r.top + (n.pos[1] - TH + c.ds.offset[1]) * s;
    return { x: Math.max(0, x - pad), y: Math.max(0, y - pad), width: n.size[0] * s + 2 * pad, height: (n.size[1] + TH) * s + 2 * pad };
  }, [id, pad]);
  await sleep(800);
  await page.screenshot({ path: file, clip: box });
}

// ------------------------------------------------------------------------------------ main
(async () => {
  fs.mkdirSync(OUT, { recursive: true });
  const server = await startServer();
  const url = server.url;
  if (!/^http:\/\/(127\.0\.0\.1|localhost|\[::1\]):\d+$/.test(url)) throw new Error(`not a loopback address: ${url}`);
  console.log(`ComfyUI at ${url} (base dir ${server.base_dir || "?"})`);
  const profile = fs.mkdtempSync("/tmp/df_frontend_chromium_");
  let ctx;
  try {
    ctx = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM, headless: true, viewport: { width: 1600, height: 1000 },
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"],
    });
    const page = ctx.pages()[0] || (await ctx.newPage());
    page.on("pageerror", (e) => {
      const s = String(e.stack || e.message);
      report.page_errors.push(s.split("\n").slice(0, 3).join(" / "));
      if (/dummy_forcing/.test(s)) problem(`page error from web/dummy_forcing.js: ${s}`);
    });
    page.on("console", (m) => {
      if (m.type() === "error" || /\[dummy_forcing\]|dummy_forcing\.js\b/.test(m.text())) report.console_errors.push(`${m.type()}: ${m.text().slice(0, 400)}`);
      if (/\[dummy_forcing\]|dummy_forcing\.js\b/.test(m.text())) problem(`console ${m.type()} mentions dummy_forcing: ${m.text().slice(0, 300)}`);
    });
    page.on("response", (res) => {
      if (res.status() < 400) return;
      report.http_errors.push(`${res.status()} ${res.url()}`);
      if (/dummy_forcing_live/.test(res.url())) problem(`live view sheet not served: ${res.status()} ${res.url()}`);
    });
    await page.route("**/*", (route) => {
      const u = route.request().url();
      if (u.startsWith(url + "/") || u === url || /^(data|blob):/.test(u)) return route.continue();
      report.external_requests.push(u);
      return route.abort();
    });
    await page.goto(url + "/", { waitUntil: "load" });
    await page.waitForFunction(() => window.app?.graph && window.app.extensions?.length, null, { timeout: 120000 });
    await sleep(2500);
    await closeDialogs(page);
    const exts = await page.evaluate(() => window.app.extensions.map((e) => e.name));
    if (!exts.includes("DummyForcing.NodeReport")) problem("extension DummyForcing.NodeReport not registered");
    if (!exts.includes("DummyForcing.LiveView")) problem("extension DummyForcing.LiveView not registered");
    report.frontend_version = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__);
    const defs = await page.evaluate(async () => (await fetch("/api/object_info")).json());
    const templates = await page.evaluate(async () => (await fetch("/api/workflow_templates")).json());
    report.templates = templates;

    if (defs.DFTestLiveView) await liveViewCheck(page);
    else problem("live view check: no DFTestLiveView node on this server");
    for (const name of ONLY === "live_view" ? [] : WORKFLOWS) await checkWorkflow(page, url, name, defs, templates);

    if (ONLY !== "live_view" && defs.DFTestTextContext && (defs.UNETLoader.input.required.unet_name[0] || []).includes("tiny_wan_t2v.safetensors")) {
      await runCheck(page, url, server);
      const vaes = server.real_vaes || [];
      if (vaes.includes("lighttaew2_1.safetensors")) await runCheckLong(page);
      else note("long_video_sink_window run skipped: no tiny lighttaew2_1 (this ComfyUI reads no TAEHV)");
      if (vaes.includes("wan_2.1_vae.safetensors") && defs.ARVideoI2V) await runCheckI2V(page);
      else console.log("image-to-video run skipped: no tiny VAE or no ARVideoI2V (ComfyUI < 0.21)");
    } else {
      console.log("run check skipped: no tiny checkpoint / DFTestTextContext on this server");
    }
    if (ONLY !== "live_view") {
      if (defs.DFTinyModelLoader) await runCheckTinyModel(page);
      else problem("first_try_tiny_model: no DFTinyModelLoader on this server");
    }
  } finally {
    report.problems = problems;
    fs.writeFileSync(path.join(OUT, "report.json"), JSON.stringify(report, null, 1));
    if (ctx) await ctx.close();
    await server.stop();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  console.log(`page errors (all, incl. the frontend's own): ${report.page_errors.length}; external requests blocked: ${report.external_requests.length}`);
  console.log(problems.length ? `${problems.length} problem(s); see ${OUT}/report.json` : `no problems; screenshots in ${OUT}`);
  process.exit(problems.length ? 1 : 0);
})().catch((e) => {
  console.error(e);
  process.exit(2);
});
