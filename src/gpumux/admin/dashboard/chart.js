// gpumux dashboard: a minimal canvas line chart and a switch timeline, written for gpumux
// (no third-party code, no CDN). Owns drawing only; app.js owns the data.
"use strict";

const PALETTE = ["#4e9af1", "#f39c4e", "#5cc48a", "#e2607a", "#b38cf0", "#e8c547", "#4fc9c9", "#b0b0b0"];

function colorFor(index) {
  return PALETTE[index % PALETTE.length];
}

function fitCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 300;
  const height = canvas.clientHeight || 150;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  return { ctx, width, height };
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

// Time series: each series is a list of [unixSeconds, value]; the x axis is the last
// `windowSecs` seconds.
class LineChart {
  constructor(canvas, { format = (v) => v.toFixed(1), windowSecs = 300, maxPoints = 600 } = {}) {
    this.canvas = canvas;
    this.format = format;
    this.windowSecs = windowSecs;
    this.maxPoints = maxPoints;
    this.series = new Map();
  }

  push(name, t, value) {
    if (value === null || value === undefined || Number.isNaN(value)) return;
    if (!this.series.has(name)) this.series.set(name, []);
    const points = this.series.get(name);
    points.push([t, value]);
    if (points.length > this.maxPoints) points.splice(0, points.length - this.maxPoints);
  }

  draw() {
    const { ctx, width, height } = fitCanvas(this.canvas);
    const pad = { left: 56, right: 8, top: 8, bottom: 20 };
    ctx.clearRect(0, 0, width, height);
    const now = Date.now() / 1000;
    const t0 = now - this.windowSecs;
    let top = 0;
    for (const points of this.series.values()) {
      for (const [t, v] of points) if (t >= t0 && v > top) top = v;
    }
    top = niceMax(top * 1.05);
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const x = (t) => pad.left + ((t - t0) / this.windowSecs) * plotW;
    const y = (v) => pad.top + plotH - (v / top) * plotH;

    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#8a94a6";
    ctx.strokeStyle = "#2a3140";
    ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const v = (top * i) / 4;
      const yy = Math.round(y(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(pad.left, yy);
      ctx.lineTo(width - pad.right, yy);
      ctx.stroke();
      ctx.textAlign = "right";
      ctx.fillText(this.format(v), pad.left - 6, yy + 4);
    }
    ctx.textAlign = "center";
    for (let s = 0; s <= this.windowSecs; s += this.windowSecs / 5) {
      ctx.fillText(s === this.windowSecs ? "now" : `-${Math.round(this.windowSecs - s)}s`, x(t0 + s), height - 5);
    }

    let index = 0;
    const legend = [];
    for (const [name, points] of this.series) {
      const color = colorFor(index++);
      legend.push([name, color]);
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      let started = false;
      for (const [t, v] of points) {
        if (t < t0) continue;
        if (started) ctx.lineTo(x(t), y(v));
        else ctx.moveTo(x(t), y(v));
        started = true;
      }
      ctx.stroke();
      const visible = points.filter(([t]) => t >= t0);
      if (visible.length === 1) {
        const [[t, v]] = visible;
        ctx.fillStyle = color;
        ctx.beginPath();
        ctx.arc(x(t), y(v), 3, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
    let lx = pad.left + 6;
    ctx.textAlign = "left";
    for (const [name, color] of legend) {
      ctx.fillStyle = color;
      ctx.fillRect(lx, pad.top + 4, 10, 3);
      ctx.fillStyle = "#c9d1e0";
      ctx.fillText(name, lx + 14, pad.top + 9);
      lx += 24 + ctx.measureText(name).width;
    }
  }
}

// Switches as bars on one row per target model: [start, end) with the outcome's colour.
class SwitchTimeline {
  constructor(canvas, { windowSecs = 600 } = {}) {
    this.canvas = canvas;
    this.windowSecs = windowSecs;
    this.switches = [];
  }

  add(target, endedAt, durationSecs, outcome) {
    this.switches.push({ target, start: endedAt - durationSecs, end: endedAt, outcome });
    if (this.switches.length > 200) this.switches.shift();
  }

  draw(models) {
    const { ctx, width, height } = fitCanvas(this.canvas);
    ctx.clearRect(0, 0, width, height);
    const left = 110;
    const now = Date.now() / 1000;
    const t0 = now - this.windowSecs;
    const rows = models.length || 1;
    const rowH = Math.min(24, (height - 18) / rows);
    ctx.font = "11px system-ui, sans-serif";
    models.forEach((model, i) => {
      const yy = 4 + i * rowH;
      ctx.fillStyle = "#c9d1e0";
      ctx.textAlign = "right";
      ctx.fillText(model, left - 8, yy + rowH / 2 + 4);
      ctx.fillStyle = "#1d2330";
      ctx.fillRect(left, yy + 2, width - left - 8, rowH - 4);
    });
    const x = (t) => left + ((t - t0) / this.windowSecs) * (width - left - 8);
    for (const s of this.switches) {
      const row = models.indexOf(s.target);
      if (row < 0 || s.end < t0) continue;
      const yy = 4 + row * rowH;
      const x0 = Math.max(left, x(s.start));
      ctx.fillStyle = s.outcome === "ok" ? "#5cc48a" : s.outcome === "failed" ? "#e2607a" : "#e8c547";
      ctx.fillRect(x0, yy + 3, Math.max(3, x(s.end) - x0), rowH - 6);
    }
    ctx.fillStyle = "#8a94a6";
    ctx.textAlign = "center";
    for (let s = 0; s <= this.windowSecs; s += this.windowSecs / 5) {
      ctx.fillText(s === this.windowSecs ? "now" : `-${Math.round((this.windowSecs - s) / 60)}m`, x(t0 + s), height - 3);
    }
  }
}

window.GpumuxCharts = { LineChart, SwitchTimeline, colorFor };
