// Visage web extension: the face picker and the similarity read-out.
//
// * Analyze Faces (VisageAnalyzeFaces): after a run its UI output carries `visage_faces` (per image: a list
//   of {index, bbox: [x1, y1, x2, y2], score, selected}) and `visage_image_size` (per image [H, W]) next to
//   the preview image. Each face's box and index are drawn over the preview; clicking inside a box sets the
//   node's `face_index` widget to that face (a plain widget value: saved in the workflow, and the same value
//   a headless run sets with --set).
// * Face Similarity (VisageFaceSimilarity): `visage_similarity` (per image: list of {face, score}) is shown
//   on the node.
//
// Widgets are found by name. The preview itself is drawn by the frontend; we wrap that preview widget's
// draw (to learn where the image landed and draw on top of it) and its pointer-down (to pick a face).
// Nothing is logged to the console.
import { app } from "../../scripts/app.js";

const EXTENSION_NAME = "visage.faces";
const REGISTERED = Symbol.for("visage.faces.registered");
const PREVIEW_WIDGET = "$$canvas-image-preview";
const SELECTED = "#39d353";
const CANDIDATE = "#ffb020";
const PICKED = "#3aa0ff";

function findWidget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

function state(node) {
  if (!node.__visage) node.__visage = { faces: null, sizes: null, rects: [], similarity: null };
  return node.__visage;
}

// ------------------------------------------------------------------------------------------ face picker

function facesFor(node, imageIndex) {
  const st = state(node);
  const faces = st.faces?.[imageIndex];
  const size = st.sizes?.[imageIndex];
  if (!Array.isArray(faces) || !Array.isArray(size) || size.length < 2) return null;
  return { faces, H: Number(size[0]), W: Number(size[1]) };
}

function faceRect(rect, f, H, W) {
  const sx = rect.w / W;
  const sy = rect.h / H;
  const [x1, y1, x2, y2] = f.bbox;
  return { x: rect.x + x1 * sx, y: rect.y + y1 * sy, w: (x2 - x1) * sx, h: (y2 - y1) * sy };
}

function drawFaces(ctx, node) {
  const st = state(node);
  if (!st.faces) return;
  const wanted = findWidget(node, "face_index")?.value;
  // the face under the pointer (single-image view) is tinted, and the cursor says it can be clicked
  const mouse = app.canvas?.graph_mouse;
  const hovered = mouse ? faceAt(node, mouse[0] - node.pos[0], mouse[1] - node.pos[1]) : null;
  if (hovered && app.canvas?.canvas) app.canvas.canvas.style.cursor = "pointer";
  ctx.save();
  for (const rect of st.rects) {
    const info = facesFor(node, rect.i);
    if (!info || !(info.W > 0) || !(info.H > 0)) continue;
    for (const f of info.faces) {
      if (!Array.isArray(f?.bbox) || f.bbox.length < 4) continue;
      const r = faceRect(rect, f, info.H, info.W);
      const picked = typeof wanted === "number" && wanted >= 0 && f.index === wanted;
      const colour = picked ? PICKED : f.selected ? SELECTED : CANDIDATE;
      ctx.lineWidth = picked ? 3 : 2;
      ctx.strokeStyle = colour;
      ctx.strokeRect(r.x, r.y, r.w, r.h);
      if (hovered && hovered.index === f.index && rect === st.rects[0] && st.rects.length === 1) {
        ctx.globalAlpha = 0.25;
        ctx.fillStyle = colour;
        ctx.fillRect(r.x, r.y, r.w, r.h);
        ctx.globalAlpha = 1;
      }
      const label = String(f.index);
      ctx.font = "bold 12px sans-serif";
      const tw = ctx.measureText(label).width + 8;
      ctx.fillStyle = colour;
      ctx.fillRect(r.x, r.y - 16 < rect.y ? r.y : r.y - 16, tw, 16);
      ctx.fillStyle = "#000";
      ctx.textAlign = "left";
      ctx.textBaseline = "middle";
      ctx.fillText(label, r.x + 4, (r.y - 16 < rect.y ? r.y : r.y - 16) + 8);
    }
  }
  ctx.restore();
}

// the face under a point in node coordinates (single-image view only: in the grid view a click picks
// the image, as the frontend does)
function faceAt(node, x, y) {
  const st = state(node);
  if (st.rects.length !== 1) return null;
  const rect = st.rects[0];
  const info = facesFor(node, rect.i);
  if (!info) return null;
  let best = null;
  for (const f of info.faces) {
    if (!Array.isArray(f?.bbox)) continue;
    const r = faceRect(rect, f, info.H, info.W);
    if (x >= r.x && x <= r.x + r.w && y >= r.y && y <= r.y + r.h) {
      // nested boxes: the smallest one under the pointer wins
      if (!best || r.w * r.h < best.area) best = { face: f, area: r.w * r.h };
    }
  }
  return best?.face ?? null;
}

function pickFace(node, face) {
  const widget = findWidget(node, "face_index");
  if (!widget) return;
  const value = Number(face.index);
  widget.value = value;
  widget.callback?.(value, app.canvas, node);
  node.setDirtyCanvas?.(true, true);
  app.graph?.setDirtyCanvas?.(true, true);
}

