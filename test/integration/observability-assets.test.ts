import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { after, before, describe, test } from "node:test";
import { startDriverFixture, type DriverFixture } from "./driver-fixture.js";

const repo = new URL("../../", import.meta.url);
const dashboardFile = new URL("charts/spire-csi-driver/dashboards/spire-csi-driver.json", repo);
const ruleTemplate = new URL("charts/spire-csi-driver/templates/prometheusrule.yaml", repo);
const ruleTests = new URL("test/chart/prometheusrule-test.yaml", repo);
/** Labels Prometheus adds when it scrapes the driver pods (PodMonitor target labels). */
const scrapeLabels = new Set(["namespace", "pod", "instance", "job", "container", "endpoint", "le"]);
const metricPattern = /\b((?:spire_csi|process|nodejs)_[a-z0-9_]+)\b(\{[^}]*\})?/g;

interface Exposition {
  /** Series names as Prometheus stores them (histograms as _bucket, _sum and _count). */
  names: Set<string>;
  labels: Map<string, Set<string>>;
  values: Map<string, Set<string>>;
}

/** Metric families, label names and label values from one /metrics scrape of the real driver. */
function parseExposition(text: string): Exposition {
  const exposition: Exposition = { names: new Set(), labels: new Map(), values: new Map() };
  for (const line of text.split("\n")) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) {
      const [, name, kind] = type as unknown as [string, string, string];
      const names = kind === "histogram" ? [`${name}_bucket`, `${name}_sum`, `${name}_count`] : kind === "summary" ? [name, `${name}_sum`, `${name}_count`] : [name];
      for (const series of names) {
        exposition.names.add(series);
        exposition.labels.set(series, exposition.labels.get(series) ?? new Set());
      }
      continue;
    }
    const sample = /^([a-z_:][a-z0-9_:]*)(?:\{(.*)\})? /i.exec(line);
    if (!sample) continue;
    for (const [, key, value] of (sample[2] ?? "").matchAll(/([a-z_][a-z0-9_]*)="([^"]*)"/g)) {
      exposition.labels.get(sample[1]!)?.add(key!);
      const values = exposition.values.get(`${sample[1]}/${key}`) ?? new Set();
      values.add(value!);
      exposition.values.set(`${sample[1]}/${key}`, values);
    }
  }
  return exposition;
}

/** Every metric a query references, with the label names and exact values its matchers use. */
function referencedSeries(query: string): { name: string; matchers: { label: string; op: string; value: string }[] }[] {
  // Label lists of aggregations and joins name labels, not series (e.g. `by (nodejs_version)`).
  const withoutLabelLists = query.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, "$1 ()");
  return [...withoutLabelLists.matchAll(metricPattern)].map(([, name, braces]) => ({
    name: name!,
    matchers: [...(braces ?? "").matchAll(/([a-z_][a-z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"/g)].map(([, label, op, value]) => ({ label: label!, op: op!, value: value! })),
  }));
}

function checkQuery(where: string, query: string, exposition: Exposition): number {
  const series = referencedSeries(query);
  for (const { name, matchers } of series) {
    assert.ok(exposition.names.has(name), `${where}: ${name} is not a series the driver emits`);
    for (const { label, op, value } of matchers) {
      if (scrapeLabels.has(label)) continue;
      assert.ok(exposition.labels.get(name)?.has(label), `${where}: ${name} has no label ${label}`);
      // Exact matches must name a value the driver really uses (phase names, results, ...).
      if (op === "=" && label === "phase") assert.ok(exposition.values.get(`${name}/${label}`)?.has(value), `${where}: ${name}{${label}="${value}"} never appears`);
    }
  }
  return series.length;
}

describe("dashboard and alerts reference only series the driver emits", () => {
  let fx: DriverFixture;
  let exposition: Exposition;
  before(async () => {
    fx = await startDriverFixture({ jwtTtlSeconds: 600 });
    await fx.agent.addEntry({ id: "app", spiffeId: "spiffe://example.org/ns/obs/sa/app", selectors: [{ type: "k8s", value: "ns:obs" }] });
    // One published volume with a JWT audience, so every labelled family has samples to read labels from.
    await fx.kubelet.publish({ uid: "0a5e1c2d-0000-4000-8000-00000000aa01", name: "app-0", namespace: "obs", serviceAccount: "app" }, "id", { "csi.spire.io/jwt-audiences": "vault" });
    const line = await fx.driver.waitForLog((entry) => /^metrics( and health)? endpoints listening$/.test(String(entry.msg)));
    exposition = parseExposition(await (await fetch(`http://${String(line.address)}/metrics`)).text());
  });
  after(() => fx.close());

  test("the scrape itself has the families the assets are built on", () => {
    for (const name of ["spire_csi_volumes", "spire_csi_svid_expiration_timestamp_seconds", "spire_csi_build_info", "process_resident_memory_bytes", "nodejs_eventloop_lag_p99_seconds"]) {
      assert.ok(exposition.names.has(name), name);
    }
  });

  test("Grafana dashboard: valid panels, one data source variable, every query on emitted series", async () => {
    const dashboard = JSON.parse(await readFile(dashboardFile, "utf8")) as {
      uid: string;
      panels: { id: number; title: string; type: string; gridPos: { x: number; w: number }; datasource: { uid: string }; targets: { expr: string }[] }[];
      templating: { list: { name: string; query: string | { query: string } }[] };
    };
    assert.equal(dashboard.uid, "spire-csi-driver");
    assert.equal(new Set(dashboard.panels.map((panel) => panel.id)).size, dashboard.panels.length, "panel ids are unique");
    for (const panel of dashboard.panels) {
      assert.ok(panel.gridPos.x + panel.gridPos.w <= 24, `${panel.title}: fits the 24-column grid`);
      assert.equal(panel.datasource.uid, "${datasource}", `${panel.title}: uses the data source variable`);
      assert.ok(panel.targets.length > 0, `${panel.title}: has a query`);
      for (const target of panel.targets) assert.ok(checkQuery(`panel "${panel.title}"`, target.expr, exposition) > 0, `panel "${panel.title}" queries a driver series`);
    }
    for (const variable of dashboard.templating.list) {
      const query = typeof variable.query === "string" ? variable.query : variable.query.query;
      if (variable.name !== "datasource") checkQuery(`variable ${variable.name}`, query, exposition);
    }
  });

  test("PrometheusRule: every alert expression and every promtool input series is emitted", async () => {
    const rules = await readFile(ruleTemplate, "utf8");
    const expressions = [...rules.matchAll(/^\s+expr: (.*)$/gm)].map((match) => match[1]!);
    assert.ok(expressions.length >= 7, "one expression per alert");
    for (const expression of expressions) assert.ok(checkQuery(`rule ${expression}`, expression, exposition) > 0, `${expression} reads a driver series`);
    const inputs = [...(await readFile(ruleTests, "utf8")).matchAll(/series: '([^']+)'/g)].map((match) => match[1]!);
    assert.ok(inputs.length > 0);
    for (const input of inputs) checkQuery(`promtool input ${input}`, input, exposition);
  });
});
