// Browser tests of the catalog UI: Debian's Chromium, headless, driven by
// playwright-core. Run by `cargo test` (platform/tessera-cli/tests/it/browser.rs),
// which starts `tessera serve --demo` and passes:
//   TESSERA_URL           the server, e.g. http://127.0.0.1:40123
//   TESSERA_TOKENS        the demo principals' JSON file (demo-principals.json)
//   TESSERA_ARTIFACTS     where screenshots and the downloaded CSV go
//   TESSERA_CHROMIUM      the browser (default /usr/bin/chromium)
// Each scenario prints `ok <name>` or throws; the exit code says which.
import { chromium } from 'playwright-core';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const base = process.env.TESSERA_URL;
const artifacts = process.env.TESSERA_ARTIFACTS || 'browser-artifacts';
const principals = JSON.parse(readFileSync(process.env.TESSERA_TOKENS, 'utf8'));
const tokenOf = (name) => principals.find((p) => p.name === name).token;
mkdirSync(artifacts, { recursive: true });

function check(condition, message) {
  if (!condition) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath: process.env.TESSERA_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const failures = [];
const consoleErrors = [];

async function scenario(name, fn, { viewport = { width: 1280, height: 900 } } = {}) {
  const context = await browser.newContext({ viewport, acceptDownloads: true });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  // Script errors fail the run; the browser's own note of a 4xx the UI asked for on purpose does not.
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) consoleErrors.push(`${name}: ${m.text()}`);
  });
  page.on('pageerror', (e) => consoleErrors.push(`${name}: ${e.message}`));
  try {
    await fn(page);
    console.log(`ok ${name}`);
  } catch (e) {
    failures.push(name);
    console.log(`FAILED ${name}: ${e.stack || e}`);
    await page.screenshot({ path: join(artifacts, `failed-${name}.png`), fullPage: true }).catch(() => {});
  } finally {
    await context.close();
  }
}

async function shot(page, file) {
  await page.screenshot({ path: join(artifacts, file), fullPage: true });
}

async function signIn(page, who) {
  await page.fill('#token', tokenOf(who));
  await page.click('form[aria-label="Sign in"] button[type=submit]');
  await page.waitForSelector(`[data-testid=who] >> text=${who}`);
}

async function openProduct(page, product) {
  await page.goto(`${base}/#/p/${product}`);
  await page.waitForSelector('#h-product');
  await page.waitForSelector('#h-sample ~ div table[data-testid=grid] tbody tr');
}

// The masking cell of a column in a table's card.
async function maskingOf(page, table, column) {
  return (await page.textContent(`#table-${table} tr[data-column="${column}"] [data-testid=masking]`)).trim();
}

// The sample grid's values of one column.
async function sampleColumn(page, column) {
  return page.$$eval('#h-sample ~ div table[data-testid=grid]', (tables, column) => {
    const t = tables[0];
    const heads = [...t.querySelectorAll('thead th')].map((th) => th.textContent);
    const i = heads.indexOf(column);
    return [...t.querySelectorAll('tbody tr')].map((tr) => tr.children[i].textContent);
  }, column);
}

await scenario('search-and-open-a-product', async (page) => {
  await page.goto(base + '/');
  await page.waitForSelector('#results a.result');
  await shot(page, 'search.png');
  const all = await page.$$eval('#results a.result', (as) => as.map((a) => a.dataset.product));
  check(all.length === 4, `the demo's four products are listed, got ${all}`);
  await page.fill('#q', 'revenue');
  await page.waitForFunction(() => [...document.querySelectorAll('#results a.result')].every((a) => a.dataset.product === 'sales/orders'));
  await page.fill('#q', 'tracking');
  await page.waitForFunction(() => document.querySelector('#results a.result')?.dataset.product === 'logistics/shipments');
  // A facet narrows the results and says how many.
  await page.fill('#q', '');
  await page.click('fieldset:has(legend:text("Domain")) a:has-text("payments")');
  await page.waitForFunction(() => document.querySelectorAll('#results a.result').length === 1);
  check((await page.textContent('#search-status')).includes('1 product'), 'the status line counts the results');
  await shot(page, 'search-facet.png');
  await page.click('fieldset:has(legend:text("Domain")) a:has-text("payments")');
  await page.fill('#q', 'orders');
  await page.click('#results a.result[data-product="sales/orders"]');
  await page.waitForSelector('#h-product');
  check((await page.textContent('#h-product')) === 'Orders', 'the product page shows the title');
  await page.waitForSelector('[data-testid=freshness] .badge');
  await page.waitForSelector('#h-lineage ~ .lineage svg');
  await page.waitForSelector('pre.yaml .k');
  await page.waitForSelector('#h-volume ~ svg.chart rect', { state: 'attached' });
  const lines = await page.$$eval('#h-volume ~ figure polyline', (ps) => ps.length);
  check(lines === 3, `one line of rows per table, got ${lines}`);
  await shot(page, 'product.png');
});

