// tenantd console: plain JavaScript over the admin API. Every value from the API is put into
// the page as text (textContent), never as HTML: tenant labels and errors are anyone's input.
"use strict";

const TOKEN_KEY = "tenantd.token";
const REFRESH_MS = 5000;
let refreshTimer = null;
let tenantQuery = { status: "", server: "", q: "", after: "", pages: [] };

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const badge = (text) => h("span", { class: "badge " + String(text) }, String(text));
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
const bytes = (n) => {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
};

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = Object.assign({ Authorization: `Bearer ${token}` }, options.headers || {});
  if (options.json !== undefined) {
    headers["content-type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  const response = await fetch(path, { method: options.method || "GET", headers, body: options.body });
  if (response.status === 401) {
    signOut("The token was refused; sign in again.");
    throw new ApiError(401, null);
  }
  if (options.raw) {
    if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
    return response;
  }
  const text = await response.text();
  const body = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(refreshTimer);
  document.getElementById("view").replaceChildren();
  document.getElementById("nav").hidden = true;
  document.getElementById("sign-in").hidden = false;
  document.getElementById("sign-in-error").textContent = message || "";
  document.getElementById("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const input = document.getElementById("token");
  sessionStorage.setItem(TOKEN_KEY, input.value);
  try {
    await api("/v1/servers");
  } catch (e) {
    if (e.status !== 401) signOut(`Cannot sign in: ${e.message}`);
    return;
  }
  input.value = "";
  document.getElementById("sign-in").hidden = true;
  document.getElementById("nav").hidden = false;
  route();
}

// Views ------------------------------------------------------------------------------------

async function fleetView(view) {
  const [servers, page] = await Promise.all([api("/v1/servers"), api("/v1/tenants?" + tenantParams())]);
  const serverRows = servers.map((s) =>
    h("tr", { "data-server": s.name },
      h("td", {}, s.name),
      h("td", {}, `${s.host}:${s.port}`),
      h("td", {}, badge(s.status)),
      h("td", {}, badge(s.health), s.health_error ? h("div", { class: "error" }, s.health_error) : null),
      h("td", {}, s.health_latency_ms === null || s.health_latency_ms === undefined ? "—" : `${s.health_latency_ms.toFixed(1)} ms`),
      h("td", {}, `${s.tenants} / ${s.max_tenants === null || s.max_tenants === undefined ? "∞" : s.max_tenants}`),
      h("td", {}, s.tls ? s.tls.sslmode : "—")));
  const serverSelect = h("select", { id: "filter-server", onchange: (e) => filter("server", e.target.value) },
    h("option", { value: "" }, "all servers"),
    servers.map((s) => h("option", { value: s.name, selected: tenantQuery.server === s.name }, s.name)));
  const statuses = ["PENDING", "CREATING", "READY", "ERROR", "SUSPENDED", "DELETING", "DELETED"];
  const statusSelect = h("select", { id: "filter-status", onchange: (e) => filter("status", e.target.value) },
    h("option", { value: "" }, "live tenants"),
    statuses.map((s) => h("option", { value: s, selected: tenantQuery.status === s }, s)));
  const search = h("input", { id: "filter-text", type: "search", placeholder: "slug contains…", value: tenantQuery.q });
  search.addEventListener("change", (e) => filter("q", e.target.value.trim()));
  const tenantRows = page.tenants.map((t) =>
    h("tr", { class: "link", "data-slug": t.slug, onclick: () => { location.hash = `#/tenants/${encodeURIComponent(t.slug)}`; } },
      h("td", {}, h("a", { href: `#/tenants/${encodeURIComponent(t.slug)}` }, t.slug)),
      h("td", {}, badge(t.status)),
      h("td", {}, t.server || "—"),
      h("td", {}, String(t.schema_version)),
      h("td", {}, when(t.created_at)),
      h("td", { class: "error" }, t.last_error || "")));
  const pager = h("div", { class: "actions" },
    h("button", { type: "button", disabled: tenantQuery.pages.length === 0, onclick: () => { tenantQuery.after = tenantQuery.pages.pop() || ""; render(); } }, "‹ Previous"),
    h("button", { type: "button", disabled: !page.next, onclick: () => { tenantQuery.pages.push(tenantQuery.after); tenantQuery.after = page.next; render(); } }, "Next ›"));
  view.replaceChildren(
    h("h2", {}, "Servers"),
    h("table", { id: "servers" },
      h("thead", {}, h("tr", {}, ["Name", "Address", "Status", "Health", "Latency", "Tenants / capacity", "TLS"].map((c) => h("th", {}, c)))),
      h("tbody", {}, serverRows)),
    h("h2", {}, "Tenants"),
    h("div", { class: "filters" }, statusSelect, serverSelect, search),
    h("table", { id: "tenants" },
      h("thead", {}, h("tr", {}, ["Slug", "Status", "Server", "Schema", "Created", "Last error"].map((c) => h("th", {}, c)))),
      h("tbody", {}, tenantRows.length ? tenantRows : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No tenants match.")))),
    pager);
}

function tenantParams() {
  const p = new URLSearchParams({ limit: "50" });
  for (const k of ["status", "server", "q", "after"]) if (tenantQuery[k]) p.set(k, tenantQuery[k]);
  return p.toString();
}

function filter(key, value) {
  tenantQuery[key] = value;
  tenantQuery.after = "";
  tenantQuery.pages = [];
  render();
}

async function tenantView(view, slug) {
  const path = `/v1/tenants/${encodeURIComponent(slug)}`;
  const [t, events] = await Promise.all([api(path), api(`${path}/events?limit=200`)]);
  const lastBackup = [...events].reverse().find((e) => e.kind === "backup.created");
  const message = h("p", { id: "action-result", role: "status" });
  const act = (label, fn, cls) => h("button", { type: "button", class: cls, onclick: async () => {
    message.textContent = `${label}…`;
    message.className = "muted";
    try { await fn(); message.textContent = `${label}: done`; render(); } catch (e) { message.textContent = `${label}: ${e.message}`; message.className = "error"; }
  } }, label);
  const confirmInput = h("input", { id: "confirm-delete", placeholder: `type ${t.slug} to delete` });
  const actions = h("div", { class: "actions" },
    t.status === "ERROR" ? act("Retry", () => api(`${path}/retry`, { method: "POST" })) : null,
    t.status === "READY" ? act("Suspend", () => api(`${path}/suspend`, { method: "POST" })) : null,
    t.status === "SUSPENDED" ? act("Resume", () => api(`${path}/resume`, { method: "POST" })) : null,
    ["READY", "SUSPENDED"].includes(t.status) ? act("Download dump", async () => {
      const response = await api(`${path}/dumps`, { method: "POST", raw: true });
      const url = URL.createObjectURL(await response.blob());
      const a = h("a", { href: url, download: `${t.slug}.dump` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    }) : null,
    t.status !== "DELETED" ? confirmInput : null,
    t.status !== "DELETED" ? act("Delete", async () => {
      if (confirmInput.value !== t.slug) throw new Error(`type the slug ${t.slug} first`);
      await api(path, { method: "DELETE" });
    }, "danger") : null);
  const pool = t.pool ? `${t.pool.size - t.pool.available} in use, ${t.pool.available} idle` : "no pool open on this daemon";
  const fields = [
    ["Status", badge(t.status)], ["Server", t.server || "—"], ["Database", t.database_name || "—"],
    ["Schema version", `${t.schema_version} (this build: ${t.latest_version}${t.pending_migrations && t.pending_migrations.length ? `, ${t.pending_migrations.length} pending` : ""})`],
    ["Database size", `${bytes(t.database_bytes)}${t.over_quota ? " — over quota, read-only" : ""}`],
    ["Connections", pool], ["Last backup", lastBackup ? when(lastBackup.at) : "none recorded"],
    ["Created", when(t.created_at)], ["Ready since", when(t.ready_at)], ["Attempts", String(t.attempts)],
    ["Labels", JSON.stringify(t.labels)], ["Last error", t.last_error ? h("span", { class: "error" }, t.last_error) : "—"],
  ];
  view.replaceChildren(
    h("p", {}, h("a", { href: "#/" }, "‹ Fleet")),
    h("h2", { id: "tenant-title" }, `Tenant ${t.slug}`),
    h("dl", { id: "tenant" }, fields.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    actions, message,
    h("h2", {}, "Events"),
    h("ol", { id: "events", class: "events" },
      [...events].reverse().map((e) => h("li", { "data-kind": e.kind },
        h("strong", {}, e.kind), " ", h("span", { class: "muted" }, `${when(e.at)} by ${e.actor}`), " ",
        h("code", {}, JSON.stringify(e.detail))))));
}

async function migrationsView(view) {
  const { runs } = await api("/v1/migrations");
  view.replaceChildren(
    h("h2", {}, "Migration runs"),
    h("table", { id: "runs" },
      h("thead", {}, h("tr", {}, ["Started", "By", "Target version", "Status", "Progress", "Stop reason"].map((c) => h("th", {}, c)))),
      h("tbody", {}, runs.length ? runs.map((r) => h("tr", {},
        h("td", {}, when(r.created_at)), h("td", {}, r.actor), h("td", {}, String(r.target_version)),
        h("td", {}, badge(r.status)),
        h("td", {}, h("progress", { max: Math.max(r.total, 1), value: r.done }), ` ${r.done} / ${r.total}`),
        h("td", { class: "error" }, r.stop_reason || ""))) : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No runs yet.")))));
}

// Routing and refresh -----------------------------------------------------------------------

async function render() {
  clearTimeout(refreshTimer);
  const view = document.getElementById("view");
  const hash = location.hash || "#/";
  // Do not redraw under someone typing in the view.
  const typing = document.activeElement && view.contains(document.activeElement) && document.activeElement.tagName === "INPUT";
  if (!typing) {
    try {
      const tenant = hash.match(/^#\/tenants\/(.+)$/);
      if (tenant) await tenantView(view, decodeURIComponent(tenant[1]));
      else if (hash === "#/migrations") await migrationsView(view);
      else await fleetView(view);
      document.getElementById("refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      if (e.status === 401) return;
      view.replaceChildren(h("p", { class: "error", role: "alert" }, e.message));
    }
  }
  refreshTimer = setTimeout(render, REFRESH_MS);
}

function route() {
  if (sessionStorage.getItem(TOKEN_KEY)) render();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-in-form").addEventListener("submit", signIn);
  document.getElementById("sign-out").addEventListener("click", () => signOut(""));
  window.addEventListener("hashchange", render);
  if (sessionStorage.getItem(TOKEN_KEY)) {
    document.getElementById("nav").hidden = false;
    render();
  } else {
    signOut("");
  }
});
