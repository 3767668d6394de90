// The jwtgate status page: renders /api/status (refreshed every 2 s) and
// asks /api/explain about a pasted token. Same origin only (the CSP says
// so too); every value is inserted as text, never as HTML.
"use strict";

const REFRESH_MS = 2000;
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.appendChild(cell);
    else td.textContent = cell === null || cell === undefined ? "" : String(cell);
    tr.appendChild(td);
  }
  return tr;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function age(secs) {
  secs = Math.max(0, Math.round(secs));
  const h = Math.floor(secs / 3600), m = Math.floor(secs / 60) % 60, s = secs % 60;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function when(unix) {
  return new Date(unix * 1000).toISOString().replace(".000", "");
}

function chain(route) {
  if (!route.policies.length) return el("span", "none (public)", "muted");
  const list = el("ol", null, "chain");
  for (const p of route.policies) {
    const parts = [`aud ${p.audiences.join(" | ")}`];
    if (p.issuer) parts.push(`iss ${p.issuer}`);
    parts.push(p.scopes.length ? `scopes ${p.scopes.join(" ")}` : "no scopes");
    if (p.typ) parts.push(`typ ${p.typ}`);
    if (p.scope_claim) parts.push(`scope claim ${p.scope_claim}`);
    parts.push(`leeway ${p.leeway_secs}s`);
    if (p.forward_token) parts.push("forwards the token");
    list.appendChild(el("li", `${p.kind}: ${parts.join(", ")}`));
  }
  return list;
}

function renderStatus(status) {
  $("source").textContent = status.source;
  const r = status.reload;
  $("reload").textContent =
    `last load: ${r.result} at ${when(r.at)} (${age(r.age_secs)} ago)` +
    (r.error ? ` — ${r.error}` : "") +
    ` · reloads ${r.successes} ok, ${r.failures} failed`;
  $("reload").className = r.result === "failure" ? "error" : "";
  $("updated").textContent = new Date().toLocaleTimeString();

  fill($("routes").tBodies[0], status.routes.map((route) => row([
    route.name,
    [route.methods ? route.methods.join(",") : "any",
     route.host ? `${route.host}` : null,
     route.path_prefix].filter(Boolean).join(" "),
    route.upstream + (route.strip_prefix ? " (prefix stripped)" : ""),
    chain(route),
  ])));

  fill($("counters").tBodies[0], status.counters.map((c) => {
    const failures = Object.entries(c.auth_failures)
      .filter(([, n]) => n > 0)
      .map(([reason, n]) => `${reason} ${n}`);
    return row([c.route, c.requests, failures.length ? failures.join(", ") : "none"]);
  }));

  fill($("keys").tBodies[0], status.keys.map((k) => row([
    k.kid, k.alg, k.signing ? "sign + verify" : "verify", k.source || "unknown", age(k.age_secs),
  ])));

  const jwks = $("jwks");
  if (!status.jwks.length) {
    jwks.replaceChildren(el("p", "no JWKS providers configured", "muted"));
  } else {
    const table = el("table");
    const head = row(["issuer", "url", "keys", "last refresh", "age"]);
    table.appendChild(el("thead")).appendChild(head);
    const body = table.appendChild(el("tbody"));
    for (const p of status.jwks) {
      const keys = (p.keys || []).map((k) => `${k.kid} (${k.alg})`).join(", ");
      const refresh = p.last_refresh
        ? `${p.last_refresh.result} at ${when(p.last_refresh.at)}` +
          (p.last_refresh.error ? ` — ${p.last_refresh.error}` : "")
        : "never";
      body.appendChild(row([p.issuer, p.url, keys || "none", refresh,
        p.age_secs === undefined || p.age_secs === null ? "" : age(p.age_secs)]));
    }
    jwks.replaceChildren(table);
  }

  const select = $("route");
  const chosen = select.value;
  const names = status.routes.map((route) => route.name);
  if (names.join("\n") !== Array.from(select.options, (o) => o.value).join("\n")) {
    select.replaceChildren(...names.map((name) => {
      const option = el("option", name);
      option.value = name;
      return option;
    }));
    if (names.includes(chosen)) select.value = chosen;
  }
}

async function refresh() {
  try {
    const response = await fetch("/api/status", { cache: "no-store", credentials: "omit" });
    if (!response.ok) throw new Error(`/api/status answered ${response.status}`);
    renderStatus(await response.json());
    $("error").hidden = true;
  } catch (e) {
    $("error").textContent = `cannot refresh: ${e.message}`;
    $("error").hidden = false;
  }
}

function renderExplanation(x) {
  const verdict = $("verdict");
  if (x.accepted) {
    verdict.textContent = `ACCEPTED on route ${x.route}: forwarded to ${x.upstream}`;
    verdict.className = "verdict pass";
  } else {
    verdict.textContent = `REFUSED: ${x.verdict}` +
      (x.failed_step ? ` (step ${x.failed_step})` : "") +
      (x.refusal ? ` → ${x.refusal.status}` : "");
    verdict.className = "verdict fail";
  }
  fill($("steps").tBodies[0], x.steps.map((s, i) => {
    const why = [s.description, s.detail].filter(Boolean).join(" — ") ||
      "";
    const tr = row([i + 1, s.step, s.result === "not_reached" ? "not reached" : s.result, why]);
    tr.className = s.result;
    return tr;
  }));
  let answer;
  if (x.refusal) {
    answer = `HTTP ${x.refusal.status}\n` +
      (x.refusal.www_authenticate ? `WWW-Authenticate: ${x.refusal.www_authenticate}\n` : "") +
      `\n${JSON.stringify(x.refusal.body, null, 2)}`;
  } else {
    answer = "forwarded upstream with:\n" +
      x.upstream_headers.map((h) => `${h.name}: ${h.value}`).join("\n") +
      `\nauthorization: ${x.forward_authorization ? "forwarded" : "removed"}`;
  }
  $("answer").textContent = answer;
  $("key").textContent = x.key
    ? `kid ${x.key.kid}\nalg ${x.key.alg}\n${x.key.source}\nloaded ${age(x.key.age_secs)} ago`
    : `none${x.key_problem ? `: ${x.key_problem}` : ""}`;
  $("token-header").textContent = x.header ? JSON.stringify(x.header, null, 2) : "(not decodable)";
  $("token-claims").textContent = x.claims ? JSON.stringify(x.claims, null, 2) : "(not decodable)";
  fill($("notes"), x.notes.map((n) => el("li", n)));
  $("result").hidden = false;
}

async function explain(event) {
  event.preventDefault();
  const verdict = $("verdict");
  try {
    const response = await fetch("/api/explain", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token: $("token").value.trim(), route: $("route").value }),
      cache: "no-store",
      credentials: "omit",
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error_description || `answered ${response.status}`);
    renderExplanation(body);
  } catch (e) {
    $("result").hidden = false;
    fill($("steps").tBodies[0], []);
    verdict.textContent = `cannot explain: ${e.message}`;
    verdict.className = "verdict fail";
  }
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("explain-form").addEventListener("submit", explain);
  refresh();
  setInterval(refresh, REFRESH_MS);
});