await scenario('pii-masked-for-analyst-clear-for-owner', async (page) => {
  await page.goto(base + '/');
  await signIn(page, 'analyst');
  await openProduct(page, 'sales/orders');
  check(await maskingOf(page, 'orders', 'customer_email') === 'partial', 'the analyst gets the email partially');
  check((await page.textContent('[data-testid=viewer-roles]')).trim() === 'analyst', 'the analyst reads as analyst');
  const masked = await sampleColumn(page, 'customer_email');
  check(masked.length > 0 && masked.every((v) => v === 'null' || v.startsWith('***@')), `analyst sample emails are masked: ${masked}`);
  await shot(page, 'product-analyst.png');

  await page.click('button:has-text("Sign out")');
  await signIn(page, 'sales-owner');
  await openProduct(page, 'sales/orders');
  check(await maskingOf(page, 'orders', 'customer_email') === 'clear', 'the owner reads the email clear');
  const clear = await sampleColumn(page, 'customer_email');
  check(clear.some((v) => /^[^*@]+@/.test(v)), `owner sample emails are clear: ${clear}`);
  await shot(page, 'product-owner.png');
});

await scenario('sql-console-run-and-download-csv', async (page) => {
  await page.goto(base + '/');
  await signIn(page, 'analyst');
  await page.goto(`${base}/#/sql?product=sales/orders`);
  await page.waitForFunction(() => document.querySelector('#sql').value.includes('sales.orders.orders'));
  await page.fill('#sql', 'SELECT order_id, customer_email FROM sales.orders.orders ORDER BY order_id LIMIT 5');
  await page.click('button:has-text("Run")');
  await page.waitForSelector('table[data-testid=grid] tbody tr');
  const rows = await page.$$eval('table[data-testid=grid] tbody tr', (trs) => trs.length);
  check(rows === 5, `five rows, got ${rows}`);
  const sqlStatus = await page.textContent('#sql-status');
  check(/^5 rows in [\d.]+ ms/.test(sqlStatus), `the query time is shown: ${sqlStatus}`);
  await shot(page, 'sql.png');
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('button:has-text("Download CSV")')]);
  const file = join(artifacts, 'result.csv');
  await download.saveAs(file);
  const lines = readFileSync(file, 'utf8').trim().split('\n');
  check(lines[0] === 'order_id,customer_email', `the CSV header, got ${lines[0]}`);
  check(lines.length === 6 && lines.slice(1).every((l) => l.includes(',***@')), `the CSV holds the five masked rows: ${lines}`);
  // Errors show inline, in place of results.
  await page.fill('#sql', 'SELEC 1');
  await page.keyboard.press('Control+Enter');
  await page.waitForSelector('[role=alert].error');
  check((await page.textContent('[role=alert].error')).includes('sql_syntax'), 'a syntax error says so');
  await page.fill('#sql', 'DROP TABLE sales.orders.orders');
  await page.click('button:has-text("Run")');
  await page.waitForSelector('[role=alert].error >> text=read_only');
  await shot(page, 'sql-error.png');
});

