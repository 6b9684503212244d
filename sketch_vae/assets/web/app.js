// sketch_vae, draw together: the page half of experiments/serve.py.
//
// The person draws on a canvas of canvas_size x canvas_size logical units
// ("canvas px", whatever its size on screen); strokes go to the server as
// [[x, y], ...] per stroke, with `scale` = model pixels per canvas px. The
// server simplifies them as the training data was (sketch_vae/canvas.py) and
// answers with drawings in canvas px: the first `given_strokes` strokes of a
// completion are the drawing as the model read it, the rest the model's.
// Nothing is loaded from anywhere but this server.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const INK = '#111111';
  const MODEL_INK = '#d62728';
  const FAINT = '#c8c8c8';
  const POINTS_PER_SECOND = 150; // how fast the model's strokes are drawn
  // ?seed=N in the address makes every answer reproducible (the server draws one otherwise).
  const seedParam = new URLSearchParams(window.location.search).get('seed');
  const SEED = seedParam !== null && /^[0-9]{1,9}$/.test(seedParam) ? Number(seedParam) : null;
  const LINE = 3; // stroke width in canvas px

  const state = {
    config: null, // GET /api/models
    strokes: [], // finished strokes, [[x, y], ...] in canvas px
    current: null, // {pointerId, points} while a pointer draws
    storedA: null, // drawing A for interpolation
    busy: false,
    lastResponse: null,
    panels: [],
    generation: 0, // bumped by each new result set, to stop stale animations
    errors: [],
  };
  window.addEventListener('error', (e) => state.errors.push(String(e.message)));
  window.addEventListener('unhandledrejection', (e) => state.errors.push(String(e.reason)));

  const pad = $('pad');
  const results = $('results');
  let size = 480;

  // ---------------------------------------------------------------- drawing

  function prepare(canvas, width, height) {
    // A backing store at the device's pixel ratio, drawn in logical units.
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.lineCap = 'round';
    ctx.lineJoin = 'round';
    return ctx;
  }

  function strokeLine(ctx, line, color, width, count = line.length) {
    if (count <= 0) return;
    ctx.strokeStyle = color;
    ctx.lineWidth = width;
    ctx.beginPath();
    ctx.moveTo(line[0][0], line[0][1]);
    if (count === 1) ctx.lineTo(line[0][0] + 0.01, line[0][1]); // a dot, under round caps
    for (let i = 1; i < count; i++) ctx.lineTo(line[i][0], line[i][1]);
    ctx.stroke();
  }

  function clearTo(ctx) {
    ctx.save();
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = '#ffffff';
    ctx.fillRect(0, 0, ctx.canvas.width, ctx.canvas.height);
    ctx.restore();
  }

  let padCtx = prepare(pad, size, size);

  function redrawPad() {
    clearTo(padCtx);
    for (const line of state.strokes) strokeLine(padCtx, line, INK, LINE);
    if (state.current) strokeLine(padCtx, state.current.points, INK, LINE);
    const points = state.strokes.reduce((n, s) => n + s.length, 0);
    $('drawing-info').textContent = state.strokes.length
      ? `${state.strokes.length} stroke${state.strokes.length > 1 ? 's' : ''}, ${points} points`
      : 'Draw here with a mouse, pen or finger.';
    updateButtons();
  }

  function canvasPoint(e) {
    const r = pad.getBoundingClientRect();
    const x = ((e.clientX - r.left) * size) / r.width;
    const y = ((e.clientY - r.top) * size) / r.height;
    return [Math.round(x * 100) / 100, Math.round(y * 100) / 100];
  }

  function addPoint(e) {
    const p = canvasPoint(e);
    const pts = state.current.points;
    const last = pts[pts.length - 1];
    if (last[0] !== p[0] || last[1] !== p[1]) pts.push(p);
  }

  pad.addEventListener('pointerdown', (e) => {
    if (state.current || !e.isPrimary || (e.pointerType === 'mouse' && e.button !== 0)) return;
    e.preventDefault();
    pad.setPointerCapture(e.pointerId);
    state.current = { pointerId: e.pointerId, points: [canvasPoint(e)] };
    redrawPad();
  });
  pad.addEventListener('pointermove', (e) => {
    if (!state.current || e.pointerId !== state.current.pointerId) return;
    const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
    for (const ev of events.length ? events : [e]) addPoint(ev);
    redrawPad();
  });
  function endStroke(e) {
    if (!state.current || e.pointerId !== state.current.pointerId) return;
    if (e.type === 'pointerup') addPoint(e);
    state.strokes.push(state.current.points);
    state.current = null;
    redrawPad();
  }
  for (const type of ['pointerup', 'pointercancel', 'lostpointercapture']) {
    pad.addEventListener(type, endStroke);
  }

  $('undo').addEventListener('click', () => { state.strokes.pop(); redrawPad(); });
  $('clear').addEventListener('click', () => { state.strokes = []; redrawPad(); });
  document.addEventListener('keydown', (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === 'z') { state.strokes.pop(); redrawPad(); }
  });
  $('keep-a').addEventListener('click', () => {
    state.storedA = state.strokes;
    state.strokes = [];
    drawFitted($('thumb-a'), 72, [{ lines: state.storedA, color: INK }], 1.5);
    $('stored-a').hidden = false;
    setStatus('Kept as A. Now draw B, then "Interpolate A → B".');
    redrawPad();
  });
  $('forget-a').addEventListener('click', () => {
    state.storedA = null;
    $('stored-a').hidden = true;
    updateButtons();
  });

  // --------------------------------------------------------------- controls

  function model() {
    return state.config.models.find((m) => m.id === $('model').value);
  }

  function scale() {
    const [low, high] = model().scale_range;
    const s = model().default_scale * 2 ** Number($('scale').value);
    return Math.min(high, Math.max(low, s));
  }

  function updateControls() {
    const m = model();
    const vae = m.kind === 'vae';
    $('model-info').textContent =
      `${vae ? 'VAE' : 'decoder-only'} (${m.source}), ${m.cell.toUpperCase()} ${m.dec_rnn_size}` +
      `${vae ? `, z ${m.z_size}` : ''}, up to ${m.max_seq_len} points, scale factor ` +
      `${m.scale_factor.toFixed(1)}, step ${m.step}`;
    $('temperature-value').textContent = Number($('temperature').value).toFixed(2);
    $('count-value').textContent = $('count').value;
    const mult = 2 ** Number($('scale').value);
    $('scale-value').textContent = `×${mult.toFixed(2)} (1 canvas px = ${scale().toFixed(2)} model px)`;
    $('latent-row').hidden = !vae;
    updateButtons();
  }

  function updateButtons() {
    if (!state.config) return;
    const vae = model().kind === 'vae';
    const drawn = state.strokes.length > 0;
    $('complete').disabled = state.busy || !drawn;
    $('reconstruct').disabled = state.busy || !drawn || !vae;
    $('interpolate').disabled = state.busy || !drawn || !vae || !state.storedA;
    $('sample').disabled = state.busy;
    $('reconstruct').title = vae ? '' : 'Needs a VAE model (one with an encoder)';
    $('interpolate').title = vae ? 'Between drawing A (kept) and your current drawing' :
      'Needs a VAE model (one with an encoder)';
  }

  for (const id of ['model', 'temperature', 'count', 'scale']) {
    $(id).addEventListener('input', updateControls);
  }

  function setStatus(text, kind = '') {
    $('status').textContent = text;
    $('status').className = kind;
    $('status').title = '';
  }

  // ---------------------------------------------------------------- the API

  async function callApi(endpoint, payload) {
    const res = await fetch(`api/${endpoint}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(payload),
    });
    let data = null;
    try { data = await res.json(); } catch (err) { data = null; }
    if (!res.ok) throw new Error((data && data.error) || `the server answered ${res.status}`);
    return data;
  }

  const ACTIONS = {
    complete: { title: 'Endings', noun: 'endings' },
    reconstruct: { title: 'Mimicked', noun: 'reconstructions' },
    interpolate: { title: 'From A to B', noun: 'steps' },
    sample: { title: 'From nothing', noun: 'drawings' },
  };

  async function run(kind) {
    if (state.busy) return;
    const m = model();
    const count = Number($('count').value);
    const payload = { model: m.id, temperature: Number($('temperature').value), count, scale: scale() };
    if (SEED !== null) payload.seed = SEED;
    if (kind === 'complete' || kind === 'reconstruct') payload.strokes = state.strokes;
    if (kind === 'complete' && m.kind === 'vae') payload.z = $('latent').value;
    if (kind === 'interpolate') {
      Object.assign(payload, { strokes_a: state.storedA, strokes_b: state.strokes });
      payload.count = Math.max(2, count);
    }
    state.busy = true;
    updateButtons();
    results.dataset.state = 'loading';
    setStatus(`Asking ${m.id}…`);
    const started = performance.now();
    try {
      const data = await callApi(kind, payload);
      state.lastResponse = Object.assign({ kind }, data);
      const seconds = ((performance.now() - started) / 1000).toFixed(2);
      const read = data.given ? ` · it read your drawing as ${countPoints(data.given)} points` : '';
      setStatus(`${data.results.length} ${ACTIONS[kind].noun} from ${m.id}${read}`);
      // The time goes in the tooltip, so that the page itself is the same on every run.
      $('status').title = `answered in ${seconds} s (seed ${data.seed})`;
      showResults(kind, data);
    } catch (err) {
      results.dataset.state = 'error';
      setStatus(err.message, 'error');
    } finally {
      state.busy = false;
      updateButtons();
    }
  }

  function countPoints(lines) {
    return lines.reduce((n, line) => n + line.length, 0);
  }

  for (const kind of Object.keys(ACTIONS)) $(kind).addEventListener('click', () => run(kind));

  // ---------------------------------------------------------------- results

  function bounds(lines, start = null) {
    const b = start ? { ...start } : { x0: Infinity, y0: Infinity, x1: -Infinity, y1: -Infinity };
    for (const line of lines) {
      for (const [x, y] of line) {
        b.x0 = Math.min(b.x0, x); b.y0 = Math.min(b.y0, y);
        b.x1 = Math.max(b.x1, x); b.y1 = Math.max(b.y1, y);
      }
    }
    return b;
  }

  function fit(b, side, margin) {
    // One uniform scale and an offset that centre the bounds in a side x side square.
    const w = Math.max(b.x1 - b.x0, 1e-6);
    const h = Math.max(b.y1 - b.y0, 1e-6);
    const k = Math.min((side - 2 * margin) / w, (side - 2 * margin) / h, 4);
    return { k, dx: side / 2 - (k * (b.x0 + b.x1)) / 2, dy: side / 2 - (k * (b.y0 + b.y1)) / 2 };
  }

  function place(lines, t) {
    return lines.map((line) => line.map(([x, y]) => [x * t.k + t.dx, y * t.k + t.dy]));
  }

  function drawFitted(canvas, side, layers, width, t = null) {
    const ctx = prepare(canvas, side, side);
    clearTo(ctx);
    t = t || fit(bounds(layers.flatMap((l) => l.lines)), side, 8);
    for (const layer of layers) {
      for (const line of place(layer.lines, t)) strokeLine(ctx, line, layer.color, width);
    }
    return ctx;
  }

  function showResults(kind, data) {
    const generation = ++state.generation;
    const side = parseFloat(getComputedStyle(document.documentElement).getPropertyValue('--panel')) || 200;
    $('results-title').textContent = `${ACTIONS[kind].title} (${data.model}, temperature ${data.temperature.toFixed(2)})`;
    results.replaceChildren();
    // Endings share one view, so your strokes sit at the same place in each of them.
    const shared = kind === 'complete' ? bounds(data.results.flatMap((r) => r.strokes)) : null;
    state.panels = data.results.map((r, i) => {
      const given = r.strokes.slice(0, r.given_strokes);
      const drawn = r.strokes.slice(r.given_strokes);
      const faint = kind === 'reconstruct' ? data.given : [];
      const label = kind === 'interpolate' ? `t = ${r.t.toFixed(2)}` : `${i + 1}`;
      const t = fit(shared || bounds(r.strokes.concat(faint)), side, 10);
      const fig = document.createElement('figure');
      fig.className = 'result';
      fig.dataset.index = String(i);
      fig.dataset.givenStrokes = String(r.given_strokes);
      fig.dataset.strokes = JSON.stringify(r.strokes);
      fig.dataset.done = 'false';
      const canvas = document.createElement('canvas');
      canvas.setAttribute('aria-label', `${ACTIONS[kind].noun} ${label}`);
      const caption = document.createElement('figcaption');
      const text = document.createElement('span');
      text.textContent = `${label}${r.ended ? '' : ' (cut at the limit)'}`;
      const button = document.createElement('button');
      button.type = 'button';
      button.textContent = 'SVG';
      button.title = 'Download this drawing as SVG';
      const panel = { kind, data, index: i, fig, side, t, faint, given, drawn };
      panel.ctx = prepare(canvas, side, side);
      button.addEventListener('click', () => download(`sketch_vae-${data.model}-${kind}-${i + 1}.svg`, toSvg(panel)));
      caption.append(text, button);
      fig.append(canvas, caption);
      results.append(fig);
      panel.total = countPoints(drawn);
      return panel;
    });
    animate(generation);
  }

  function drawPanel(p, shown) {
    const ctx = p.ctx;
    clearTo(ctx);
    const width = Math.max(1.5, Math.min(3, LINE * p.t.k));
    for (const line of place(p.faint, p.t)) strokeLine(ctx, line, FAINT, width);
    for (const line of place(p.given, p.t)) strokeLine(ctx, line, INK, width);
    let left = shown;
    for (const line of place(p.drawn, p.t)) {
      if (left <= 0) break;
      strokeLine(ctx, line, MODEL_INK, width, Math.min(left, line.length));
      left -= line.length;
    }
  }

  function animate(generation) {
    // The model's strokes appear point by point, stroke after stroke, in every panel at once.
    const reduce = window.matchMedia('(prefers-reduced-motion: reduce)').matches;
    const start = performance.now();
    results.dataset.state = 'animating';
    const frame = (now) => {
      if (generation !== state.generation) return;
      const shown = reduce ? Infinity : Math.floor(((now - start) / 1000) * POINTS_PER_SECOND);
      let finished = true;
      for (const p of state.panels) {
        if (p.fig.dataset.done === 'true') continue;
        drawPanel(p, shown);
        if (shown >= p.total) p.fig.dataset.done = 'true';
        else finished = false;
      }
      if (finished) results.dataset.state = 'done';
      else requestAnimationFrame(frame);
    };
    requestAnimationFrame(frame);
  }

  // -------------------------------------------------------------------- SVG

  function num(v) {
    return String(Math.round(v * 100) / 100);
  }

  function toSvg(p) {
    const layers = [[p.faint, FAINT], [p.given, INK], [p.drawn, MODEL_INK]];
    const b = bounds(layers.flatMap(([lines]) => lines));
    const m = 10;
    const w = Math.ceil(b.x1 - b.x0 + 2 * m);
    const h = Math.ceil(b.y1 - b.y0 + 2 * m);
    const paths = [];
    for (const [lines, color] of layers) {
      for (const line of lines) {
        const pts = line.length === 1 ? [line[0], line[0]] : line;
        const d = 'M ' + pts.map(([x, y]) => `${num(x - b.x0 + m)} ${num(y - b.y0 + m)}`).join(' L ');
        paths.push(`<path d="${d}" stroke="${color}"/>`);
      }
    }
    // The model id is a folder name: it may hold characters XML reserves.
    const title = `sketch_vae ${p.kind}, model ${p.data.model}, temperature ${p.data.temperature}, seed ${p.data.seed}`
      .replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
    return [
      '<?xml version="1.0" encoding="UTF-8"?>',
      `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}">`,
      `<title>${title}</title>`,
      `<rect width="${w}" height="${h}" fill="white"/>`,
      `<g fill="none" stroke-width="${LINE}" stroke-linecap="round" stroke-linejoin="round">`,
      ...paths,
      '</g>',
      '</svg>',
      '',
    ].join('\n');
  }

  function download(name, text) {
    const url = URL.createObjectURL(new Blob([text], { type: 'image/svg+xml' }));
    const a = document.createElement('a');
    a.href = url;
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // ------------------------------------------------------------------ start

  // For tests and the curious: the drawing, the last answer, each panel's SVG.
  window.sketchApp = {
    strokes: () => JSON.parse(JSON.stringify(state.strokes)),
    lastResponse: () => state.lastResponse,
    svg: (i) => (state.panels[i] ? toSvg(state.panels[i]) : null),
    errors: state.errors,
  };

  async function start() {
    try {
      const res = await fetch('api/models');
      if (!res.ok) throw new Error(`the server answered ${res.status}`);
      state.config = await res.json();
    } catch (err) {
      setStatus(`Cannot reach the server: ${err.message}`, 'error');
      return;
    }
    size = state.config.canvas_size;
    padCtx = prepare(pad, size, size);
    const select = $('model');
    for (const m of state.config.models) {
      const option = document.createElement('option');
      option.value = m.id;
      option.textContent = `${m.id} (${m.kind === 'vae' ? 'VAE' : 'decoder-only'})`;
      select.append(option);
    }
    select.value = state.config.default;
    $('count').max = String(state.config.limits.max_count);
    redrawPad();
    updateControls();
    document.body.dataset.ready = 'true';
  }

  start();
})();
