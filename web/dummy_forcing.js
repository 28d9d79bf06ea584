// Dummy Forcing for ComfyUI: show the text a node reports (Cache Stats' table, Profile Heads'
// summary) in a read-only multiline box on the node after it ran. The images (plots, head map)
// are shown by ComfyUI itself from the same `ui` message.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const NODES = new Set(["CacheStats", "ProfileHeads", "DFTinyTextEncode"]);
const WIDGET_NAME = "df_report";
const FONT_PX = 11;
const LINE_PX = 14;
const MAX_LINES = 20; // taller reports scroll inside the box
const SIDE_PX = 44; // node width minus the text's usable width (widget margins, padding, scrollbar)

let charPx = 0;
function charWidth() {
  if (!charPx) {
    try {
      const ctx = document.createElement("canvas").getContext("2d");
      ctx.font = `${FONT_PX}px monospace`;
      charPx = ctx.measureText("0123456789").width / 10;
    } catch {
      charPx = FONT_PX * 0.6; // no DOM: a typical monospace advance
    }
  }
  return charPx;
}

// Lines the box shows for one line of text wrapped at `cols` characters, as the textarea's
// pre-wrap + overflow-wrap do: at spaces (trailing spaces hang), long words broken anywhere.
function wrappedLines(line, cols) {
  let lines = 1;
  let col = 0;
  for (const word of line.split(/(?<= )/)) {
    const ink = word.trimEnd().length;
    if (col > 0 && col + ink > cols) {
      lines++;
      col = 0;
    }
    const breaks = Math.max(0, Math.ceil(ink / cols) - 1);
    lines += breaks;
    col += ink - breaks * cols + (word.length - ink);
  }
  return lines;
}

// Height of the report's box at this node width: all its lines, or at most maxLines (then it scrolls).
function reportHeight(text, nodeWidth, maxLines = Infinity) {
  const cols = Math.max(10, Math.floor((nodeWidth - SIDE_PX) / charWidth()));
  let lines = 0;
  for (const line of String(text ?? "").split("\n")) lines += wrappedLines(line, cols);
  return Math.min(lines, maxLines) * LINE_PX + 12;
}

function messageText(message) {
  const t = message?.text;
  if (t == null) return "";
  return Array.isArray(t) ? t.map(String).join("\n") : String(t);
}

function reportWidget(node) {
  let widget = node.widgets?.find((w) => w.name === WIDGET_NAME);
  if (widget) return widget;
  widget = ComfyWidgets.STRING(node, WIDGET_NAME, ["STRING", { multiline: true }], app).widget;
  widget.serialize = false; // not part of widgets_values or the prompt
  widget.options ??= {};
  widget.options.serialize = false;
  // the frontend lays out DOM widgets between a min and a max height (the box is that less a
  // margin on each side): at least the text's first MAX_LINES lines, at most all of it; the
  // node's images get the rest
  const height = (maxLines) => reportHeight(widget.value, node.size?.[0] ?? 420, maxLines) + 2 * (widget.margin ?? 10);
  widget.options.getMinHeight = () => height(MAX_LINES);
  widget.options.getMaxHeight = () => height(Infinity);
  const el = widget.element ?? widget.inputEl;
  if (el) {
    el.readOnly = true;
    el.style.fontFamily = "monospace";
    el.style.fontSize = `${FONT_PX}px`;
    el.style.lineHeight = `${LINE_PX}px`;
    // wrap long lines: ComfyUI's textarea hides horizontal overflow (no horizontal scrolling)
    el.style.whiteSpace = "pre-wrap";
    el.style.overflowWrap = "anywhere";
    el.style.opacity = "0.85";
  }
  return widget;
}

function showText(node, text) {
  try {
    const widget = reportWidget(node);
    widget.value = text;
    const el = widget.element ?? widget.inputEl;
    if (el) el.value = text;
    requestAnimationFrame(() => {
      const size = node.computeSize();
      size[0] = Math.max(size[0], node.size[0], 420);
      size[1] = Math.max(size[1], node.size[1]);
      node.setSize(size);
      node.setDirtyCanvas?.(true, true);
    });
  } catch (err) {
    console.warn("[dummy_forcing] could not show the node's text", err);
  }
}

app.registerExtension({
  name: "DummyForcing.NodeReport",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES.has(nodeData?.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const r = onExecuted?.apply(this, arguments);
      const text = messageText(message);
      if (text) showText(this, text);
      return r;
    };
  },
});