await scenario('follow-the-lineage-graph', async (page) => {
  await openProduct(page, 'sales/orders');
  await page.waitForSelector('#h-lineage ~ .lineage svg a[data-node]');
  const edges = await page.$$eval('#h-lineage ~ .lineage path[data-edge]', (ps) => ps.map((p) => p.dataset.edge));
  check(edges.includes('event:OrderPlaced->table:orders'), `OrderPlaced feeds orders: ${edges}`);
  check(edges.some((e) => e.startsWith('table:') && e.includes('->table:')), `a derived table reads a table: ${edges}`);
  await page.locator('#h-lineage').scrollIntoViewIfNeeded();
  await shot(page, 'lineage.png');
  // An event explains itself; a table takes you to its columns.
  await page.click('a[data-node="event:OrderPlaced"]');
  await page.waitForFunction(() => document.querySelector('#h-lineage ~ p[aria-live]').textContent.startsWith('OrderPlaced:'));
  const derived = edges.find((e) => e.includes('->table:')).split('->table:')[1];
  await page.click(`a[data-node="table:${derived}"]`);
  await page.waitForFunction((t) => document.activeElement?.id === `table-${t}` && location.hash.endsWith(`table=${t}`), derived);
  await shot(page, 'lineage-followed.png');
});

await scenario('derived-tables-and-column-lineage', async (page) => {
  // No demo derived table reads a classified column, so each is materialized.
  await openProduct(page, 'sales/orders');
  const served = page.locator('#table-daily_revenue [data-testid=served-as]');
  check((await served.textContent()).trim() === 'materialized', 'daily_revenue is marked materialized');
  const why = await served.getAttribute('title');
  check(why && why.includes('no classified column'), `the badge says why: ${why}`);
  check((await page.textContent('#served-daily_revenue')).startsWith('Materialized: '), 'the reason is written out too');
  check(await page.$('#table-orders [data-testid=served-as]') === null, 'a table fed by events has no served badge');
  check(await page.$('#table-orders [data-testid=computed-from]') === null, 'nor computed-from lines');
  const from = async (column) => (await page.textContent(`#table-daily_revenue tr[data-column="${column}"] [data-testid=computed-from]`)).trim();
  check(await from('revenue') === 'computed from orders.total', `revenue's source: ${await from('revenue')}`);
  check(await from('day') === 'computed from orders.placed_at', `day's source: ${await from('day')}`);
  await page.locator('#table-daily_revenue').scrollIntoViewIfNeeded();
  await shot(page, 'derived-table.png');

  // Column lineage: off at first, then drawn and listed.
  const toggle = page.locator('#h-lineage ~ p button:has-text("Show column lineage")');
  check(await toggle.getAttribute('aria-pressed') === 'false', 'column lineage starts off');
  check(await page.isHidden('#column-lineage'), 'the column list starts hidden');
  check(await page.$('#h-lineage ~ .lineage path[data-column-edge]') === null, 'no column edge is drawn before the toggle');
  check(await page.$('#h-lineage ~ .lineage a[data-served="view"]') === null, 'no demo derived table is a view');
  check(await page.getAttribute('a[data-node="table:daily_revenue"]', 'data-served') === 'table', 'the derived node says it is materialized');
  await toggle.click();
  check(await toggle.getAttribute('aria-pressed') === 'true', 'the toggle is on');
  const edge = 'orders.total->daily_revenue.revenue';
  await page.waitForSelector(`#h-lineage ~ .lineage path[data-column-edge="${edge}"]`, { state: 'attached' });
  await page.waitForSelector(`#column-lineage tr[data-column-edge="${edge}"]`);
  const row = await page.$$eval(`#column-lineage tr[data-column-edge="${edge}"] td`, (tds) => tds.map((td) => td.textContent.trim()));
  check(row.join(' | ') === 'daily_revenue.revenue | ← orders.total | none', `the list says where revenue comes from: ${row}`);
  const listed = await page.$$eval('#column-lineage tr[data-column-edge]', (trs) => trs.map((tr) => tr.dataset.columnEdge));
  for (const e of ['orders.placed_at->daily_revenue.day', 'orders.currency->daily_revenue.currency']) {
    check(listed.includes(e), `the list has ${e}: ${listed}`);
  }
  check(await page.$('#h-lineage ~ .lineage text[data-column="daily_revenue.revenue"]'), 'the derived column is labelled in the graph');
  check(await page.$('#h-lineage ~ .lineage text[data-column="orders.total"]'), 'its source column is labelled in the graph');
  await page.locator('#h-lineage').scrollIntoViewIfNeeded();
  await shot(page, 'lineage-columns.png');
  await toggle.click();
  await page.waitForSelector('#column-lineage', { state: 'hidden' });
  check(await page.$('#h-lineage ~ .lineage path[data-column-edge]') === null, 'no column edge is drawn once off');

  // The other demo product with a derived table.
  await openProduct(page, 'customers/profiles');
  await page.waitForSelector('#table-signups_per_country [data-testid=served-as]');
  check((await page.textContent('#table-signups_per_country [data-testid=served-as]')).trim() === 'materialized', 'signups_per_country is materialized');
  const country = (await page.textContent('#table-signups_per_country tr[data-column="country"] [data-testid=computed-from]')).trim();
  check(country === 'computed from profiles.country', `country's source: ${country}`);
});

