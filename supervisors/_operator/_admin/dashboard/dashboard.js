// The live dashboard of the aura-actors admin API.
//
// It reads one event stream, GET /api/resilience/stream (Server-Sent Events), through fetch()
// rather than EventSource, because EventSource cannot send the Authorization header a read
// token needs.  The stream starts with a "snapshot" event (every section and its sequence
// number), then sends "update" events (one section each) with consecutive sequence numbers;
// a gap means something was lost, so the page reconnects and starts from a new snapshot.
// Everything is drawn with textContent: nothing the server sends is ever parsed as HTML.
"use strict";

(() => {
  const API = "/api/resilience";
  const TOKEN_KEY = "aura-admin-token";

  // What the page knows; exposed for the curious (and for the browser test).
  const state = {
    seq: 0,
    sections: {},
    events: 0,
    snapshots: 0,
    heartbeats: 0,
    connection: "connecting",
    loadedAt: Date.now(),
  };
  window.auraDashboard = state;

  const byId = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else if (key === "onclick") node.addEventListener("click", value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // ------------------------------------------------------------------ token and mode

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function authHeaders(extra) {
    const headers = Object.assign({}, extra);
    const value = token();
    if (value) headers.Authorization = "Bearer " + value;
    return headers;
  }

  function showMode() {
    const mode = byId("mode");
    if (state.connection === "token") {
      mode.textContent = "This admin API needs a token to read: enter it above.";
      mode.className = "mode warn";
    } else if (token()) {
      mode.textContent = "Actions enabled: they need the write token (a read token only reads).";
      mode.className = "mode";
    } else {
      mode.textContent = "Read-only: enter the admin token to reset, isolate or acknowledge.";
      mode.className = "mode";
    }
    for (const button of document.querySelectorAll("button.action")) {
      button.disabled = !token();
    }
  }

  byId("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = byId("token").value.trim();
    byId("token").value = "";
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    showMode();
    restart();
  });
  byId("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showMode();
    restart();
  });

  let toastTimer = null;
  function toast(text, kind) {
    const box = byId("toast");
    box.textContent = text;
    box.className = "toast " + (kind || "ok");
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { box.hidden = true; }, 5000);
  }

  // ------------------------------------------------------------------ the stream

  let controller = null;
  let retryMs = 2000;
  let failures = 0;
  let reconnectTimer = null;

  function setConnection(value) {
    state.connection = value;
    const node = byId("connection");
    node.textContent = value === "token" ? "needs a token" : value;
    node.className = "connection " + value;
    showMode();
  }

  function restart() {
    if (controller) controller.abort();
    clearTimeout(reconnectTimer);
    connect();
  }

  function reconnect(why) {
    setConnection("reconnecting");
    failures += 1;
    const wait = Math.min(retryMs * Math.pow(2, Math.min(failures - 1, 4)), 30000);
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(connect, wait);
    byId("updated").textContent = why ? "(" + why + ")" : "";
  }

  async function connect() {
    const mine = new AbortController();
    controller = mine;
    setConnection("connecting");
    let response;
    try {
      response = await fetch(API + "/stream", {
        headers: authHeaders({ Accept: "text/event-stream" }),
        signal: mine.signal,
        cache: "no-store",
      });
    } catch (error) {
      if (mine.signal.aborted) return;
      reconnect("offline");
      return;
    }
    if (response.status === 401 || response.status === 403) {
      setConnection("token"); // wait for the operator to give one
      return;
    }
    if (!response.ok || !response.body) {
      reconnect("answered " + response.status);
      return;
    }
    setConnection("live");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (!handle(block)) {
            mine.abort();
            connect(); // a gap: start again from a snapshot
            return;
          }
        }
      }
    } catch (error) {
      if (mine.signal.aborted) return;
    }
    if (!mine.signal.aborted) reconnect("the stream ended");
  }

  // One event block; false when the sequence has a gap.
  function handle(block) {
    let event = "message";
    let id = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (line === "" || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
      else if (field === "retry" && /^[0-9]+$/.test(value)) retryMs = Number(value);
    }
    failures = 0;
    byId("updated").textContent = "updated " + new Date().toLocaleTimeString();
    if (data.length === 0) {
      state.heartbeats += 1;
      return true;
    }
    const message = JSON.parse(data.join("\n"));
    if (event === "snapshot") {
      state.sections = message.sections;
      state.seq = message.seq;
      state.snapshots += 1;
      renderAll();
    } else if (event === "update") {
      if (message.seq !== state.seq + 1) return false;
      state.seq = message.seq;
      state.sections[message.section] = message.data;
      render(message.section);
    }
    state.events += 1;
    state.lastId = id;
    byId("seq").textContent = String(state.seq);
    return true;
  }

  // ------------------------------------------------------------------ actions

  async function act(path, label) {
    if (!token()) {
      toast(label + ": actions need the admin token", "error");
      return;
    }
    let response;
    try {
      response = await fetch(API + path, {
        method: "POST",
        headers: authHeaders({ "Content-Type": "application/json" }),
        body: "{}",
      });
    } catch (error) {
      toast(label + ": the admin API cannot be reached", "error");
      return;
    }
    if (response.ok) {
      toast(label + ": done");
      return;
    }
    let message = "answered " + response.status;
    try {
      const body = await response.json();
      if (body && body.error) message = body.error.message;
    } catch (error) { /* not JSON: keep the status */ }
    toast(label + ": " + message, "error");
  }

  function actionButton(text, path, label) {
    return el("button", {
      class: "action",
      type: "button",
      text,
      disabled: !token(),
      "data-action": text.toLowerCase(),
      onclick: () => act(path, label),
    });
  }

  // ------------------------------------------------------------------ drawing

  const RENDER = {
    health: renderHealth,
    services: renderServices,
    alerts: renderAlerts,
    sagas: renderSagas,
    tree: renderTree,
  };

  function renderAll() {
    for (const name of Object.keys(RENDER)) render(name);
  }

  function render(name) {
    const draw = RENDER[name];
    if (draw && state.sections[name] !== undefined) draw(state.sections[name]);
  }

  // Put `rows` (freshly built) into `body`, keeping the rows already there whose key (the
  // `attribute`) is still present and changing only their cells that differ: a button the
  // operator is about to click is not replaced under the pointer by an update.
  function reconcile(body, rows, attribute) {
    const old = new Map(Array.from(body.children, (tr) => [tr.getAttribute(attribute), tr]));
    let previous = null;
    for (const fresh of rows) {
      const key = fresh.getAttribute(attribute);
      let row = old.get(key);
      if (row) {
        old.delete(key);
        patch(row, fresh);
      } else {
        row = fresh;
      }
      const wanted = previous ? previous.nextSibling : body.firstChild;
      if (wanted !== row) body.insertBefore(row, wanted);
      previous = row;
    }
    for (const row of old.values()) row.remove();
    body.closest("table").hidden = rows.length === 0;
  }

  function patch(row, fresh) {
    for (const name of fresh.getAttributeNames()) {
      if (row.getAttribute(name) !== fresh.getAttribute(name)) {
        row.setAttribute(name, fresh.getAttribute(name));
      }
    }
    const cells = row.children;
    const next = Array.from(fresh.children);
    if (cells.length !== next.length) {
      row.replaceChildren(...next);
      return;
    }
    next.forEach((cell, i) => {
      if (!cells[i].isEqualNode(cell)) cells[i].replaceWith(cell);
    });
  }

  function number(value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    return Number(value).toFixed(digits === undefined ? 0 : digits);
  }

  function seconds(value) {
    if (value === null || value === undefined) return "–";
    if (value < 1) return (value * 1000).toFixed(value < 0.01 ? 2 : 0) + " ms";
    return value.toFixed(2) + " s";
  }

  function clock(wall) {
    return wall ? new Date(wall * 1000).toLocaleTimeString() : "–";
  }

  function renderHealth(health) {
    const badge = byId("health");
    badge.textContent = health.status;
    badge.className = "badge " + health.status;
    badge.title = (health.reasons || []).join("\n");
    const problems = byId("problems");
    problems.hidden = !(health.problems && health.problems.length);
    problems.textContent = (health.problems || []).join(" · ");
  }

  function renderServices(services) {
    const body = document.querySelector("#services tbody");
    const rows = services.map((s) => {
      const latency = Object.entries(s.latency || {})
        .map(([key, value]) => key + " " + seconds(value))
        .join(" · ");
      const breaker = el("span", { class: "badge " + s.breaker, text: s.breaker.replace("_", "-") });
      if (s.breaker === "open" && s.retry_after !== null) {
        breaker.title = "admits a probe in " + s.retry_after.toFixed(1) + " s";
      }
      const actions = el("td", { class: "actions" });
      if (s.provider) {
        const name = encodeURIComponent(s.service);
        actions.append(
          actionButton("Reset", "/providers/" + name + "/reset", "reset " + s.service),
          actionButton("Isolate", "/providers/" + name + "/isolate", "isolate " + s.service),
        );
      }
      return el(
        "tr",
        { "data-service": s.service },
        el("td", { class: "name", text: s.service }),
        el("td", { "data-field": "breaker" }, breaker),
        el("td", { "data-field": "health" },
          el("span", { class: "badge " + (s.health || "unknown"), text: s.health || "unknown" })),
        el("td", { class: "num", "data-field": "calls", text: number(s.calls) }),
        el("td", { class: "num", "data-field": "errors", text: number(s.errors) }),
        el("td", { class: "num", "data-field": "error-rate", text: number(s.error_rate_per_min, 1) }),
        el("td", { class: "num", "data-field": "error-ratio",
          text: s.error_ratio === null ? "–" : (s.error_ratio * 100).toFixed(1) + " %" }),
        el("td", { class: "latency", text: latency || "–" }),
        el("td", { class: "num", "data-field": "budget", text: number(s.budget) }),
        el("td", { class: "num", "data-field": "bulkhead",
          text: s.running === null ? "–" : s.running + " running, " + s.queued + " queued" }),
        actions,
      );
    });
    reconcile(body, rows, "data-service");
    byId("services-empty").hidden = rows.length > 0;
    byId("count-services").textContent = String(services.length);
    byId("count-open").textContent = String(services.filter((s) => s.breaker !== "closed").length);
  }

  function renderAlerts(alerts) {
    const active = alerts.active || [];
    const body = document.querySelector("#alerts tbody");
    const rows = active.map((a) => el(
      "tr",
      { "data-alert": String(a.id), "data-rule": a.rule },
      el("td", {}, el("span", { class: "badge " + a.severity, text: a.severity })),
      el("td", { text: a.rule }),
      el("td", { text: a.service }),
      el("td", { class: "message", text: a.message }),
      el("td", { text: clock(a.raised_wall) }),
      el("td", { text: a.acknowledged_at === null ? "active" : "acknowledged" }),
      el("td", { class: "actions" }, a.acknowledged_at === null
        ? actionButton("Acknowledge", "/alerts/" + a.id + "/acknowledge", "acknowledge alert " + a.id)
        : null),
    ));
    reconcile(body, rows, "data-alert");
    byId("alerts-empty").hidden = rows.length > 0;
    byId("count-alerts").textContent = String(active.length);
  }

  function renderSagas(sagas) {
    const outcomes = byId("saga-outcomes");
    const pairs = Object.entries(sagas.outcomes || {});
    outcomes.replaceChildren(...pairs.map(([name, value]) => el(
      "div",
      { class: "outcome " + name + (value ? "" : " zero") },
      el("dd", { "data-outcome": name, text: String(value) }),
      el("dt", { text: name.replace("_", " ") }),
    )));
    const body = document.querySelector("#sagas tbody");
    const rows = (sagas.items || []).map((s) => el(
      "tr",
      { "data-saga": s.saga_id },
      el("td", { class: "name", text: s.saga_id }),
      el("td", { text: s.definition }),
      el("td", {}, el("span", { class: "badge " + s.phase, text: s.phase.replace("_", " ") })),
      el("td", { class: "num", text: String(s.next_step) }),
      // A journal shared by a fleet names the instance driving the saga (its id's start shown,
      // the whole id on hover); a journal of one instance has no owners.
      el("td", s.owner
        ? { "data-field": "owner", class: "id", title: s.owner, text: s.owner.slice(0, 12) }
        : { "data-field": "owner", class: "muted", title: "a journal of one instance", text: "–" }),
    ));
    reconcile(body, rows, "data-saga");
    const empty = byId("sagas-empty");
    empty.hidden = rows.length > 0;
    empty.textContent = sagas.available ? "No unfinished saga." : "No saga coordinator answers here.";
    byId("count-sagas").textContent = sagas.available ? String(sagas.total) : "–";
  }

  function treeNode(node) {
    const label = el(
      "div",
      { class: "node " + node.kind, "data-path": node.path || "(root)" },
      el("span", { class: "name", text: node.name || "(root)" }),
      el("span", { class: "badge " + node.state, text: node.state }),
      node.restarts ? el("span", { class: "restarts", text: node.restarts + " restarts" }) : null,
      node.kind === "actor" && node.mailbox_depth
        ? el("span", { class: "muted", text: node.mailbox_depth + " queued" })
        : null,
      node.kind === "supervisor" && node.strategy ? el("span", { class: "muted", text: node.strategy }) : null,
    );
    const children = node.children || [];
    if (!children.length) return el("li", {}, label);
    return el("li", {}, label, el("ul", {}, ...children.map(treeNode)));
  }

  function renderTree(tree) {
    const box = byId("tree");
    box.replaceChildren(tree ? el("ul", {}, treeNode(tree)) : el("p", { class: "empty", text: "No tree." }));
  }

  showMode();
  connect();
})();
