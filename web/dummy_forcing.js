// Dummy Forcing for ComfyUI: show the text a node reports (Cache Stats' table, Profile Heads'
// summary) in a read-only multiline box on the node after it ran. The images (plots, head map)
// are shown by ComfyUI itself from the same `ui` message.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const NODES = new Set(["CacheStats", "ProfileHeads"]);
const WIDGET_NAME = "df_report";

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
  if (widget.options) widget.options.serialize = false;
  const el = widget.element ?? widget.inputEl;
  if (el) {
    el.readOnly = true;
    el.style.fontFamily = "monospace";
    el.style.fontSize = "11px";
    el.style.whiteSpace = "pre";
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