await scenario('keyboard-only-search', async (page) => {
  await page.goto(base + '/');
  await page.waitForSelector('#results a.result');
  // The first Tab stop of the page is the skip link (no positive tabindex anywhere).
  const first = await page.evaluate(() => {
    const all = [...document.querySelectorAll('a[href], button, input, select, textarea, [tabindex]')];
    for (const e of all) if (e.tabIndex > 0) return 'positive tabindex on ' + e.outerHTML.slice(0, 60);
    return all.find((e) => e.tabIndex >= 0)?.className;
  });
  check(first === 'skip', `the first stop is the skip link, got ${first}`);
  await page.keyboard.press('Shift+Tab');
  await page.keyboard.press('Tab');
  check(await page.evaluate(() => document.activeElement.id === 'q'), 'Tab order passes through the search box');
  await page.keyboard.press('/');
  check(await page.evaluate(() => document.activeElement.id === 'q'), '"/" focuses the search box');
  await page.keyboard.type('shipm');
  await page.waitForFunction(() => document.querySelectorAll('#results a.result').length === 1);
  await page.keyboard.press('ArrowDown');
  check(await page.evaluate(() => document.activeElement.dataset.product === 'logistics/shipments'), 'ArrowDown moves to the first result');
  await page.keyboard.press('ArrowUp');
  check(await page.evaluate(() => document.activeElement.id === 'q'), 'ArrowUp goes back to the box');
  await page.keyboard.press('ArrowDown');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#h-product');
  check((await page.textContent('#h-product')).length > 0, 'Enter opens the product');
  check((await page.evaluate(() => location.hash)) === '#/p/logistics/shipments', 'the URL names the product');
  await shot(page, 'keyboard.png');
});

await scenario('accessible-and-narrow', async (page) => {
  for (const [file, url, ready] of [
    ['narrow-search.png', '/', '#results a.result'],
    ['narrow-product.png', '/#/p/customers/profiles', '#h-product'],
    ['narrow-sql.png', '/#/sql', '#sql'],
  ]) {
    await page.goto(base + url);
    await page.waitForSelector(ready);
    await page.waitForTimeout(300);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 1, `${url} fits a 390 px screen (overflow ${overflow}px)`);
    const unlabeled = await page.$$eval('input, select, textarea', (els) =>
      els.filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map((e) => e.id || e.name));
    check(unlabeled.length === 0, `${url}: every control has a label; unlabeled: ${unlabeled}`);
    for (const landmark of ['header[role=banner]', 'nav', 'main', 'footer']) {
      check(await page.$(landmark), `${url} has a ${landmark} landmark`);
    }
    await shot(page, file);
  }
}, { viewport: { width: 390, height: 844 } });

await browser.close();
if (consoleErrors.length) {
  console.log(`browser console errors:\n  ${consoleErrors.join('\n  ')}`);
}
writeFileSync(join(artifacts, 'summary.txt'), failures.length ? `failed: ${failures.join(', ')}\n` : 'all passed\n');
if (failures.length || consoleErrors.length) {
  console.log(`${failures.length} scenario(s) failed; screenshots in ${artifacts}`);
  process.exit(1);
}
console.log(`all scenarios passed; screenshots in ${artifacts}`);
