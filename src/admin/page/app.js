// stagegate's status page. It reads the admin API every POLL_MS (polling: each
// view is a few small GETs, and redraws only when an answer changed), and makes
// changes through the same API with the person's reason. Everything shown is
// put in the page as text (textContent), never as markup: answers and reasons
// come from models and people, not from this page.
'use strict';

(function () {
  const POLL_MS = 2000;
  const TOKEN_KEY = 'stagegate.admin-token';
  const SVG_NS = "http://www.w3.org/2000/svg";
  const HISTORY_LIMIT = 200;
  const STAGES = ['production', 'staging', 'archived'];

  // ---------------------------------------------------------------- diffing

  // Words, runs of punctuation and runs of whitespace, so a diff marks whole words.
  function tokens(text) {
    return text.match(/\s+|[\p{L}\p{N}_.-]+|[^\s\p{L}\p{N}_.-]+/gu) || [];
  }

  // Token-level longest common subsequence of two texts: each side as segments
  // {text, diff}, where diff marks what the other side does not have. Past
  // MAX_CELLS the whole of each differing text is marked instead.
  const MAX_CELLS = 1_000_000;
  function diffWords(left, right) {
    if (left === right) return { left: [{ text: left, diff: false }], right: [{ text: right, diff: false }] };
    const a = tokens(left), b = tokens(right);
    if ((a.length + 1) * (b.length + 1) > MAX_CELLS) {
      return { left: [{ text: left, diff: true }], right: [{ text: right, diff: true }] };
    }
    const width = b.length + 1;
    const lcs = new Uint32Array((a.length + 1) * width);
    for (let i = a.length - 1; i >= 0; i--) {
      for (let j = b.length - 1; j >= 0; j--) {
        lcs[i * width + j] = a[i] === b[j]
          ? lcs[(i + 1) * width + j + 1] + 1
          : Math.max(lcs[(i + 1) * width + j], lcs[i * width + j + 1]);
      }
    }
    const out = { left: [], right: [] };
    let i = 0, j = 0;
    while (i < a.length || j < b.length) {
      if (i < a.length && j < b.length && a[i] === b[j]) {
        push(out.left, a[i++], false); push(out.right, b[j++], false);
      } else if (j < b.length && (i === a.length || lcs[i * width + j + 1] >= lcs[(i + 1) * width + j])) {
        push(out.right, b[j++], !/^\s+$/.test(b[j - 1]));
      } else {
        push(out.left, a[i++], !/^\s+$/.test(a[i - 1]));
      }
    }
    return out;
  }

  // Appends to segments, joining a run of the same kind.
  function push(segments, text, diff) {
    const last = segments[segments.length - 1];
    if (last && last.diff === diff) last.text += text;
    else segments.push({ text, diff });
  }

  function sameJson(a, b) {
    if (a === b) return true;
    if (typeof a !== typeof b || a === null || b === null || typeof a !== 'object') return false;
    if (Array.isArray(a) !== Array.isArray(b)) return false;
    const keys = Object.keys(a);
    if (keys.length !== Object.keys(b).length) return false;
    return keys.every((k) => Object.prototype.hasOwnProperty.call(b, k) && sameJson(a[k], b[k]));
  }

  const ABSENT = Symbol('absent');

  // Pretty JSON of `value` as segments, marking what differs from `other`. With
  // `paths` (the comparator's difference paths: keys, indices, null for any) the
  // places under one of them are marked, so ignored fields and numbers within
  // tolerance are not; without, every value written differently is. A marked
  // string is diffed word by word against the other side's.
  function jsonSegments(value, other, path, paths, indent, out) {
    if (value === null || typeof value !== 'object') {
      leafSegments(value, other, paths ? covered(path, paths) : !sameAs(value, other), out);
      return;
    }
    const isArray = Array.isArray(value);
    const counterpart = other !== null && typeof other === 'object' && Array.isArray(other) === isArray ? other : ABSENT;
    const pad = '  '.repeat(indent);
    const whole = paths ? covered(path, paths) : other !== ABSENT && counterpart === ABSENT;
    if (whole) {
      push(out, JSON.stringify(value, null, 2).replace(/\n/g, '\n' + pad), true);
      return;
    }
    const keys = isArray ? value.map((_, i) => i) : Object.keys(value);
    if (keys.length === 0) {
      push(out, isArray ? '[]' : '{}', !paths && other === ABSENT);
      return;
    }
    push(out, isArray ? '[\n' : '{\n', false);
    keys.forEach((key, n) => {
      const has = counterpart !== ABSENT && Object.prototype.hasOwnProperty.call(counterpart, key);
      const theirs = has ? counterpart[key] : ABSENT;
      const inner = [...path, key];
      push(out, pad + '  ', false);
      // A key is marked when the other side lacks it (and, by paths, that counts).
      if (!isArray) push(out, JSON.stringify(key) + ': ', !has && (!paths || covered(inner, paths)));
      jsonSegments(value[key], theirs, inner, paths, indent + 1, out);
      push(out, n + 1 < keys.length ? ',\n' : '\n', false);
    });
    push(out, pad + (isArray ? ']' : '}'), false);
  }

  function leafSegments(value, other, differs, out) {
    if (differs && typeof value === 'string' && typeof other === 'string') {
      push(out, '"', false);
      diffWords(value, other).left.forEach((seg) => push(out, JSON.stringify(seg.text).slice(1, -1), seg.diff));
      push(out, '"', false);
    } else {
      push(out, JSON.stringify(value), differs);
    }
  }

  const sameAs = (value, other) => other !== ABSENT && sameJson(value, other);

  // Whether `path` lies under one of `paths`.
  function covered(path, paths) {
    return paths.some((p) => p.length <= path.length && p.every((step, i) => step === null || step === path[i]));
  }

  function parseJson(text) {
    try { return { ok: true, value: JSON.parse(text) }; } catch (_) { return { ok: false }; }
  }

  // Both answers of a mismatch as highlighted segments: structurally when both
  // are JSON (by the comparator's paths when they name places in the answers),
  // else word by word (a cut-off body, a stream, plain text).
  function diffAnswers(primary, shadow, paths) {
    const p = parseJson(primary), s = parseJson(shadow);
    if (!p.ok || !s.ok) {
      const words = diffWords(primary, shadow);
      return { left: words.left, right: words.right, structured: false };
    }
    const sides = (by) => {
      const left = [], right = [];
      jsonSegments(p.value, s.value, [], by, 0, left);
      jsonSegments(s.value, p.value, [], by, 0, right);
      return { left, right, structured: true };
    };
    if (paths && paths.length) {
      const marked = sides(paths);
      if ([...marked.left, ...marked.right].some((seg) => seg.diff)) return marked;
    }
    return sides(null);
  }

  // -------------------------------------------------------------- rollouts

  // The canary weight over time, from the journal (newest first, as the API
  // pages it): [ms, percent] points of a step line that ends at `now`.
  function weightSeries(entries, rolloutId, now, finished) {
    const points = [];
    entries.slice().reverse().forEach((entry) => {
      const time = Date.parse(entry.time);
      if (Number.isNaN(time)) return;
      if (entry.rollout && entry.rollout.id === rolloutId) {
        points.push([time, rolloutWeight(entry.rollout)]);
      }
    });
    if (points.length > 0 && !finished) points.push([now, points[points.length - 1][1]]);
    return points;
  }

  // As the gateway's Rollout::weight: a paused rollout keeps its share only when
  // it was held after progressing (else its candidate is out of traffic).
  function rolloutWeight(rollout) {
    const step = rollout.plan.steps[rollout.step] ?? 0;
    switch (rollout.phase) {
      case 'progressing': return step;
      case 'paused': return rollout.held && rollout.progressed ? step : 0;
      case 'succeeded': return 100;
      default: return 0;
    }
  }

  // ------------------------------------------------------------ formatting

  function percent(ratio) {
    if (ratio === null || ratio === undefined) return '–';
    const value = ratio * 100;
    if (Number.isInteger(value)) return value + '%';
    // Never round a disagreement away: 99.97% is not 100%.
    const shown = value.toFixed(1);
    return (shown === '100.0' ? (Math.floor(value * 100) / 100).toFixed(2) : shown) + '%';
  }

  function number(value) {
    if (value === null || value === undefined) return '–';
    if (typeof value !== 'number') return String(value);
    if (Number.isInteger(value)) return value.toLocaleString('en');
    return Math.abs(value) >= 100 ? value.toFixed(0) : Number(value.toPrecision(3)).toString();
  }

  function ms(value) { return value === null || value === undefined ? '–' : number(value) + ' ms'; }

  function clock(time) {
    const date = new Date(time);
    return Number.isNaN(date.getTime()) ? String(time) : date.toLocaleString('en-GB', { hour12: false });
  }

  const VERDICTS = { pass: ['pass', '✓ pass'], fail: ['fail', '✗ fail'], wait: ['wait', '… wait'] };
  function verdict(kind, text) {
    const [cls, label] = VERDICTS[kind] || ['wait', kind];
    return h('span', { class: 'verdict ' + cls }, text || label);
  }

  // -------------------------------------------------------------------- DOM

  // An element with attributes and children (strings become text nodes).
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? '' : String(value));
    }
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  function segmentsPre(segments, label) {
    return h('pre', { 'aria-label': label, role: 'region', tabindex: 0 },
      segments.map((seg) => (seg.diff ? h('mark', { class: 'diff' }, seg.text) : seg.text)));
  }

  function table(headers, rows, attrs) {
    return h('div', { class: 'scroll', role: 'region', tabindex: 0, 'aria-label': (attrs && attrs['aria-label']) || 'table' }, h('table', attrs || {},
      h('thead', {}, h('tr', {}, headers.map(header))),
      h('tbody', {}, rows)));
  }

  // Marks `node` as a part of the view that is redrawn only when `key` (what it
  // shows) changes, so scroll positions, selections and focus inside it stay.
  function slotted(name, key, node) {
    node.setAttribute('data-slot', name);
    node.setAttribute('data-slot-key', JSON.stringify(key));
    return node;
  }

  // A column head: a label, or [label, class].
  function header(x) {
    const [label, cls] = Array.isArray(x) ? x : [x, /^(p\d+|count|reading|interval|threshold)$/.test(x) ? 'num' : null];
    return h('th', { scope: 'col', class: cls }, label);
  }

  // ------------------------------------------------------------------ plots

  // A line plot in SVG. series: [{points: [[x, y]], cls, label}]; x and y
  // domains [lo, hi]; ticks as formatted by xTick / yTick.
  function plot(opts) {
    const W = 560, H = 200, L = 46, R = 30, T = 10, B = 28;
    const [x0, x1] = opts.x, [y0, y1] = opts.y;
    const sx = (x) => L + ((x - x0) / ((x1 - x0) || 1)) * (W - L - R);
    const sy = (y) => H - B - ((y - y0) / ((y1 - y0) || 1)) * (H - T - B);
    const svg = s('svg', { class: 'plot', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': opts.label });
    svg.append(s('title', {}, opts.label));
    svg.append(s('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }));
    svg.append(s('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }));
    for (const y of opts.yTicks) {
      svg.append(s('text', { x: L - 6, y: sy(y) + 4, 'text-anchor': 'end' }, opts.yTick(y)));
      svg.append(s('line', { class: 'axis', x1: L - 3, y1: sy(y), x2: L, y2: sy(y) }));
    }
    for (const x of opts.xTicks) {
      svg.append(s('text', { x: sx(x), y: H - B + 16, 'text-anchor': 'middle' }, opts.xTick(x)));
    }
    for (const bar of opts.bars || []) {
      svg.append(s('rect', { class: 'bar', x: sx(bar.x) - 2, width: 4, y: sy(bar.y), height: H - B - sy(bar.y) },
        s('title', {}, bar.title)));
    }
    if (opts.threshold !== undefined && opts.threshold !== null) {
      svg.append(s('line', { class: 'threshold', x1: L, x2: W - R, y1: sy(opts.threshold), y2: sy(opts.threshold) }));
    }
    for (const series of opts.series) {
      if (series.points.length === 0) continue;
      const path = series.points.map(([x, y], n) => `${n ? 'L' : 'M'}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join('');
      svg.append(s('path', { class: series.cls, d: path }, s('title', {}, series.label)));
      for (const dot of series.dots || []) {
        svg.append(s('circle', { class: 'dot', cx: sx(dot.x), cy: sy(dot.y), r: 3 }, s('title', {}, dot.title)));
      }
    }
    return svg;
  }

  function ticks(lo, hi, count) {
    const step = (hi - lo) / count;
    return Array.from({ length: count + 1 }, (_, n) => lo + step * n);
  }

  function agreementPlot(perMinute, now) {
    const hourAgo = now - 3600_000;
    const points = perMinute.filter((p) => p.agreement !== null && p.start_ms >= hourAgo - 60_000);
    const most = Math.max(1, ...points.map((p) => p.compared));
    const label = (p) => `${clock(p.start_ms)}: ${percent(p.agreement)} of ${number(p.compared)} comparisons`;
    return plot({
      label: 'Agreement per minute over the last hour, with the comparisons behind each minute as bars',
      x: [hourAgo, now], y: [0, 1],
      xTicks: ticks(hourAgo, now, 6), xTick: (x) => `${Math.round((x - now) / 60_000)} min`,
      yTicks: [0, 0.25, 0.5, 0.75, 1], yTick: (y) => percent(y),
      bars: points.map((p) => ({ x: p.start_ms + 30_000, y: (p.compared / most) * 0.25, title: label(p) })),
      series: [{
        cls: 'primary', label: 'agreement per minute',
        points: points.map((p) => [p.start_ms + 30_000, p.agreement]),
        dots: points.map((p) => ({ x: p.start_ms + 30_000, y: p.agreement, title: label(p) })),
      }],
    });
  }

  function latencyPlot(cdf) {
    const all = [...cdf.primary, ...cdf.shadow].map(([, v]) => v);
    const top = Math.max(0.001, ...all);
    const line = (points) => points.map(([q, v]) => [v, q]);
    return plot({
      label: 'Latency distributions (CDF): production solid, shadow dashed',
      x: [0, top], y: [0, 1], xTicks: ticks(0, top, 4), xTick: (x) => number(x) + ' ms',
      yTicks: [0, 0.25, 0.5, 0.75, 1], yTick: (y) => percent(y),
      series: [
        { cls: 'primary', label: 'production', points: line(cdf.primary) },
        { cls: 'shadow', label: 'shadow', points: line(cdf.shadow) },
      ],
    });
  }

  function weightPlot(points, now) {
    const start = points.length ? points[0][0] : now - 60_000;
    // At least five minutes across, so the ticks are distinct minutes.
    const end = Math.max(now, start + 300_000);
    const steps = [];
    points.forEach(([x, y], n) => {
      if (n > 0) steps.push([x, points[n - 1][1]]);
      steps.push([x, y]);
    });
    return plot({
      label: 'Canary weight over time',
      x: [start, end], y: [0, 100], xTicks: ticks(start, end, 4),
      xTick: (x) => new Date(x).toLocaleTimeString('en-GB', { hour12: false, hour: '2-digit', minute: '2-digit' }),
      yTicks: [0, 25, 50, 75, 100], yTick: (y) => y + '%',
      series: [{ cls: 'primary', label: 'weight', points: steps }],
    });
  }

  function legend() {
    return h('p', { class: 'legend' }, h('span', { class: 'swatch primary' }), 'production (solid)',
      h('span', { class: 'swatch shadow' }), 'shadow (dashed)');
  }

  // -------------------------------------------------------------------- API

  class Unauthorized extends Error {}
  class ApiError extends Error {
    constructor(status, body) {
      super(apiMessage(status, body));
      this.status = status;
      this.body = body;
    }
  }

  function apiMessage(status, body) {
    if (body && typeof body.error === 'string') {
      const fields = Array.isArray(body.errors) ? '\n' + body.errors.map((e) => `${e.path ?? ''}: ${e.message ?? JSON.stringify(e)}`).join('\n') : '';
      return `${status} ${body.code ?? ''}: ${body.error}${fields}`;
    }
    if (body && body.error && typeof body.error.message === 'string') return `${status}: ${body.error.message}`;
    return `${status}: ${typeof body === 'string' ? body : JSON.stringify(body)}`;
  }

  async function api(path, options) {
    const headers = { accept: 'application/json' };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.authorization = 'Bearer ' + token;
    if (options && options.body !== undefined) headers['content-type'] = 'application/json';
    const response = await fetch('/api/v1' + path, {
      method: options && options.method ? options.method : 'GET',
      headers,
      body: options && options.body !== undefined ? JSON.stringify(options.body) : undefined,
      cache: 'no-store',
    });
    const text = await response.text();
    const parsed = parseJson(text);
    const body = parsed.ok ? parsed.value : text;
    if (response.status === 401) throw new Unauthorized(apiMessage(401, body));
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  async function readiness() {
    try {
      const response = await fetch('/readyz', { cache: 'no-store' });
      return (await response.text()).trim() || String(response.status);
    } catch (_) { return 'unreachable'; }
  }

  // ------------------------------------------------------------------ views

  function route() {
    const match = location.hash.match(/^#\/models\/([^/]+)$/);
    return match ? { model: decodeURIComponent(match[1]) } : { model: null };
  }

  async function loadOverview() {
    const [models, ready] = await Promise.all([api('/models'), readiness()]);
    return { models, registry: models.registry_sync, ready };
  }

  async function loadModel(name) {
    const m = encodeURIComponent(name);
    const [model, shadow, rollout, history, ready] = await Promise.all([
      api(`/models/${m}`), api(`/models/${m}/shadow`), api(`/models/${m}/rollout`),
      api(`/models/${m}/history?limit=${HISTORY_LIMIT}`), readiness(),
    ]);
    return { model, shadow, rollout, history, ready };
  }

  function statusLine(data) {
    const rev = data.models || data.model;
    const parts = [`gateway ${data.ready}`, `routing revision ${rev.routing_revision}`,
      `registry revision ${rev.registry_revision}`];
    if (data.registry) parts.push(`${data.registry.kind} sync ${data.registry.state}`);
    return parts.join(' · ');
  }

  function chip(model, version, stage, extra) {
    return h('span', { class: 'chip', 'data-model': model, 'data-version': version, 'data-stage': stage, title: `version ${version}: ${stage}` },
      `v${version}`, extra ? ` ${extra}` : '');
  }

  function overview(data) {
    const rows = data.models.models.map((model) => {
      const of = (stage) => model.versions.filter((v) => v.stage === stage).map((v) => chip(model.name, v.version, v.stage));
      const canary = model.canary ? chip(model.name, model.canary.version, 'staging', `${number(model.canary.weight)}%`) : '–';
      const rollout = model.rollout ? `${model.rollout.phase.replace(/_/g, ' ')} (v${model.rollout.candidate}, step ${model.rollout.step + 1} of ${model.rollout.steps})` : '–';
      return h('tr', { 'data-model': model.name },
        h('th', { scope: 'row' }, h('a', { href: `#/models/${encodeURIComponent(model.name)}`, 'data-key': `open-${model.name}` }, model.name)),
        h('td', { 'data-col': 'production' }, of('production')), h('td', { 'data-col': 'staging' }, of('staging')),
        h('td', { 'data-col': 'canary' }, canary), h('td', { 'data-col': 'archived' }, of('archived')),
        h('td', { 'data-col': 'rollout' }, rollout));
    });
    return [
      h('h1', {}, 'Models'),
      slotted('overview', data.models.models, h('section', { class: 'card', id: 'overview' },
        table(['Model', 'Production', 'Staging', 'Canary', 'Archived', 'Rollout'], rows, { 'aria-label': 'models' }))),
      slotted('registry', steady(data.registry), registryCard(data.registry)),
    ];
  }

  // The sync's state without what changes on every read (ages, attempt times).
  function steady(registry) {
    if (!registry) return null;
    const { last_success_age_s: _age, last_attempt: _attempt, ...rest } = registry;
    return rest;
  }

  function registryCard(registry) {
    if (!registry) return h('p', { class: 'meta', id: 'registry' }, 'No external registry is configured; stages are set through this gateway only.');
    const rows = registry.models.map((m) => h('tr', {},
      h('td', {}, m.model), h('td', {}, m.registered_model), h('td', {}, m.production_slot),
      h('td', {}, m.registry_production ?? '–'), h('td', {}, m.serving ?? '–'),
      h('td', {}, m.error ?? m.waiting_for ?? 'in step')));
    return h('section', { class: 'card', id: 'registry' },
      h('h2', {}, `Registry sync: ${registry.kind} at ${registry.url}`),
      h('p', {}, verdict({ ok: 'pass', error: 'fail' }[registry.state] || 'wait', registry.state),
        ` last success ${registry.last_success ?? 'never'}`, registry.last_error ? ` · last error: ${registry.last_error}` : ''),
      table(['Model', 'Registered model', 'Follows', 'Registry says', 'Serving', 'State'], rows));
  }

  function modelView(data) {
    const { model, shadow, rollout, history } = data;
    return [
      h('h1', {}, `Model ${model.name}`),
      slotted('versions', model, versionsCard(model)),
      slotted('rollout', [rollout, history.entries.filter((e) => e.rollout).length, minute()], rolloutCard(model, rollout, history)),
      shadowSection(model, shadow),
      slotted('history', history.entries, historyCard(history)),
    ];
  }

  function versionsCard(model) {
    const rows = model.versions.map((v) => h('tr', { 'data-version': v.version },
      h('td', {}, chip(model.name, v.version, v.stage)),
      h('td', {}, v.stage),
      h('td', { class: 'mono hide-narrow' }, v.endpoints.join(' ')),
      h('td', {}, h('button', { type: 'button', 'data-action': 'transition', 'data-version': v.version, 'data-key': `transition-${v.version}`, 'aria-label': `Change the stage of v${v.version}`, onclick: () => transitionAction(model, v) }, 'Change stage…'))));
    const archived = model.versions.filter((v) => v.stage === 'archived');
    return h('section', { class: 'card', id: 'versions' },
      h('h2', {}, 'Versions'),
      h('p', { class: 'meta' }, `production: ${model.production ? 'v' + model.production : 'none'} · rollback goes to: ${model.rollback_target ? 'v' + model.rollback_target : 'no archived previous production'}`),
      table(['Version', 'Stage', ['Endpoints', 'hide-narrow'], ''], rows),
      h('div', { class: 'actions' },
        h('button', { type: 'button', 'data-action': 'rollback', 'data-key': 'rollback', class: 'danger', onclick: () => rollbackAction(model, archived) }, 'Roll back…'),
        h('button', { type: 'button', 'data-action': 'canary', 'data-key': 'canary', onclick: () => canaryAction(model) }, 'Set canary weight…'),
        h('button', { type: 'button', 'data-action': 'rollout-start', 'data-key': 'rollout-start', onclick: () => startRolloutAction(model) }, 'Start rollout…')));
  }

  function rolloutCard(model, status, history) {
    const card = h('section', { class: 'card', id: 'rollout' }, h('h2', {}, 'Rollout'));
    const r = status.rollout;
    if (status.canary && (!r || r.phase !== 'progressing')) {
      card.append(h('p', {}, `Canary: v${status.canary.version} takes ${number(status.canary.weight)}% of production traffic.`));
    }
    if (!r) { card.append(h('p', { class: 'meta' }, 'No rollout yet.')); return card; }
    const final = ['succeeded', 'rolled_back', 'aborted'].includes(r.phase);
    const kind = r.phase === 'succeeded' ? 'pass' : ['rolled_back', 'aborted'].includes(r.phase) ? 'fail' : 'wait';
    card.append(h('p', {}, verdict(kind, r.phase.replace(/_/g, ' ')),
      ` v${r.candidate}, step ${status.step} of ${status.steps} (${(r.plan.steps || []).map((x) => x + '%').join(' → ')}), weight ${number(status.weight)}%`,
      r.held ? ' · held' : ''));
    if (r.reason) card.append(h('p', {}, 'Why: ', r.reason));
    const readings = status.readings;
    if (readings) {
      card.append(h('p', { id: 'waiting-for' }, h('strong', {}, 'Waiting for: '), readings.waiting_for || 'nothing'));
      card.append(gatesTable(readings.gates || []));
    } else if (r.evidence && r.evidence.length) {
      card.append(h('h3', {}, 'Gates at the last decision'), gatesTable(r.evidence));
    }
    const points = weightSeries(history.entries, r.id, Date.now(), final);
    card.append(h('h3', {}, 'Weight over time'), weightPlot(points, final && points.length ? points[points.length - 1][0] : Date.now()));
    if (!final) {
      const act = (action, label, cls) => h('button', { type: 'button', 'data-action': `rollout-${action}`, 'data-key': `rollout-${action}`, class: cls, onclick: () => rolloutAction(model, action) }, label);
      card.append(h('div', { class: 'actions' },
        r.phase === 'paused' || r.held ? act('resume', 'Resume…') : act('pause', 'Pause…'),
        act('promote', 'Promote now…', 'primary'), act('abort', 'Abort…', 'danger')));
    }
    return card;
  }

  function gatesTable(gates) {
    const interval = (g) => `[${g.lower === null || g.lower === undefined ? '?' : number(g.lower)}, ${g.upper === null || g.upper === undefined ? '?' : number(g.upper)}]`;
    const rows = gates.map((g) => h('tr', { 'data-gate': g.gate },
      h('td', {}, g.gate), h('td', { class: 'num' }, number(g.reading)),
      h('td', { class: 'num' }, interval(g), g.confidence ? h('span', { class: 'meta' }, ` at ${percent(g.confidence)}`) : ''),
      h('td', { class: 'num' }, number(g.threshold)), h('td', {}, verdict(g.verdict)),
      h('td', { class: 'hide-narrow' }, g.detail ?? '')));
    return table(['Gate', 'reading', 'interval', 'threshold', 'Verdict', ['Detail', 'hide-narrow']], rows);
  }

  function shadowSection(model, shadow) {
    const section = h('section', { id: 'shadow' }, h('h2', {}, 'Shadow comparison'));
    const replayAgreement = shadow.production_replay && shadow.production_replay.agreement;
    const head = slotted('shadow-policy', [shadow.active, shadow.policy, replayAgreement, shadow.versions.length], h('div', {}));
    section.append(head);
    head.append(h('p', { class: 'meta' }, shadow.active
      ? `Mirroring ${number(shadow.policy.percent)}% of production traffic, compared as ${shadow.policy.compare.mode}.`
      : 'Not mirroring (no staging version, or shadow testing is off).'));
    if (shadow.production_replay) {
      const a = shadow.production_replay.agreement;
      head.append(h('p', { class: 'meta' }, `Production against itself (the noise floor): ${percent(a.agreement)} of ${number(a.compared)}.`));
    }
    if (!shadow.versions.length) head.append(h('p', { class: 'card' }, 'No staging version is mirrored.'));
    for (const v of shadow.versions) section.append(shadowCard(model, v));
    return section;
  }

  function shadowCard(model, v) {
    const { samples, ...summary } = v;
    return h('article', { class: 'card shadow-version', 'data-version': v.version },
      slotted(`shadow-${v.version}`, [summary, model.production, minute()], shadowSummary(model, v)),
      slotted(`mismatches-${v.version}`, [samples, showingAll.has(`${model.name}/${v.version}`)],
        h('div', {}, h('h3', {}, 'Latest mismatches'), mismatches(model.name, v.version, samples))));
  }

  // The minute now: parts plotted against the clock are redrawn once a minute.
  const minute = () => Math.floor(Date.now() / 60_000);

  function shadowSummary(model, v) {
    const a = v.agreement;
    const dropped = Object.values(v.dropped).reduce((x, y) => x + y, 0);
    const errors = Object.values(v.errors).reduce((x, y) => x + y, 0);
    const card = h('div', {},
      h('h3', {}, `v${v.version} against production v${model.production ?? '?'}`),
      h('p', {}, h('span', { class: 'big' }, percent(a.agreement)), ` agreement over ${number(a.compared)} comparisons since ${v.since}`,
        ` · last ${a.window_seconds} s: ${percent(a.window_agreement)} of ${number(a.window_compared)}`),
      h('p', { class: 'meta' }, `mirrored ${number(v.mirrored)} · matched ${number(v.matched)} · mismatched ${number(v.mismatched)} · dropped ${number(dropped)} · errors ${number(errors)}`));
    card.append(h('div', { class: 'grid' },
      h('div', {}, h('h3', {}, 'Agreement per minute, last hour'), agreementPlot(v.agreement_per_minute || [], Date.now())),
      h('div', {}, h('h3', {}, 'Latency'), latencyTable(v), v.latency_cdf_ms ? latencyPlot(v.latency_cdf_ms) : '', legend())));
    if (v.llm) card.append(llmTable(v.llm));
    card.append(h('h3', {}, 'Most disagreeing paths'), v.top_mismatch_paths.length
      ? table(['Path', 'count'], v.top_mismatch_paths.map((p) => h('tr', {}, h('td', { class: 'mono' }, p.path), h('td', { class: 'num' }, number(p.count)))))
      : h('p', { class: 'meta' }, 'None.'));
    return card;
  }

  function latencyTable(v) {
    const row = (name, l) => h('tr', {}, h('td', {}, name), ['p50', 'p95', 'p99'].map((q) => h('td', { class: 'num' }, ms(l && l[q]))));
    return table(['', 'p50', 'p95', 'p99'], [row('production', v.latency_ms.primary), row('shadow', v.latency_ms.shadow)]);
  }

  function llmTable(llm) {
    const side = (name, key) => ['primary', 'shadow'].map((who) => h('tr', {}, h('td', {}, `${name}, ${who === 'primary' ? 'production' : 'shadow'}`),
      ['p50', 'p95', 'p99'].map((q) => h('td', { class: 'num' }, ms(llm[key] && llm[key][who] && llm[key][who][q])))));
    const sim = llm.similarity;
    return h('div', {}, h('h3', {}, 'Generated answers'),
      table(['', 'p50', 'p95', 'p99'], [side('time to first token', 'time_to_first_token_ms'), side('time per output token', 'time_per_output_token_ms')]),
      sim ? h('p', { class: 'meta' }, `text similarity over ${number(sim.compared)}: p10 ${number(sim.p10)}, p50 ${number(sim.p50)}, p90 ${number(sim.p90)}`) : '');
  }

  // Versions whose every kept mismatch is shown (else the newest few).
  const showingAll = new Set();
  const FEW_MISMATCHES = 3;

  function mismatches(model, version, samples) {
    const list = h('div', { class: 'mismatches' });
    if (!samples.length) { list.append(h('p', { class: 'meta' }, 'No mismatches.')); return list; }
    const newest = samples.slice().reverse();
    const which = `${model}/${version}`;
    const all = showingAll.has(which);
    if (newest.length > FEW_MISMATCHES) {
      list.append(h('p', { class: 'meta' }, `${all ? newest.length : FEW_MISMATCHES} of the ${newest.length} kept shown `,
        h('button', { type: 'button', 'data-key': `mismatches-${version}`, 'aria-expanded': String(all),
          onclick: () => { all ? showingAll.delete(which) : showingAll.add(which); refresh(); } },
        all ? 'Show fewer' : 'Show all')));
    }
    for (const sample of all ? newest : newest.slice(0, FEW_MISMATCHES)) {
      const diff = diffAnswers(sample.primary, sample.shadow, sample.difference_paths);
      list.append(h('div', { class: 'mismatch', 'data-request-id': sample.request_id },
        h('p', { class: 'meta' }, `${clock(sample.time)} · ${sample.path} · request ${sample.request_id}`),
        h('ul', {}, sample.differences.map((d) => h('li', { class: 'mono' }, d))),
        h('div', { class: 'pair' },
          h('div', {}, h('strong', {}, 'Production'), segmentsPre(diff.left, 'production answer')),
          h('div', {}, h('strong', {}, 'Shadow'), segmentsPre(diff.right, 'shadow answer')))));
    }
    return list;
  }

  function historyCard(history) {
    const items = history.entries.map((e) => {
      const move = e.from || e.to ? ` ${e.from ?? 'new'} → ${e.to ?? '–'}` : '';
      const extra = e.rollout ? ` (rollout ${e.rollout.phase.replace(/_/g, ' ')}, step ${e.rollout.step + 1})`
        : e.canary ? ` (canary ${number(e.canary.weight)}%)` : '';
      return h('li', { 'data-revision': e.revision },
        h('div', { class: 'what' }, `${e.action}${e.version ? ' v' + e.version : ''}${move}${extra}`),
        h('div', { class: 'meta' }, `${clock(e.time)} · by ${e.actor} · revision ${e.revision}`),
        e.reason ? h('div', {}, e.reason) : '');
    });
    return h('section', { class: 'card', id: 'history' }, h('h2', {}, 'History'),
      items.length ? h('ol', { class: 'timeline', reversed: true }, items) : h('p', { class: 'meta' }, 'Nothing journaled yet.'));
  }

  // ---------------------------------------------------------------- actions

  const dialog = () => document.getElementById('action-dialog');
  // The change the open dialog confirms, whether it is being sent, and the
  // data-key of what opened it (focused again when the dialog closes).
  let pending = null;
  let busy = false;
  let opener = null;

  // Opens the confirmation for one change; `send(values, reason)` makes it.
  function confirmAction(title, summary, fields, send) {
    const d = dialog();
    opener = document.activeElement && document.activeElement.getAttribute('data-key');
    document.getElementById('action-title').textContent = title;
    document.getElementById('action-summary').textContent = summary;
    document.getElementById('action-error').textContent = '';
    document.getElementById('action-reason').value = '';
    const box = document.getElementById('action-fields');
    box.replaceChildren(...fields.map(field));
    pending = { fields, send };
    d.showModal();
  }

  function field(f) {
    const id = 'field-' + f.name;
    const input = f.options
      ? h('select', { id, name: f.name }, f.options.map((o) => {
        const [value, label] = Array.isArray(o) ? o : [o, o];
        return h('option', { value, selected: value === f.value }, label);
      }))
      : h('input', { id, name: f.name, type: f.type || 'text', value: f.value ?? '', placeholder: f.placeholder, step: f.step, min: f.min, max: f.max });
    return h('div', {}, h('label', { for: id }, f.label), input);
  }

  async function submitAction(event) {
    event.preventDefault();
    const job = pending;
    if (!job || busy) return;
    const values = {};
    for (const f of job.fields) values[f.name] = document.getElementById('field-' + f.name).value;
    const reason = document.getElementById('action-reason').value.trim();
    setBusy(true);
    try {
      await job.send(values, reason);
      if (pending === job) dialog().close();
      refresh();
    } catch (error) {
      if (pending === job) {
        document.getElementById('action-error').textContent = error instanceof Unauthorized
          ? 'The admin API refused the token: ' + error.message : error.message;
      }
    } finally {
      setBusy(false);
    }
  }

  // While a change is being sent the dialog stays open: closing it would hide
  // the answer of a change that is still made.
  function setBusy(value) {
    busy = value;
    document.getElementById('action-confirm').disabled = value;
    document.getElementById('action-cancel').disabled = value;
  }

  function dialogClosed() {
    pending = null;
    refocus(opener);
  }

  function refocus(key) {
    const again = key && document.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }

  // A number typed into a form, checked before it is sent.
  function numberIn(text, what, lo, hi) {
    const value = Number(text);
    if (text.trim() === '' || !Number.isFinite(value) || value < lo || value > hi) {
      throw new Error(`${what} must be a number from ${lo} to ${hi}, not ${JSON.stringify(text)}`);
    }
    return value;
  }

  const post = (path, body) => api(path, { method: 'POST', body });
  const modelPath = (model) => `/models/${encodeURIComponent(model.name)}`;

  function transitionAction(model, version) {
    const next = version.stage === 'staging' ? 'production' : version.stage === 'production' ? 'archived' : 'staging';
    confirmAction(`Change the stage of ${model.name} v${version.version}`,
      `v${version.version} is in ${version.stage}. Moving a version to production archives the current production version; its traffic moves at once.`,
      [{ name: 'stage', label: 'New stage', options: STAGES, value: next }],
      (v, reason) => post(`${modelPath(model)}/versions/${encodeURIComponent(version.version)}/transition`, { stage: v.stage, reason }));
  }

  function rollbackAction(model, archived) {
    const choices = [['', model.rollback_target ? `v${model.rollback_target} (the previous production)` : 'the previous production'],
      ...archived.filter((v) => v.version !== model.rollback_target).map((v) => [v.version, `v${v.version}`])];
    confirmAction(`Roll back ${model.name}`,
      `Production v${model.production ?? '?'} is archived and the version chosen takes all production traffic at once.`,
      [{ name: 'to_version', label: 'Back to version', options: choices, value: '' }],
      (v, reason) => post(`${modelPath(model)}/rollback`, v.to_version ? { to_version: v.to_version, reason } : { reason }));
  }

  function canaryAction(model) {
    const staging = model.versions.filter((v) => v.stage === 'staging').map((v) => v.version);
    confirmAction(`Set a canary for ${model.name}`,
      'The staging version takes this share of production traffic (sticky per user); 0 ends the canary.',
      [{ name: 'version', label: 'Version', options: staging.length ? staging : [''] },
        { name: 'weight', label: 'Weight (percent of production traffic)', type: 'number', value: '10', min: 0, max: 100, step: 'any' }],
      (v, reason) => post(`${modelPath(model)}/canary`, { version: v.version, weight: numberIn(v.weight, 'the weight', 0, 100), reason }));
  }

  function startRolloutAction(model) {
    const staging = model.versions.filter((v) => v.stage === 'staging').map((v) => v.version);
    confirmAction(`Start a rollout of ${model.name}`,
      'The candidate takes a growing canary share, step by step, while its gates hold; it is rolled back when they fail. Empty fields take the model\'s defaults.',
      [{ name: 'candidate', label: 'Candidate', options: staging.length ? staging : [''] },
        { name: 'steps', label: 'Steps (percent, comma separated)', placeholder: 'e.g. 10,50,100' },
        { name: 'step_interval_s', label: 'Seconds per step', type: 'number', placeholder: 'default', min: 0, step: 'any' }],
      (v, reason) => {
        const body = { candidate: v.candidate, reason };
        if (v.steps.trim()) body.steps = v.steps.split(',').map((x) => numberIn(x, 'each step', 0, 100));
        if (v.step_interval_s.trim()) body.step_interval_s = numberIn(v.step_interval_s, 'the seconds per step', 0, 86_400 * 7);
        return post(`${modelPath(model)}/rollout`, body);
      });
  }

  const ROLLOUT_ACTIONS = {
    pause: 'The candidate keeps its share; the rollout waits until resumed.',
    resume: 'The rollout goes on from its current step.',
    promote: 'The candidate becomes production now, whatever its gates say.',
    abort: 'The candidate\'s share goes back to production; it stays in staging.',
  };

  function rolloutAction(model, action) {
    confirmAction(`${action[0].toUpperCase()}${action.slice(1)} the rollout of ${model.name}`, ROLLOUT_ACTIONS[action], [],
      (_, reason) => post(`${modelPath(model)}/rollout/${action}`, { reason }));
  }

  // ------------------------------------------------------------------- loop

  let timer = null;
  // Each refresh takes a number; an answer for an older one is not drawn, so a
  // slow read can never paint a view the person has already left.
  let generation = 0;
  // Set when the view changes (another route, a token given): focus goes to it.
  let focusView = false;

  function setStatus(text) {
    const live = document.getElementById('status-text');
    // The live region is only touched when its meaning changes.
    if (live.textContent !== text) live.textContent = text;
  }

  function showTokenPrompt(message) {
    const prompt = document.getElementById('token-prompt');
    const app = document.getElementById('app');
    app.replaceChildren();
    app.dataset.skeleton = '';
    document.getElementById('crumbs').replaceChildren();
    document.getElementById('token-error').textContent = message;
    document.getElementById('updated').textContent = '';
    setStatus('admin token needed');
    if (prompt.hidden) {
      prompt.hidden = false;
      document.getElementById('token-input').focus();
    }
  }

  // Draws the view: in full when its parts are not those on the page (another
  // route, a version or rollout appeared), else only the parts whose data
  // changed. Keyboard focus stays on the same control.
  function draw(view, nodes, crumbs) {
    const app = document.getElementById('app');
    const fresh = document.createElement('div');
    fresh.append(...nodes.flat());
    const slots = [...fresh.querySelectorAll('[data-slot]')];
    const skeleton = JSON.stringify([view, slots.map((el) => el.dataset.slot)]);
    const focused = document.activeElement && document.activeElement.getAttribute('data-key');
    if (app.dataset.skeleton !== skeleton) {
      app.replaceChildren(...fresh.childNodes);
      app.dataset.skeleton = skeleton;
      document.getElementById('crumbs').replaceChildren(...crumbs);
    } else {
      for (const el of slots) {
        const old = app.querySelector(`[data-slot="${CSS.escape(el.dataset.slot)}"]`);
        if (old && old.dataset.slotKey !== el.dataset.slotKey) old.replaceWith(el);
      }
    }
    if (focusView) {
      focusView = false;
      app.focus();
    } else if (document.activeElement === document.body) {
      refocus(focused);
    }
  }

  async function render(mine) {
    const { model } = route();
    const data = model === null ? await loadOverview() : await loadModel(model);
    if (mine !== generation) return;
    setStatus(statusLine(data));
    document.getElementById('updated').textContent = `· read ${new Date().toLocaleTimeString('en-GB', { hour12: false })}`;
    if (model === null) draw('overview', overview(data), []);
    else draw(`model/${model}`, modelView(data), [h('a', { href: '#/', 'data-key': 'crumb-all' }, 'all models'), ' / ', model]);
    document.getElementById('token-prompt').hidden = true;
  }

  async function refresh() {
    const mine = ++generation;
    clearTimeout(timer);
    try {
      await render(mine);
    } catch (error) {
      if (mine !== generation) return;
      if (error instanceof Unauthorized) {
        showTokenPrompt(sessionStorage.getItem(TOKEN_KEY) ? 'That token was refused.' : '');
        return; // polled again once a token is given
      }
      const { model } = route();
      if (model !== null && error instanceof ApiError && error.status === 404) {
        draw(`missing/${model}`, [h('h1', {}, `No model ${model}`), h('p', {}, error.message),
          h('p', {}, h('a', { href: '#/', 'data-key': 'back' }, 'All models'))], []);
      } else {
        setStatus(`cannot read the admin API: ${error.message}`);
      }
    }
    if (mine !== generation) return;
    clearTimeout(timer);
    timer = setTimeout(refresh, POLL_MS);
  }

  function start() {
    document.getElementById('token-prompt').addEventListener('submit', (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, document.getElementById('token-input').value.trim());
      document.getElementById('token-input').value = '';
      focusView = true;
      refresh();
    });
    document.getElementById('action-form').addEventListener('submit', submitAction);
    document.getElementById('action-cancel').addEventListener('click', () => { if (!busy) dialog().close(); });
    dialog().addEventListener('cancel', (event) => { if (busy) event.preventDefault(); });
    dialog().addEventListener('close', dialogClosed);
    window.addEventListener('hashchange', () => { focusView = true; refresh(); });
    refresh();
  }

  // For the browser tests of the page's logic.
  window.stagegate = { diffWords, diffAnswers, weightSeries, percent, number };

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
