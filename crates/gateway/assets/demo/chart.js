// A small line chart on a <canvas>, for the demo dashboard: no dependencies.
// The canvas is split into one horizontal band per series ("small multiples"), each with
// its own scale from 0 to the largest value shown, its label and its latest value, so
// figures of different units (connections, messages/s, milliseconds) share one canvas.

export class LineChart {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{series: {key: string, label: string, color: string, unit?: string}[],
   *          maxPoints?: number, background?: string}} options
   */
  constructor(canvas, { series, maxPoints = 120, background = "#ffffff" }) {
    this.canvas = canvas;
    this.series = series;
    this.maxPoints = maxPoints;
    this.background = background;
    this.points = []; // one object per sample: {key: value}
  }

  /** Adds a sample (an object with a number per series key) and redraws. */
  push(sample) {
    this.points.push(sample);
    if (this.points.length > this.maxPoints) this.points.shift();
    this.draw();
  }

  /** Draws everything again, at the canvas's displayed size and the device's pixel ratio. */
  draw() {
    const { canvas } = this;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || canvas.width;
    const height = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.fillStyle = this.background;
    ctx.fillRect(0, 0, width, height);

    const band = height / this.series.length;
    this.series.forEach((s, i) => this.drawBand(ctx, s, i * band, width, band));
  }

  drawBand(ctx, s, top, width, band) {
    const pad = { left: 8, right: 8, top: 20, bottom: 6 };
    const plotW = width - pad.left - pad.right;
    const plotH = band - pad.top - pad.bottom;
    const values = this.points.map((p) => Number(p[s.key]) || 0);
    const max = niceMax(1.1 * Math.max(0, ...values)); // headroom above the largest value

    // Frame, label, scale and latest value.
    ctx.strokeStyle = "#dde1e8";
    ctx.lineWidth = 1;
    ctx.strokeRect(pad.left + 0.5, top + pad.top + 0.5, plotW - 1, plotH - 1);
    ctx.font = "12px system-ui, sans-serif";
    ctx.textBaseline = "alphabetic";
    ctx.fillStyle = s.color;
    ctx.textAlign = "left";
    ctx.fillText(s.label, pad.left, top + pad.top - 6);
    ctx.fillStyle = "#6b7385";
    ctx.textAlign = "right";
    const last = values.length ? format(values[values.length - 1]) : "–";
    ctx.fillText(`${last}${s.unit ? " " + s.unit : ""}  (max scale ${format(max)})`, width - pad.right, top + pad.top - 6);

    if (values.length < 2) return;
    const step = plotW / (this.maxPoints - 1);
    const x0 = pad.left + plotW - step * (values.length - 1);
    const y = (v) => top + pad.top + plotH - (v / max) * (plotH - 4) - 2;
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    ctx.beginPath();
    values.forEach((v, j) => (j ? ctx.lineTo(x0 + j * step, y(v)) : ctx.moveTo(x0, y(v))));
    ctx.stroke();
  }
}

/** A round upper bound for the scale (1, 2 or 5 times a power of ten), at least 1. */
function niceMax(v) {
  if (v <= 1) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function format(v) {
  return Number.isInteger(v) ? String(v) : v.toFixed(v < 10 ? 2 : 1);
}