function wrapPreviewWidget(node) {
  const widget = node.widgets?.find((w) => w.name === PREVIEW_WIDGET);
  if (!widget || widget.__visageWrapped) return;
  widget.__visageWrapped = true;

  const draw = widget.drawWidget;
  widget.drawWidget = function (ctx, ...rest) {
    // learn where the frontend puts each preview image by watching its drawImage calls
    const imgs = node.imgs ?? [];
    const rects = [];
    const own = Object.prototype.hasOwnProperty.call(ctx, "drawImage");
    const previous = ctx.drawImage;
    ctx.drawImage = function (img, ...args) {
      const i = imgs.indexOf(img);
      if (i >= 0 && args.length === 4) rects.push({ i, x: args[0], y: args[1], w: args[2], h: args[3] });
      return previous.call(this, img, ...args);
    };
    try {
      return draw.call(this, ctx, ...rest);
    } finally {
      if (own) ctx.drawImage = previous;
      else delete ctx.drawImage;
      state(node).rects = rects;
      drawFaces(ctx, node);
    }
  };

  const down = widget.onPointerDown;
  widget.onPointerDown = function (pointer, n, canvas, ...rest) {
    const handled = down ? down.call(this, pointer, n, canvas, ...rest) : false;
    const mouse = (canvas ?? app.canvas)?.graph_mouse;
    if (mouse) {
      const face = faceAt(node, mouse[0] - node.pos[0], mouse[1] - node.pos[1]);
      if (face) {
        pointer.onClick = () => pickFace(node, face);
        return true;
      }
    }
    return handled;
  };
}

function setupAnalyzeFaces(nodeType) {
  const onExecuted = nodeType.prototype.onExecuted;
  nodeType.prototype.onExecuted = function (output) {
    const r = onExecuted?.apply(this, arguments);
    const st = state(this);
    st.faces = Array.isArray(output?.visage_faces) ? output.visage_faces : null;
    st.sizes = Array.isArray(output?.visage_image_size) ? output.visage_image_size : null;
    this.setDirtyCanvas?.(true, true);
    return r;
  };
  // called every frame before the widgets are drawn: wrap the preview widget once it exists
  const onDrawForeground = nodeType.prototype.onDrawForeground;
  nodeType.prototype.onDrawForeground = function (ctx) {
    const r = onDrawForeground?.apply(this, arguments);
    if (!this.flags?.collapsed) wrapPreviewWidget(this);
    return r;
  };
}

// ------------------------------------------------------------------------------------------ similarity

function similarityLines(per) {
  const lines = [];
  per.forEach((faces, i) => {
    if (!Array.isArray(faces) || faces.length === 0) {
      lines.push(`image ${i}: no face`);
      return;
    }
    for (const f of faces) lines.push(`image ${i} · face ${f.face}: ${Number(f.score).toFixed(3)}`);
  });
  return lines;
}

function setupSimilarity(nodeType) {
  const onExecuted = nodeType.prototype.onExecuted;
  nodeType.prototype.onExecuted = function (output) {
    const r = onExecuted?.apply(this, arguments);
    const per = output?.visage_similarity;
    const st = state(this);
    st.similarity = Array.isArray(per) ? similarityLines(per) : null;
    if (st.similarity) {
      const need = this.__visageTop() + st.similarity.length * 16 + 10;
      if (this.size[1] < need || this.size[0] < 220) this.setSize([Math.max(this.size[0], 220), Math.max(this.size[1], need)]);
    }
    this.setDirtyCanvas?.(true, true);
    return r;
  };
  nodeType.prototype.__visageTop = function () {
    const slots = Math.max(this.inputs?.length ?? 0, this.outputs?.length ?? 0);
    const slotH = globalThis.LiteGraph?.NODE_SLOT_HEIGHT ?? 20;
    return slots * slotH + 14;
  };
  const onDrawForeground = nodeType.prototype.onDrawForeground;
  nodeType.prototype.onDrawForeground = function (ctx) {
    const r = onDrawForeground?.apply(this, arguments);
    const lines = state(this).similarity;
    if (!lines || this.flags?.collapsed) return r;
    ctx.save();
    ctx.font = "12px monospace";
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    let y = this.__visageTop();
    for (const line of lines) {
      const score = parseFloat(line.split(": ").pop());
      ctx.fillStyle = Number.isFinite(score) ? (score >= 0.4 ? SELECTED : "#e6e6e6") : "#999";
      ctx.fillText(line, 10, y);
      y += 16;
    }
    ctx.restore();
    return r;
  };
}

// ------------------------------------------------------------------------------------------ register

if (!window[REGISTERED]) {
  window[REGISTERED] = true;
  app.registerExtension({
    name: EXTENSION_NAME,
    async beforeRegisterNodeDef(nodeType, nodeData) {
      if (nodeData?.name === "VisageAnalyzeFaces") setupAnalyzeFaces(nodeType);
      else if (nodeData?.name === "VisageFaceSimilarity") setupSimilarity(nodeType);
    },
  });
}
