// End-to-end check of the admin status page in headless Chromium, run by
// .ci/check-admin-ui against a real `jwtgate run`:
// loads the page, checks the routes and keys it shows, pastes an expired
// token (minted here with node's crypto and the key `jwtgate keygen`
// wrote), picks a route, reads the verdict "expired", and saves a
// screenshot (the README shows it). Fails on any request to another
// origin and on any console error (CSP violations are reported there).
//
// Environment: JWTGATE_ADMIN_URL, JWTGATE_KEY (private PEM), JWTGATE_KID,
// JWTGATE_ROUTES (comma-separated, in config order), JWTGATE_SCREENSHOT,
// JWTGATE_NODE_MODULES (where playwright-core is installed).

import { createRequire } from "node:module";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";

const STEP_TIMEOUT_MS = 15000;

function fail(message) {
  console.error(`admin UI check FAILED: ${message}`);
  process.exit(1);
}

function env(name) {
  const value = process.env[name];
  if (!value) fail(`${name} is not set`);
  return value;
}

const adminUrl = env("JWTGATE_ADMIN_URL");
const keyPem = fs.readFileSync(env("JWTGATE_KEY"), "utf8");
const kid = env("JWTGATE_KID");
const routes = env("JWTGATE_ROUTES").split(",");
const screenshot = env("JWTGATE_SCREENSHOT");
const require = createRequire(path.join(path.resolve(env("JWTGATE_NODE_MODULES")), "x.js"));
const { chromium } = require("playwright-core");

const b64url = (bytes) => Buffer.from(bytes).toString("base64url");

function mint(claims) {
  const input = `${b64url(JSON.stringify({ typ: "JWT", alg: "RS256", kid }))}.${b64url(JSON.stringify(claims))}`;
  const signature = crypto.sign("sha256", Buffer.from(input), keyPem);
  return `${input}.${b64url(signature)}`;
}

const now = Math.floor(Date.now() / 1000);
// Expired five minutes ago: well past the default 30 s leeway.
const expired = mint({
  sub: "alice",
  aud: "orders",
  scopes: "read write",
  iat: now - 600,
  nbf: now - 600,
  exp: now - 300,
});

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-quic",
    "--disable-sync",
    "--no-first-run",
  ],
  timeout: 60000,
});
let exitCode = 0;
try {
  // A new context is a fresh, empty profile.
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  const origin = new URL(adminUrl).origin;
  const foreign = [];
  const errors = [];
  page.on("request", (request) => {
    const url = new URL(request.url());
    if (url.protocol !== "data:" && url.origin !== origin) foreign.push(request.url());
  });
  page.on("console", (message) => {
    if (message.type() === "error") errors.push(message.text());
  });
  page.on("pageerror", (error) => errors.push(error.message));

  const response = await page.goto(`${adminUrl}/`, { waitUntil: "load" });
  if (!response || response.status() !== 200) fail(`GET / answered ${response && response.status()}`);
  const csp = response.headers()["content-security-policy"] || "";
  if (!csp.includes("default-src 'none'")) fail(`weak or missing CSP: ${csp}`);

  // The config: routes and keys.
  await page.waitForFunction(
    (n) => document.querySelectorAll("#routes tbody tr").length === n,
    routes.length,
  );
  const shownRoutes = await page.$$eval("#routes tbody tr td:first-child", (cells) =>
    cells.map((c) => c.textContent));
  if (shownRoutes.join(",") !== routes.join(",")) {
    fail(`routes shown ${JSON.stringify(shownRoutes)}, expected ${JSON.stringify(routes)}`);
  }
  const shownKeys = await page.$$eval("#keys tbody tr", (rows) =>
    rows.map((r) => Array.from(r.cells, (c) => c.textContent)));
  if (shownKeys.length !== 1 || shownKeys[0][0] !== kid || shownKeys[0][1] !== "RS256") {
    fail(`keys shown ${JSON.stringify(shownKeys)}, expected ${kid} RS256`);
  }
  const jwks = await page.textContent("#jwks");
  if (!jwks.includes("no JWKS providers configured")) fail(`JWKS section says ${jwks}`);
  const options = await page.$$eval("#route option", (o) => o.map((x) => x.value));
  if (options.join(",") !== routes.join(",")) fail(`route picker offers ${options}`);

  // The inspector.
  await page.fill("#token", expired);
  await page.selectOption("#route", "orders");
  await page.click("#explain");
  await page.waitForFunction(() => {
    const result = document.getElementById("result");
    return !result.hidden && document.querySelectorAll("#steps tbody tr").length > 0;
  });
  const verdict = (await page.textContent("#verdict")).trim();
  if (!/\bexpired\b/.test(verdict)) fail(`verdict is "${verdict}", expected it to say expired`);
  const failedStep = await page.$$eval("#steps tbody tr.fail td:nth-child(2)", (c) =>
    c.map((x) => x.textContent));
  if (failedStep.join(",") !== "exp") fail(`failing steps shown: ${JSON.stringify(failedStep)}`);
  const answer = await page.textContent("#answer");
  if (!answer.includes("HTTP 401") || !answer.includes('error="invalid_token"')) {
    fail(`answer shown: ${answer}`);
  }

  await page.screenshot({ path: screenshot, fullPage: true });
  if (foreign.length) fail(`requests to other origins: ${foreign.join(", ")}`);
  if (errors.length) fail(`console errors: ${errors.join(" | ")}`);
  console.log(`admin UI check: OK — routes ${shownRoutes.join(", ")}; key ${kid} RS256; ` +
    `verdict "${verdict}"; screenshot ${screenshot}`);
} catch (error) {
  console.error(`admin UI check FAILED: ${error.stack || error}`);
  exitCode = 1;
} finally {
  await browser.close();
}
process.exit(exitCode);
