// rlhf studio: the runs table, live curves (SVG), samples with per-token KL heat maps, eval answers,
// overoptimisation curves and the playground. No library, no network beyond this server's /api/.
// Every text that comes from a run (model output, prompts, names, configs) is set with textContent:
// it is shown as text, never parsed as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const CSRF = document.querySelector("meta[name=csrf-token]").content;
  const SVGNS = "http://www.w3.org/2000/svg";
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                  "#7f7f7f", "#bcbd22"];
  const PANELS = [
    ["reward/score", "reward (proxy) on training samples"], ["eval/proxy", "eval: proxy reward"],
    ["eval/gold", "eval: gold reward (lab)"], ["eval/win_rate", "eval: win rate vs SFT"],
    ["kl/ref", "KL to the reference (per sequence)"], ["beta", "KL coefficient beta"], ["entropy", "entropy"],
    ["response/length", "response length (tokens)"], ["policy/loss", "policy loss"], ["value/loss", "value loss"],
    ["loss", "training loss"], ["eval/loss", "eval loss"], ["accuracy", "accuracy"],
    ["eval/accuracy", "eval accuracy"], ["policy/clipfrac", "clip fraction"],
    ["value/explained_var", "value explained variance"], ["episodes_per_s", "throughput (episodes/s)"],
    ["tokens_per_s", "throughput (tokens/s)"], ["pairs_per_s", "throughput (pairs/s)"],
  ];
  const HEADLINE = new Set(PANELS.map((p) => p[0]));

  const state = {
    runs: [], byId: {}, picked: [], metrics: {}, alarms: {}, extra: [], tab: "runs", detail: null,
    busy: false,
  };

  // --- small helpers ---------------------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  function svg(tag, attrs) {
    const node = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    }
    return node;
  }
  function fmt(v, digits) {
    if (v === null || v === undefined || typeof v !== "number" || !isFinite(v)) return "-";
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
    return v.toFixed(digits === undefined ? (a >= 100 ? 1 : 3) : digits);
  }
  function dur(s) {
    if (s === null || s === undefined) return "-";
    if (s < 90) return s.toFixed(0) + " s";
    if (s < 5400) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  }
  function showError(msg) { $("error").textContent = msg || ""; }
  async function api(path, opts) {
    const resp = await fetch(path, Object.assign({credentials: "same-origin"}, opts || {}));
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (!resp.ok) throw new Error((body && body.error) || ("HTTP " + resp.status));
    return body;
  }
  function q(params) {
    const u = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (Array.isArray(v)) v.forEach((x) => u.append(k, x));
      else if (v !== null && v !== undefined && v !== "") u.append(k, v);
    }
    return u.toString();
  }
  function color(id) {
    const i = state.picked.indexOf(id);
    return COLORS[(i < 0 ? 0 : i) % COLORS.length];
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  // --- tabs ---------------------------------------------------------------------------------------------------
  function showTab(name) {
    state.tab = name;
    document.querySelectorAll(".tab").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
    document.querySelectorAll(".panel").forEach((p) => { p.hidden = p.id !== "panel-" + name; });
    if (name === "curves") drawCharts();
    if (name === "samples") fillRunSelect("sample-run", "rollouts", loadSamples);
    if (name === "evals") fillRunSelect("eval-run", "samples", loadEvals);
    if (name === "overopt") drawOveropt();
    if (name === "play") loadModels();
  }

  // --- runs ---------------------------------------------------------------------------------------------------
  async function loadRuns() {
    const data = await api("/api/runs");
    state.runs = data.runs;
    state.byId = Object.fromEntries(data.runs.map((r) => [r.id, r]));
    state.picked = state.picked.filter((id) => state.byId[id]);
    drawRuns();
  }

  function depth(run) {
    let d = 0, p = run.parent;
    while (p && state.byId[p] && d < 8) { d++; p = state.byId[p].parent; }
    return d;
  }

  function statusCell(run) {
    const cell = el("td", {class: "status"});
    cell.append(el("span", {class: "badge status-" + run.status, text: run.status,
                            title: run.error || (run.status === "stopped"
                              ? "marked running, but no heartbeat or write for a while: killed or crashed" : "")}));
    if (run.alarm) cell.append(" ", el("span", {class: "badge status-alarm", text: "alarm fired",
                                                 title: run.alarms + " alarm(s)"}));
    return cell;
  }

  function drawRuns() {
    const body = $("runs-body");
    clear(body);
    const f = $("filter").value.trim().toLowerCase();
    for (const run of state.runs) {
      const hay = [run.id, run.command, run.status, run.alarm ? "alarm" : "", run.model ? "model" : ""]
        .join(" ").toLowerCase();
      if (f && !f.split(/\s+/).every((w) => hay.includes(w))) continue;
      const fin = run.final || {};
      const box = el("input", {type: "checkbox", class: "pick", "data-id": run.id,
                               title: "pick for curves, samples and the config diff"});
      box.checked = state.picked.includes(run.id);
      box.addEventListener("change", () => togglePick(run.id, box.checked));
      const name = el("a", {href: "#", class: "run-name", "data-id": run.id, text: run.id,
                            onclick: (e) => { e.preventDefault(); showDetail(run.id); }});
      name.style.paddingLeft = (depth(run) * 1.2) + "em";
      const swatch = el("span", {class: "swatch"});
      if (state.picked.includes(run.id)) swatch.style.background = color(run.id);
      const lossAcc = fin["eval/accuracy"] !== undefined ? "acc " + fmt(fin["eval/accuracy"])
        : fin.loss !== undefined ? fmt(fin.loss) : fin["policy/loss"] !== undefined ? fmt(fin["policy/loss"]) : "-";
      const tr = el("tr", {"data-id": run.id, class: "run-row"},
        el("td", {}, box, swatch), el("td", {}, name), el("td", {text: run.command}), statusCell(run),
        el("td", {text: run.step === null || run.step === undefined ? "-" : String(run.step)}),
        el("td", {text: dur(run.wall_s)}),
        el("td", {text: fmt(fin["reward/score"])}), el("td", {text: fmt(fin["kl/ref"])}),
        el("td", {text: fmt(fin["eval/gold"])}), el("td", {text: fmt(fin["eval/win_rate"])}),
        el("td", {text: lossAcc}));
      body.append(tr);
    }
    $("picked-count").textContent = state.picked.length + " picked";
  }

  async function togglePick(id, on) {
    if (on && !state.picked.includes(id)) state.picked.push(id);
    if (!on) state.picked = state.picked.filter((x) => x !== id);
    drawRuns();
    await Promise.all(state.picked.map(refreshMetrics));
    drawDiff();
    if (state.tab === "curves") drawCharts();
  }

  async function showDetail(id) {
    const turn = (state.detailTurn = (state.detailTurn || 0) + 1);
    try {
      const d = await api("/api/run?" + q({id}));
      if (turn !== state.detailTurn) return;  // a later click's run is being shown
      state.detail = id;
      const box = $("run-detail");
      clear(box);
      const m = d.manifest || {};
      const rows = [
        ["command", "rlhf " + d.command], ["status", d.status + (d.error ? ": " + d.error : "")],
        ["started", m.started], ["wall time", dur(d.wall_s)], ["training time", dur(d.train_s)],
        ["step", d.step], ["resumes", d.resumes], ["commit", m.commit],
        ["versions", m.versions ? Object.entries(m.versions).map(([k, v]) => k + " " + v).join(", ") : null],
        ["machine", m.machine ? [m.machine.cpu, m.machine.cores + " cores", m.machine.gpu || "no GPU"].join(", ") : null],
        ["runtime", m.runtime ? JSON.stringify(m.runtime) : null],
        ["threads", m.threads ? JSON.stringify(m.threads) : null],
      ];
      const table = el("table", {class: "kv"});
      for (const [k, v] of rows) {
        if (v === null || v === undefined) continue;
        table.append(el("tr", {}, el("th", {text: k}), el("td", {text: String(v)})));
      }
      const fin = el("table", {class: "kv final"});
      for (const [k, v] of Object.entries(d.final || {})) fin.append(el("tr", {}, el("th", {text: k}), el("td", {text: fmt(v)})));
      box.append(el("h2", {text: id}), table);
      if (Object.keys(d.final || {}).length) box.append(el("h3", {text: "final numbers"}), fin);
      if (d.alarm_list && d.alarm_list.length) {
        const ul = el("ul", {class: "alarms"});
        for (const a of d.alarm_list) ul.append(el("li", {}, el("b", {text: a.alarm}), " at step " + a.step + ": " + a.message));
        box.append(el("h3", {text: "alarms"}), ul);
      }
      if (d.pipeline && Array.isArray(d.pipeline.table)) {
        const summary = el("div", {id: "pipeline-summary"});
        box.append(summary, el("h3", {text: "pipeline evaluation"}), pipelineTable(d.pipeline.table));
        drawPipelineSummary(summary, d.pipeline, d.stages || []);
      }
      if (d.stages && d.stages.length) box.append(el("h3", {text: "stages"}), el("p", {text: d.stages.join(", ")}));
      if (d.config_yaml !== null && d.config_yaml !== undefined) {
        box.append(el("h3", {text: "config.yaml"}), el("pre", {class: "config", text: d.config_yaml}));
      } else {
        box.append(el("h3", {text: "options"}), el("pre", {class: "config", text: JSON.stringify(d.options, null, 2)}));
      }
    } catch (e) { showError(e.message); }
  }

  // A pipeline's answers to "did it beat SFT, where did the KL go, which answers changed", in words.
  function pct(v) { return typeof v === "number" ? (100 * v).toFixed(1) + "%" : "-"; }
  async function drawPipelineSummary(box, summary, stages) {
    const rows = summary.table.filter((r) => typeof r.wins === "number" && r.model !== "base");
    const sft = summary.table.find((r) => r.model === "sft") || {};
    box.append(el("h3", {text: "summary"}));
    for (const r of rows) {
      const decided = typeof r.win_rate_vs_sft === "number";
      box.append(el("p", {class: "verdict", "data-model": r.model, "data-win-rate": decided ? r.win_rate_vs_sft : null,
        "data-ci-low": r.ci_low, "data-ci-high": r.ci_high},
        el("b", {text: r.model + " against SFT: " + (decided ? "wins " + pct(r.win_rate_vs_sft) : "no comparison decided")}),
        (decided ? " of the decided comparisons (95% interval " + pct(r.ci_low) + " to " + pct(r.ci_high) + "; " : " (") +
        r.wins + " wins, " + r.losses + " losses, " + r.ties + " ties; judge " + summary.judge + ", " +
        summary.n_prompts + " prompts). Gold reward " + fmt(sft.gold) + " (SFT) to " + fmt(r.gold) +
        "; KL to SFT " + fmt(r.kl_to_sft) + "."));
    }
    const online = state.runs.filter((r) => stages.includes(r.id) && r.has && r.has.samples);
    for (const run of online) {
      const kl = (run.final || {})["kl/ref"];
      if (typeof kl === "number") {
        box.append(el("p", {class: "kl-last", "data-run": run.id, "data-kl": kl},
          "KL to the reference at " + run.id + "'s last update: " + fmt(kl) + " (its curve: tick the run, Curves tab)."));
      }
      try {
        const evals = (await api("/api/evals?" + q({id: run.id}))).prompts;
        if (!box.isConnected) return;  // the run was shown again meanwhile: that rendering fills its own box
        const changed = [];
        for (const p of evals) {
          const last = p.answers[p.answers.length - 1];
          if (last && p.sft_response !== null && last.response !== p.sft_response) changed.push([p, last]);
        }
        box.append(el("h4", {text: "changed answers: " + changed.length + " of " + evals.length +
          " evaluation prompts answered differently by " + run.id + " (its last evaluation) than by SFT"}));
        const t = el("table", {class: "grid answers changed-answers", "data-run": run.id},
          el("tr", {}, el("th", {text: "prompt"}), el("th", {text: "SFT"}), el("th", {text: "gold"}),
            el("th", {text: run.id}), el("th", {text: "gold"})));
        for (const [p, a] of changed) {
          t.append(el("tr", {class: "changed-answer"}, el("td", {class: "text prompt", text: p.prompt}),
            el("td", {class: "text sft", text: p.sft_response}), el("td", {text: fmt(p.sft_gold)}),
            el("td", {class: "text now", text: a.response}), el("td", {text: fmt(a.gold)})));
        }
        box.append(t);
      } catch (e) { showError(e.message); }
    }
  }

  function pipelineTable(rows) {
    const keys = [];
    for (const r of rows) for (const k of Object.keys(r)) if (!keys.includes(k) && typeof r[k] !== "object") keys.push(k);
    const t = el("table", {class: "grid"}, el("tr", {}, ...keys.map((k) => el("th", {text: k}))));
    for (const r of rows) t.append(el("tr", {}, ...keys.map((k) => el("td", {text: typeof r[k] === "number" ? fmt(r[k]) : (r[k] === undefined ? "" : String(r[k]))}))));
    return t;
  }

  async function drawDiff() {
    const box = $("diff");
    clear(box);
    if (state.picked.length < 2) return;
    try {
      const d = await api("/api/diff?" + q({id: state.picked}));
      box.append(el("h2", {text: "config diff of the picked runs"}));
      if (!d.rows.length) { box.append(el("p", {text: "the picked runs have the same options"})); return; }
      const t = el("table", {class: "grid", id: "diff-table"},
        el("tr", {}, el("th", {text: "option"}), ...d.ids.map((id) => el("th", {text: id}))));
      for (const r of d.rows) {
        t.append(el("tr", {}, el("td", {text: r.key}),
          ...r.values.map((v) => el("td", {text: v === null || v === undefined ? "-" : JSON.stringify(v)}))));
      }
      box.append(t);
    } catch (e) { showError(e.message); }
  }

  // --- metrics, live ---------------------------------------------------------------------------------------------
  async function refreshMetrics(id) {
    const run = state.byId[id];
    if (!run || !run.has.metrics) return false;
    const cur = state.metrics[id] || {rows: [], offset: 0};
    const d = await api("/api/metrics?" + q({id, offset: cur.offset}));
    const rows = d.reset ? d.rows : cur.rows.concat(d.rows);
    state.metrics[id] = {rows, offset: d.offset};
    if (run.alarm && (!state.alarms[id] || d.rows.length || d.reset)) {
      const det = await api("/api/run?" + q({id}));
      state.alarms[id] = det.alarm_list;
    }
    return d.rows.length > 0 || d.reset;
  }

  function keysOfPicked() {
    const keys = new Set();
    for (const id of state.picked) for (const r of (state.metrics[id] || {rows: []}).rows) for (const k of Object.keys(r)) keys.add(k);
    return keys;
  }

  function drawCharts() {
    const box = $("charts");
    clear(box);
    $("curves-empty").hidden = state.picked.length > 0;
    const keys = keysOfPicked();
    const legend = $("curve-legend");
    clear(legend);
    for (const id of state.picked) {
      const s = el("span", {class: "legend-item", text: id});
      s.style.borderColor = color(id);
      legend.append(s);
    }
    const more = $("more-metrics");
    const chosen = more.value;
    clear(more);
    more.append(el("option", {value: "", text: "..."}));
    for (const k of [...keys].sort()) if (!HEADLINE.has(k) && k !== "step" && !state.extra.includes(k)) more.append(el("option", {value: k, text: k}));
    more.value = "";
    void chosen;
    const panels = PANELS.filter(([k]) => keys.has(k)).concat(state.extra.map((k) => [k, k]));
    for (const [key, title] of panels) {
      const series = state.picked.map((id) => ({
        name: id, color: color(id),
        points: (state.metrics[id] || {rows: []}).rows.filter((r) => typeof r[key] === "number" && typeof r.step === "number")
          .map((r) => [r.step, r[key]]),
      })).filter((s) => s.points.length);
      const markers = [];
      for (const id of state.picked) for (const a of state.alarms[id] || []) {
        if (typeof a.step === "number") markers.push({x: a.step, color: color(id), label: a.alarm + " (" + id + ", step " + a.step + "): " + a.message});
      }
      box.append(chart({title, key, series, markers, xlabel: "step"}));
    }
  }

  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) { const d = Math.abs(lo) || 1; lo -= d * 0.5; hi += d * 0.5; }
    const span = hi - lo, step0 = Math.pow(10, Math.floor(Math.log10(span / n)));
    const step = [1, 2, 5, 10].map((m) => m * step0).find((s) => span / s <= n) || step0 * 10;
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Math.abs(t) < step * 1e-9 ? 0 : t);
    return {lo, hi, ticks};
  }

  // One chart: series [{name, color, points: [[x, y]], dash}], markers [{x, color, label}] (alarms).
  function chart({title, key, series, markers, xlabel, legend}) {
    const W = 460, H = 230, L = 56, R = 12, T = 24, B = 32;
    const wrap = el("figure", {class: "chart", "data-metric": key});
    const xs = series.flatMap((s) => s.points.map((p) => p[0])).concat((markers || []).map((m) => m.x));
    const ys = series.flatMap((s) => s.points.map((p) => p[1]));
    const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, class: "plot", "data-metric": key, role: "img"});
    root.append(svg("text", {x: L, y: 15, class: "title", text: title}));
    if (!ys.length) { wrap.append(root); return wrap; }
    const xr = niceTicks(Math.min(...xs), Math.max(...xs), 6), yr = niceTicks(Math.min(...ys), Math.max(...ys), 5);
    const X = (x) => L + (x - xr.lo) / (xr.hi - xr.lo || 1) * (W - L - R);
    const Y = (y) => H - B - (y - yr.lo) / (yr.hi - yr.lo || 1) * (H - T - B);
    for (const t of yr.ticks) {
      root.append(svg("line", {x1: L, x2: W - R, y1: Y(t), y2: Y(t), class: "grid"}));
      root.append(svg("text", {x: L - 4, y: Y(t) + 3, class: "tick y", text: fmt(t, undefined)}));
    }
    for (const t of xr.ticks) root.append(svg("text", {x: X(t), y: H - B + 13, class: "tick x", text: String(+t.toPrecision(6))}));
    root.append(svg("text", {x: W - R, y: H - 4, class: "axis", text: xlabel}));
    for (const m of markers || []) {
      const g = svg("g", {class: "alarm-marker", "data-step": m.x});
      g.append(svg("line", {x1: X(m.x), x2: X(m.x), y1: T, y2: H - B, stroke: m.color}));
      g.append(svg("text", {x: X(m.x) + 2, y: T + 9, class: "alarm-label", text: "!"}));
      g.append(svg("title", {text: "alarm " + m.label}));
      root.append(g);
    }
    for (const s of series) {
      const pts = s.points.slice().sort((a, b) => a[0] - b[0]);
      const g = svg("g", {class: "series", "data-run": s.name, "data-count": pts.length,
                          "data-last": pts[pts.length - 1][1], "data-last-step": pts[pts.length - 1][0]});
      const d = pts.map((p, i) => (i ? "L" : "M") + X(p[0]).toFixed(1) + " " + Y(p[1]).toFixed(1)).join(" ");
      const path = svg("path", {d, stroke: s.color, fill: "none", "stroke-width": 1.6});
      if (s.dash) path.setAttribute("stroke-dasharray", "5 3");
      g.append(path);
      if (pts.length <= 40 || s.dots) for (const p of pts) g.append(svg("circle", {cx: X(p[0]), cy: Y(p[1]), r: 2.2, fill: s.color}));
      root.append(g);
    }
    // hover: the value of every series at the nearest x
    const guide = svg("line", {y1: T, y2: H - B, class: "guide", visibility: "hidden"});
    root.append(guide);
    const tip = el("div", {class: "tip"});
    tip.hidden = true;
    root.addEventListener("mousemove", (ev) => {
      const box = root.getBoundingClientRect();
      const x = xr.lo + ((ev.clientX - box.left) * W / box.width - L) / (W - L - R) * (xr.hi - xr.lo);
      const lines = [];
      let best = null;
      for (const s of series) {
        let near = null;
        for (const p of s.points) if (near === null || Math.abs(p[0] - x) < Math.abs(near[0] - x)) near = p;
        if (near) { lines.push([s, near]); if (best === null || Math.abs(near[0] - x) < Math.abs(best - x)) best = near[0]; }
      }
      if (best === null) return;
      guide.setAttribute("x1", X(best)); guide.setAttribute("x2", X(best)); guide.setAttribute("visibility", "visible");
      clear(tip);
      tip.append(el("div", {text: xlabel + " " + best}));
      for (const [s, p] of lines) {
        const row = el("div", {text: s.name + ": " + fmt(p[1]) + (p[0] !== best ? " (at " + p[0] + ")" : "")});
        row.style.color = s.color;
        tip.append(row);
      }
      tip.hidden = false;
    });
    root.addEventListener("mouseleave", () => { guide.setAttribute("visibility", "hidden"); tip.hidden = true; });
    wrap.append(root, tip);
    if (legend) {
      const cap = el("figcaption", {class: "legend"});
      for (const s of series) {
        const item = el("span", {class: "legend-item" + (s.dash ? " dashed" : ""), text: s.name});
        item.style.borderColor = s.color;
        cap.append(item);
      }
      wrap.append(cap);
    }
    return wrap;
  }

  async function tick() {
    if (!$("live").checked || document.hidden || state.busy) return;
    state.busy = true;
    try {
      await loadRuns();
      let changed = false;
      for (const id of state.picked) if (await refreshMetrics(id)) changed = true;
      if (changed && state.tab === "curves") drawCharts();
      if (state.tab === "samples") refreshSampleSteps();
      showError("");
    } catch (e) { showError(e.message); }
    state.busy = false;
  }

  // --- samples -----------------------------------------------------------------------------------------------------
  function fillRunSelect(selectId, has, load) {
    const sel = $(selectId);
    const before = sel.value;
    const ids = state.runs.filter((r) => r.has[has]).map((r) => r.id);
    ids.sort((a, b) => (state.picked.includes(b) - state.picked.includes(a)));
    clear(sel);
    for (const id of ids) sel.append(el("option", {value: id, text: id}));
    if (ids.includes(before)) sel.value = before;
    if (ids.length) load(); else clear($(selectId === "sample-run" ? "samples" : "eval-answers"));
  }

  async function loadSamples(step) {
    const id = $("sample-run").value;
    if (!id) return;
    const stepVal = step !== undefined ? step : $("sample-step").value;
    try {
      const d = await api("/api/rollouts?" + q({id, step: stepVal, q: $("sample-q").value, sort: $("sample-sort").value}));
      fillSteps(d.steps, d.step);
      $("sample-count").textContent = d.total + " episode" + (d.total === 1 ? "" : "s") + (d.rows.length < d.total ? " (first " + d.rows.length + ")" : "");
      drawSamples(d.rows);
    } catch (e) { showError(e.message); }
  }

  function fillSteps(steps, current) {
    const sel = $("sample-step");
    clear(sel);
    for (const s of steps) sel.append(el("option", {value: s, text: String(s)}));
    sel.append(el("option", {value: "all", text: "all updates"}));
    sel.value = String(current === null ? "all" : current);
  }

  async function refreshSampleSteps() {
    const id = $("sample-run").value;
    const run = state.byId[id];
    if (!run || run.status !== "running") return;
    const onLast = $("sample-step").selectedIndex === $("sample-step").options.length - 2;
    const d = await api("/api/rollouts?" + q({id, step: "all", limit: 1}));
    const have = [...$("sample-step").options].length - 1;
    if (d.steps.length !== have) {
      if (onLast) loadSamples(d.steps[d.steps.length - 1]); else fillSteps(d.steps, $("sample-step").value);
    }
  }

  function klColor(k, scale) {
    const a = Math.min(1, Math.abs(k) / (scale || 1));
    return k >= 0 ? `rgba(214, 39, 40, ${(a * 0.85).toFixed(3)})` : `rgba(31, 119, 180, ${(a * 0.85).toFixed(3)})`;
  }

  function drawSamples(rows) {
    const box = $("samples");
    clear(box);
    let scale = 0;
    for (const r of rows) for (const k of r.kl) scale = Math.max(scale, Math.abs(k));
    box.append(el("p", {class: "hint", text: "colour scale: |KL| " + fmt(scale) + " nats per token = full colour"}));
    for (const r of rows) {
      const heat = el("div", {class: "tokens heatmap"});
      r.tokens.forEach((t, i) => {
        const k = r.kl[i] === undefined ? 0 : r.kl[i];
        const span = el("span", {class: "tok", "data-kl": k, title: "token " + i + ": KL " + fmt(k, 5), text: t});
        span.style.backgroundColor = klColor(k, scale);
        heat.append(span);
      });
      const parts = el("span", {class: "parts"});
      for (const [k, v] of Object.entries(r.reward_parts || {})) parts.append(el("span", {class: "part", text: k + " " + fmt(v)}));
      const card = el("article", {class: "sample", "data-step": r.step, "data-index": r.index},
        el("div", {class: "meta"},
          el("span", {text: "update " + r.step + " · #" + r.index}),
          el("span", {class: "reward", text: "reward " + fmt(r.reward)}), parts,
          el("span", {class: "adv", text: "advantage " + fmt(r.advantage)}),
          el("span", {class: "kl", text: "KL sum " + fmt(r.kl_sum) + " · max " + fmt(r.kl_max)}),
          el("span", {class: r.finished ? "fin" : "unfin", text: r.finished ? "ended (EOS)" : "cut at the length limit"})),
        el("div", {class: "prompt"}, el("b", {text: "prompt "}), el("span", {class: "text", text: r.prompt})),
        heat);
      box.append(card);
    }
    if (!rows.length) box.append(el("p", {text: "no episodes match"}));
  }

  function stepBy(delta) {
    const sel = $("sample-step");
    const n = sel.options.length - 1;  // the last option is "all"
    let i = sel.selectedIndex;
    if (i >= n) i = delta > 0 ? -1 : n;
    i = Math.max(0, Math.min(n - 1, i + delta));
    if (n > 0) { sel.selectedIndex = i; loadSamples(); }
  }

  // --- eval answers by prompt ------------------------------------------------------------------------------------------
  let evalData = [];
  async function loadEvals() {
    const id = $("eval-run").value;
    if (!id) return;
    try {
      evalData = (await api("/api/evals?" + q({id}))).prompts;
      drawEvalPrompts();
    } catch (e) { showError(e.message); }
  }
  function drawEvalPrompts() {
    const list = $("eval-prompts");
    clear(list);
    const f = $("eval-q").value.trim().toLowerCase();
    evalData.forEach((p, i) => {
      if (f && !p.prompt.toLowerCase().includes(f)) return;
      const changes = p.answers.filter((a, j) => j > 0 && a.response !== p.answers[j - 1].response).length;
      list.append(el("li", {}, el("a", {href: "#", "data-i": i, text: p.prompt,
        onclick: (e) => { e.preventDefault(); drawEvalAnswers(i); }}),
        el("span", {class: "count", text: " " + changes + " change" + (changes === 1 ? "" : "s")})));
    });
  }
  function drawEvalAnswers(i) {
    const p = evalData[i];
    const box = $("eval-answers");
    clear(box);
    box.append(el("h3", {text: p.prompt}));
    const keys = [];
    for (const a of p.answers) for (const k of Object.keys(a)) if (!["step", "response", "finished"].includes(k) && !k.startsWith("sft_") && !keys.includes(k)) keys.push(k);
    const t = el("table", {class: "grid answers"}, el("tr", {}, el("th", {text: "step"}), el("th", {text: "answer"}), ...keys.map((k) => el("th", {text: k}))));
    if (p.sft_response !== null) t.append(el("tr", {class: "sft"}, el("td", {text: "SFT"}), el("td", {class: "text", text: p.sft_response}), ...keys.map((k) => el("td", {text: k === "gold" ? fmt(p.sft_gold) : ""}))));
    p.answers.forEach((a, j) => {
      const changed = j > 0 && a.response !== p.answers[j - 1].response;
      t.append(el("tr", {class: changed ? "changed" : ""}, el("td", {text: String(a.step)}), el("td", {class: "text", text: a.response}),
        ...keys.map((k) => el("td", {text: fmt(a[k])}))));
    });
    box.append(t);
  }

  // --- overoptimisation ------------------------------------------------------------------------------------------------
  async function drawOveropt() {
    const box = $("overopt");
    clear(box);
    const runs = state.runs.filter((r) => r.has.overopt);
    if (!runs.length) { box.append(el("p", {text: "no overopt.json under the runs folder (rlhf observe overopt --out ...)"})); return; }
    for (const run of runs) {
      try {
        const d = (await api("/api/overopt?" + q({id: run.id}))).curves || {};
        for (const [part, label] of [["bon", "best-of-N"], ["ppo", "PPO"]]) {
          const c = d[part];
          if (!c || !Array.isArray(c.points)) continue;
          const series = [];
          for (const [k, col] of [["proxy", "#ff7f0e"], ["gold", "#2ca02c"]]) {
            const withK = c.points.filter((p) => typeof p[k] === "number");
            const base = withK.length ? withK[0][k] : 0;  // gains over the first point, as the fits are
            const pts = withK.map((p) => [p.d, p[k] - base]);
            if (pts.length) series.push({name: k + " (measured)", color: col, points: pts, dots: true});
            const f = c["fit_" + k];
            if (f && pts.length) {
              const dmax = Math.max(...pts.map((p) => p[0]));
              const fit = [];
              for (let i = 0; i <= 40; i++) {
                const x = dmax * i / 40;
                const g = f.form === "bon" ? x * (f.alpha - f.beta * x) : (x > 0 ? x * (f.alpha - f.beta * Math.log(x)) : 0);
                fit.push([x, g]);
              }
              series.push({name: k + " (fit)", color: col, points: fit, dash: true});
            }
          }
          box.append(chart({title: run.id + ": " + label + " (gain over the start)", key: "overopt/" + part, series,
                            markers: [], xlabel: "d = sqrt(KL)", legend: true}));
        }
      } catch (e) { showError(e.message); }
    }
  }

  // --- playground ---------------------------------------------------------------------------------------------------------
  async function loadModels() {
    try {
      const d = await api("/api/models");
      const box = $("play-models");
      const had = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
      clear(box);
      for (const m of d.models) {
        const cb = el("input", {type: "checkbox", value: m.id, class: "play-model"});
        cb.checked = had.has(m.id);
        box.append(el("label", {}, cb, " " + m.id + " ", el("small", {text: "(" + m.command + ")"})));
      }
      const rm = $("play-rm");
      const cur = rm.value;
      clear(rm);
      rm.append(el("option", {value: "", text: "none"}));
      for (const m of d.reward_models) rm.append(el("option", {value: m.id, text: m.id}));
      rm.value = cur;
    } catch (e) { showError(e.message); }
  }

  // The answers stream in as JSON lines (see /api/play): each model's column fills in token by token, then its scores.
  async function play() {
    const models = [...document.querySelectorAll(".play-model:checked")].map((i) => i.value);
    const prompt = $("play-prompt").value;
    if (!models.length || models.length > 4) { $("play-status").textContent = "pick one to four models"; return; }
    $("play-status").textContent = "answering (the first request loads the models)...";
    $("play-go").disabled = true;
    const box = $("play-answers");
    clear(box);
    const cols = models.map((m) => {
      const col = {text: el("div", {class: "text"}), meta: el("div", {class: "meta", text: "waiting"}), tokens: 0};
      col.node = el("article", {class: "answer", "data-model": m, "data-state": "waiting"}, el("h4", {text: m}), col.text, col.meta);
      box.append(col.node);
      return col;
    });
    const handle = (e) => {
      const col = cols[models.indexOf(e.model)];
      if (e.event === "error") throw new Error(e.error);
      if (!col) return;
      if (e.event === "token") {
        col.text.append(document.createTextNode(e.delta));  // text, never HTML
        col.tokens += 1;
        col.node.dataset.tokens = String(col.tokens);
        col.node.dataset.state = "streaming";
        col.meta.textContent = "answering...";
      } else if (e.event === "answer") {
        col.text.textContent = e.response;  // the worker's own decoding of the whole answer
        col.node.dataset.state = "answered";
        col.meta.textContent = e.finished ? "" : "(ran into the token limit)";
      } else if (e.event === "score") {
        const meta = [];
        if (typeof e.reward === "number") meta.push("reward " + fmt(e.reward));
        if (typeof e.gold === "number") meta.push("gold " + fmt(e.gold));
        col.meta.textContent = meta.join(" · ");
        col.node.dataset.state = "scored";
      }
    };
    try {
      const resp = await fetch("/api/play", {method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": CSRF},
        body: JSON.stringify({models, prompt, max_new_tokens: parseInt($("play-max").value, 10) || 48,
                              reward_model: $("play-rm").value || null})});
      if (!resp.ok) {
        let body = null;
        try { body = await resp.json(); } catch (e) { body = null; }
        throw new Error((body && body.error) || ("HTTP " + resp.status));
      }
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let pending = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (value) pending += decoder.decode(value, {stream: true});
        let cut;
        while ((cut = pending.indexOf("\n")) >= 0) {
          const line = pending.slice(0, cut);
          pending = pending.slice(cut + 1);
          if (line.trim()) handle(JSON.parse(line));
        }
        if (done) break;
      }
      for (const col of cols) if (col.node.dataset.state !== "scored") col.node.dataset.state = "done";
      $("play-status").textContent = "";
    } catch (e) { $("play-status").textContent = e.message; }
    $("play-go").disabled = false;
  }

  // --- wiring -------------------------------------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", async () => {
    document.querySelectorAll(".tab").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
    $("filter").addEventListener("input", drawRuns);
    $("clear-picks").addEventListener("click", () => { state.picked = []; drawRuns(); drawDiff(); drawCharts(); });
    $("more-metrics").addEventListener("change", (e) => { if (e.target.value) { state.extra.push(e.target.value); drawCharts(); } });
    $("sample-run").addEventListener("change", () => loadSamples(""));
    $("sample-step").addEventListener("change", () => loadSamples());
    $("sample-sort").addEventListener("change", () => loadSamples());
    let timer = null;
    $("sample-q").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => loadSamples(), 250); });
    $("step-prev").addEventListener("click", () => stepBy(-1));
    $("step-next").addEventListener("click", () => stepBy(1));
    $("eval-run").addEventListener("change", loadEvals);
    $("eval-q").addEventListener("input", drawEvalPrompts);
    $("play-go").addEventListener("click", play);
    try { await loadRuns(); } catch (e) { showError(e.message); }
    document.body.dataset.ready = "1";
    setInterval(tick, 2000);
  });
})();
