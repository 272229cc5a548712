// Tessera catalog: a single page over /api/v1. No framework and no build
// step: the server embeds this file as it is. Every element is built with
// DOM calls (never innerHTML with data), so no value from a contract or a
// table can become markup.
'use strict';

const TOKEN_KEY = 'tessera.token';
const main = () => document.getElementById('main');
const state = { me: null, route: null, product: null, searchTimer: null, searchSeq: 0, columnLineage: false };

// ---- DOM helpers -----------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = tag.startsWith('svg:')
    ? document.createElementNS('http://www.w3.org/2000/svg', tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.setAttribute('class', v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const svg = (tag, attrs, ...children) => h('svg:' + tag, attrs, ...children);
const badge = (text, kind) => h('span', { class: `badge ${kind || text}` }, text);
const productPath = (d, n) => `/api/v1/products/${encodeURIComponent(d)}/${encodeURIComponent(n)}`;

function setMain(...children) {
  const m = main();
  m.replaceChildren(...children);
}

// ---- API -------------------------------------------------------------------

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, { method = 'GET', body, accept = 'application/json', raw = false, withToken = token() } = {}) {
  const headers = { Accept: accept };
  if (withToken) headers.Authorization = `Bearer ${withToken}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (!response.ok) {
    let code = 'http_' + response.status;
    let message = `${response.status} ${response.statusText}`;
    try {
      const e = await response.json();
      if (e && e.code) ({ code, message } = e);
    } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, code, message);
  }
  return raw ? response : response.json();
}

function errorBox(e) {
  return h('div', { class: 'error', role: 'alert' }, e instanceof ApiError ? `${e.message} (${e.code})` : String(e.message || e));
}

// ---- Session: sign in with a token -------------------------------------------

async function loadMe() {
  try {
    state.me = await api('/api/v1/me');
  } catch (e) {
    // A token the server no longer knows: forget it and read as public.
    sessionStorage.removeItem(TOKEN_KEY);
    state.me = await api('/api/v1/me', { withToken: null });
  }
  renderSession();
}

function renderSession() {
  const box = document.getElementById('session');
  const me = state.me;
  if (me && !me.public) {
    box.replaceChildren(
      h('span', { class: 'who', 'data-testid': 'who' }, 'Signed in as ', h('strong', {}, me.name), ` (${me.roles.concat(me.domains.map((d) => 'owner of ' + d)).join(', ')})`),
      h('button', { type: 'button', class: 'secondary', onclick: signOut }, 'Sign out'),
    );
    return;
  }
  const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', placeholder: 'Access token' });
  const message = h('span', { class: 'small', role: 'status' });
  const form = h('form', { 'aria-label': 'Sign in', onsubmit: async (ev) => {
    ev.preventDefault();
    const t = input.value.trim();
    if (!t) { message.textContent = 'Paste your access token first.'; input.focus(); return; }
    try {
      const me = await api('/api/v1/me', { withToken: t });
      sessionStorage.setItem(TOKEN_KEY, t);
      state.me = me;
      renderSession();
      route();
    } catch (e) {
      message.textContent = e.status === 401 ? 'That token is not known here.' : e.message;
      input.select();
    }
  } },
  h('label', { for: 'token', class: 'small' }, 'Token'), input, h('button', { type: 'submit' }, 'Sign in'), message);
  box.replaceChildren(h('span', { class: 'who small' }, 'Reading as public'), form);
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  loadMe().then(route);
}

// ---- Routing (by the URL's fragment) -------------------------------------------

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, query] = raw.split('?');
  const decode = (part) => {
    try { return decodeURIComponent(part); } catch (_) { return part; }
  };
  return { parts: path.split('/').filter(Boolean).map(decode), params: new URLSearchParams(query || '') };
}

function markNav(which) {
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === which) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

async function route() {
  const { parts, params } = parseHash();
  if (parts[0] === 'p' && parts.length >= 3) {
    const [domain, name] = [parts[1], parts[2]];
    markNav(null);
    // Same product, another table: move there without reloading the page.
    if (state.route === 'product' && state.product && state.product.key === `${domain}/${name}` && state.product.token === token()) {
      focusTable(params.get('table'));
      return;
    }
    state.route = 'product';
    await renderProduct(domain, name, params);
  } else if (parts[0] === 'sql') {
    state.route = 'sql';
    markNav('sql');
    renderSql(params);
  } else {
    state.route = 'search';
    markNav('search');
    renderSearch(params);
  }
}

// ---- Search --------------------------------------------------------------------

const FACETS = [['domain', 'Domain'], ['tag', 'Tag'], ['status', 'Status'], ['owner', 'Owner']];

function renderSearch(params) {
  document.title = 'Search · Tessera catalog';
  const input = h('input', {
    id: 'q', type: 'search', name: 'q', value: params.get('q') || '', autocomplete: 'off',
    placeholder: 'orders, revenue, customer_email, a team…', 'aria-describedby': 'search-status',
    'aria-controls': 'results',
  });
  const status = h('p', { id: 'search-status', class: 'muted', role: 'status', 'aria-live': 'polite' });
  const facets = h('div', { class: 'facets', 'aria-label': 'Filters' });
  const results = h('ol', { id: 'results', class: 'results', 'aria-label': 'Products' });
  const pager = h('div', { class: 'pager' });
  const filters = Object.fromEntries(FACETS.map(([k]) => [k, params.get(k) || '']));
  let offset = Number(params.get('offset') || 0) || 0;

  const run = async () => {
    const seq = ++state.searchSeq;
    const q = new URLSearchParams();
    if (input.value.trim()) q.set('q', input.value.trim());
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    if (offset) q.set('offset', String(offset));
    history.replaceState(null, '', '#/' + (q.toString() ? '?' + q : ''));
    q.set('limit', '20');
    let r;
    try {
      r = await api('/api/v1/search?' + q);
    } catch (e) {
      if (seq === state.searchSeq) results.replaceChildren(h('li', {}, errorBox(e)));
      return;
    }
    if (seq !== state.searchSeq) return; // a newer search is on its way
    status.textContent = r.total === 1 ? '1 product matches' : `${r.total} products match`;
    results.replaceChildren(...r.results.map(resultItem));
    facets.replaceChildren(...FACETS.map(([key, label]) => facetGroup(key, label, r.facets[key], filters, () => { offset = 0; run(); })));
    pager.replaceChildren(...[
      offset > 0 ? h('button', { type: 'button', class: 'secondary', onclick: () => { offset = Math.max(0, offset - 20); run(); } }, 'Previous') : null,
      r.total > offset + 20 ? h('button', { type: 'button', class: 'secondary', onclick: () => { offset += 20; run(); } }, 'Next') : null,
      r.total > 20 ? h('span', { class: 'muted small' }, `${offset + 1}–${Math.min(r.total, offset + 20)} of ${r.total}`) : null,
    ].filter(Boolean));
  };

  input.addEventListener('input', () => {
    clearTimeout(state.searchTimer);
    offset = 0;
    state.searchTimer = setTimeout(run, 120);
  });
  input.addEventListener('keydown', (ev) => {
    if (ev.key === 'ArrowDown') {
      const first = results.querySelector('a.result');
      if (first) { ev.preventDefault(); first.focus(); }
    } else if (ev.key === 'Enter') {
      ev.preventDefault();
      clearTimeout(state.searchTimer);
      offset = 0;
      run();
    }
  });
  results.addEventListener('keydown', (ev) => {
    const links = [...results.querySelectorAll('a.result')];
    const i = links.indexOf(document.activeElement);
    if (i < 0) return;
    if (ev.key === 'ArrowDown' && i + 1 < links.length) { ev.preventDefault(); links[i + 1].focus(); }
    if (ev.key === 'ArrowUp') { ev.preventDefault(); (i === 0 ? input : links[i - 1]).focus(); }
    if (ev.key === 'Escape') { ev.preventDefault(); input.focus(); }
  });

  setMain(
    h('h1', {}, 'Find a data product'),
    h('form', { role: 'search', class: 'searchbar', onsubmit: (ev) => { ev.preventDefault(); run(); } },
      h('label', { for: 'q', class: 'visually-hidden' }, 'Search products'), input, h('button', { type: 'submit' }, 'Search')),
    status,
    h('div', { class: 'grid' }, h('aside', { 'aria-label': 'Filters' }, facets), h('section', { 'aria-label': 'Results' }, results, pager)),
  );
  input.focus();
  run();
}

function facetGroup(key, label, counts, filters, rerun) {
  const items = (counts || []).slice(0, 12).map(({ value, count }) => {
    const on = filters[key] === value;
    return h('li', {}, h('a', {
      href: '#', role: 'button', 'aria-pressed': on ? 'true' : 'false',
      onclick: (ev) => { ev.preventDefault(); filters[key] = on ? '' : value; rerun(); },
    }, h('span', {}, value), h('span', { class: 'muted' }, String(count))));
  });
  return h('fieldset', {}, h('legend', {}, label), h('ul', {}, items.length ? items : h('li', { class: 'muted small' }, 'none')));
}

function resultItem(r) {
  return h('li', {}, h('a', { class: 'result', href: `#/p/${encodeURIComponent(r.domain)}/${encodeURIComponent(r.name)}`, 'data-product': `${r.domain}/${r.name}` },
    h('span', { class: 'title' }, r.title), ' ', h('span', { class: 'mono muted' }, `${r.domain}/${r.name}`), ' ', badge(r.status),
    h('p', { class: 'clamp' }, r.description.replace(/\s+/g, ' ').trim()),
    h('span', { class: 'small muted' }, `v${r.version} · ${r.owner} · tables: ${r.tables.join(', ')}`,
      r.matched_in.length ? ` · matched in ${r.matched_in.join(', ')}` : ''),
    r.tags.length ? h('ul', { class: 'tags', 'aria-label': 'Tags' }, r.tags.map((t) => h('li', { class: 'tag' }, t))) : null));
}

// ---- Product page ------------------------------------------------------------------

async function renderProduct(domain, name, params) {
  const base = productPath(domain, name);
  setMain(h('p', { class: 'muted', role: 'status' }, 'Loading…'));
  let page;
  try {
    page = await api(base);
  } catch (e) {
    setMain(h('h1', {}, `${domain}/${name}`), errorBox(e), h('p', {}, h('a', { href: '#/' }, 'Back to search')));
    return;
  }
  const c = page.contract;
  state.product = { key: `${domain}/${name}`, token: token(), contract: c };
  document.title = `${c.title} · Tessera catalog`;
  const sections = {
    freshness: h('section', { class: 'card', 'aria-labelledby': 'h-fresh' }, h('h2', { id: 'h-fresh' }, 'Freshness and quality'), h('p', { class: 'muted' }, 'Loading…')),
    tables: h('section', { 'aria-labelledby': 'h-tables' }, h('h2', { id: 'h-tables' }, 'Tables'), c.tables.map((t) => tableCard(c, t))),
    sample: h('section', { class: 'card', 'aria-labelledby': 'h-sample' }, h('h2', { id: 'h-sample' }, 'Sample rows')),
    lineage: h('section', { class: 'card', 'aria-labelledby': 'h-lineage' }, h('h2', { id: 'h-lineage' }, 'Lineage')),
    volume: h('section', { class: 'card', 'aria-labelledby': 'h-volume' }, h('h2', { id: 'h-volume' }, 'Volume')),
    versions: h('section', { class: 'card', 'aria-labelledby': 'h-versions' }, h('h2', { id: 'h-versions' }, 'Versions and changes')),
    contract: h('section', { class: 'card', 'aria-labelledby': 'h-contract' }, h('h2', { id: 'h-contract' }, 'Contract')),
  };
  const yamlHref = `${base}/versions/${encodeURIComponent(c.version)}`;
  setMain(
    h('nav', { 'aria-label': 'Breadcrumb', class: 'small' }, h('a', { href: '#/' }, 'Search'), ' › ', `${domain}/${name}`),
    h('section', { class: 'card', 'aria-labelledby': 'h-product' },
      h('h1', { id: 'h-product' }, c.title), h('p', { class: 'mono muted' }, `${c.domain}/${c.name} · v${c.version}`),
      h('dl', { class: 'meta' },
        h('div', {}, h('dt', {}, 'Status'), h('dd', {}, badge(c.status))),
        h('div', {}, h('dt', {}, 'Owner'), h('dd', {}, c.owner.team)),
        h('div', {}, h('dt', {}, 'Contact'), h('dd', {}, h('a', { href: 'mailto:' + c.owner.contact }, c.owner.contact))),
        h('div', {}, h('dt', {}, 'Freshness target'), h('dd', {}, c.freshness ? c.freshness.target : 'none')),
        h('div', {}, h('dt', {}, 'You read as'), h('dd', { 'data-testid': 'viewer-roles' }, c.viewer.roles.join(', ')))),
      c.tags.length ? h('ul', { class: 'tags', 'aria-label': 'Tags' }, c.tags.map((t) => h('li', { class: 'tag' }, t))) : null,
      h('p', {}, c.description || ''),
      h('p', { class: 'bar' },
        h('a', { class: 'button', href: `#/sql?product=${encodeURIComponent(domain + '/' + name)}` }, 'Query in the SQL console'), ' ',
        h('a', { class: 'button secondary', href: yamlHref, download: `${domain}-${name}-${c.version}.yaml` }, 'Download the contract (YAML)'))),
    sections.freshness, sections.tables, sections.sample, sections.lineage, sections.volume, sections.versions, sections.contract,
  );
  main().focus();

  const load = async (section, fn) => {
    try { await fn(section); } catch (e) { section.append(errorBox(e)); }
  };
  await Promise.all([
    load(sections.freshness, async (s) => renderFreshness(s, await api(base + '/freshness'), await api(base + '/quality'))),
    load(sections.sample, async (s) => renderSample(s, base, c)),
    load(sections.lineage, async (s) => renderLineage(s, await api(base + '/lineage'), domain, name, c)),
    load(sections.volume, async (s) => renderVolume(s, await api(base + '/volume?days=30'))),
    load(sections.versions, async (s) => renderVersions(s, base, page.versions)),
    load(sections.contract, async (s) => {
      const text = await (await api(yamlHref, { raw: true, accept: 'application/yaml' })).text();
      s.append(h('pre', { class: 'yaml', tabindex: '0', 'aria-label': `Contract version ${c.version}` }, highlightYaml(text)));
    }),
  ]);
  if (params.get('table')) focusTable(params.get('table'));
}

function tableCard(c, t) {
  const rows = [];
  const addColumn = (col, prefix) => {
    const masking = col.masking;
    rows.push(h('tr', { 'data-column': prefix + col.name },
      h('th', { scope: 'row', class: 'mono' }, prefix + col.name, col.required ? h('span', { class: 'muted', title: 'required' }, ' *') : null),
      h('td', { class: 'mono' }, col.type),
      h('td', {}, col.description || '', col.computed_from ? computedFrom(t, col.computed_from) : null),
      h('td', {}, col.classification && col.classification !== 'none' ? badge(col.classification, 'pii') : h('span', { class: 'muted' }, 'none')),
      h('td', { 'data-testid': 'masking' }, masking ? badge(masking, masking) : badge('hidden', 'hidden'))));
    for (const f of col.fields || []) addColumn(f, prefix + col.name + '.');
  };
  for (const col of t.columns) addColumn(col, '');
  return h('article', { class: 'card tablecard', id: `table-${t.name}`, tabindex: '-1', 'aria-labelledby': `h-table-${t.name}` },
    h('h3', { id: `h-table-${t.name}` }, h('span', { class: 'mono' }, `${c.domain}.${c.name}.${t.name}`), ' ', badge(t.kind),
      t.served_as ? [' ', h('span', {
        class: `badge ${servedLabel(t.served_as)}`, 'data-testid': 'served-as', title: t.served_reason, 'aria-describedby': `served-${t.name}`,
      }, servedLabel(t.served_as))] : null),
    h('p', {}, t.description || '', t.key.length ? h('span', { class: 'muted' }, ` Key: ${t.key.join(', ')}.`) : null),
    t.served_as ? h('p', { class: 'small muted', id: `served-${t.name}` },
      t.served_as === 'view' ? 'Served as a view: ' : 'Materialized: ', t.served_reason, '.') : null,
    t.sql ? h('details', {}, h('summary', {}, 'Derived by SQL'), h('pre', { class: 'mono' }, t.sql)) : null,
    h('div', { class: 'scroll' }, h('table', { class: 'data' },
      h('caption', { class: 'visually-hidden' }, `Columns of ${t.name}`),
      h('thead', {}, h('tr', {}, ['Column', 'Type', 'Description', 'Classification', 'What you get'].map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', {}, rows))),
    t.checks.length ? h('p', { class: 'small muted' }, 'Checks: ', t.checks.map((k) => k.check).join(' · ')) : null);
}

// How a derived table is served: a governed view (computed at query time
// over the reader's masked tables, never stored) or a materialized table.
const servedLabel = (servedAs) => (servedAs === 'view' ? 'view' : 'materialized');

// Where a derived column's values come from: one line per source column,
// with its classification and what this viewer gets for it.
function computedFrom(t, sources) {
  const served = t.served_as === 'view' ? 'served as a view' : 'materialized';
  const clause = (s) => {
    const name = h('code', {}, `${s.table}.${s.column}`);
    if (!s.classification) return ['computed from ', name];
    const get = !s.masking ? 'not served to you' : s.masking === 'clear' ? 'clear for you' : `masked for you as ${s.masking}`;
    return ['computed from ', name, ` (${s.classification}): ${served}, ${get}`];
  };
  return h('ul', { class: 'computed small', 'data-testid': 'computed-from' },
    sources.length ? sources.map((s) => h('li', {}, clause(s))) : h('li', { class: 'muted' }, 'no source column recorded'));
}

function focusTable(name) {
  if (!name) return;
  const card = document.getElementById(`table-${name}`);
  if (!card) return;
  card.scrollIntoView({ block: 'start' });
  card.classList.add('flash');
  setTimeout(() => card.classList.remove('flash'), 1500);
  card.focus({ preventScroll: true });
}

function renderFreshness(section, f, q) {
  const lag = f.lag_seconds === null ? 'unknown' : `${f.lag_events} events, ${Number(f.lag_seconds).toFixed(1)} s`;
  section.querySelector('p.muted')?.remove();
  section.append(
    h('dl', { class: 'meta' },
      h('div', {}, h('dt', {}, 'Now'), h('dd', { 'data-testid': 'freshness' }, badge(f.status))),
      h('div', {}, h('dt', {}, 'Target'), h('dd', {}, f.service_level ? f.service_level.target : 'none')),
      h('div', {}, h('dt', {}, 'Behind the log'), h('dd', {}, lag)),
      h('div', {}, h('dt', {}, 'Events'), h('dd', {}, String(f.head_position))),
      h('div', {}, h('dt', {}, 'Quality'), h('dd', {}, badge(q.degraded ? 'degraded' : 'passing', q.degraded ? 'fail' : 'pass')))),
    h('div', { class: 'scroll' }, h('table', { class: 'data' },
      h('caption', { class: 'visually-hidden' }, 'Quality checks'),
      h('thead', {}, h('tr', {}, ['Table', 'Check', 'Result', 'Measured', 'Checked'].map((x) => h('th', { scope: 'col' }, x)))),
      h('tbody', {}, q.tables.flatMap((t) => t.checks.length
        ? t.checks.map((k) => h('tr', {}, h('td', { class: 'mono' }, t.name), h('td', { class: 'mono' }, k.check),
          h('td', {}, badge(k.passed ? 'pass' : 'fail')), h('td', {}, k.detail), h('td', { class: 'small muted' }, k.checked_at)))
        : [h('tr', {}, h('td', { class: 'mono' }, t.name), h('td', { colspan: '4', class: 'muted' }, 'no results yet'))])))));
}

async function renderSample(section, base, c) {
  const select = h('select', { id: 'sample-table' }, c.tables.map((t) => h('option', { value: t.name }, t.name)));
  const out = h('div', { 'aria-live': 'polite' });
  const load = async () => {
    out.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
    try {
      const s = await api(`${base}/sample?table=${encodeURIComponent(select.value)}&limit=10`);
      out.replaceChildren(
        h('p', { class: 'small muted' }, `${s.rows.length} rows of ${s.table}, as ${c.viewer.name} (${c.viewer.roles.join(', ')}) may see them.`),
        resultGrid(s.columns, s.rows, `Sample rows of ${s.table}`));
    } catch (e) {
      out.replaceChildren(errorBox(e));
    }
  };
  select.addEventListener('change', load);
  section.append(h('p', {}, h('label', { for: 'sample-table' }, 'Table '), select), out);
  await load();
}

function resultGrid(columns, rows, caption) {
  const cell = (v) => (v === null ? h('span', { class: 'muted' }, 'null') : typeof v === 'object' ? JSON.stringify(v) : String(v));
  return h('div', { class: 'scroll' }, h('table', { class: 'data', 'data-testid': 'grid' },
    h('caption', { class: 'visually-hidden' }, caption),
    h('thead', {}, h('tr', {}, columns.map((col) => h('th', { scope: 'col', title: col.type }, col.name)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, r.map((v) => h('td', {}, cell(v))))))));
}

// Lineage: a layered drawing, events on the left, derived tables on the
// right; derived tables served as views have a dashed border and say
// "view". With column lineage on, each table lists the columns that feed a
// derived column or are derived, thin edges join them, and a table under
// the drawing says the same in words.
function renderLineage(section, graph, domain, name, contract) {
  const columnEdges = graph.column_edges || [];
  const caption = h('p', { class: 'small muted', 'aria-live': 'polite' }, 'Events feed tables; derived tables read tables. Choose a table to see its columns.');
  const drawing = h('div', { class: 'lineage' });
  const draw = () => drawing.replaceChildren(lineageSvg(graph, domain, name, contract, caption, state.columnLineage && columnEdges.length > 0));
  const derived = graph.nodes.filter((n) => n.kind === 'derived' && n.served_as);
  const views = derived.filter((n) => n.served_as === 'view').length;
  const legend = derived.length ? h('p', { class: 'small muted' },
    views ? 'Dashed boxes marked "view" are derived tables served as views: computed when queried, over the reader\'s masked tables, never stored.' : null,
    views && views < derived.length ? ' The other derived tables are materialized (stored like any table).' : null,
    views ? null : 'Derived tables here are materialized (stored like any table): none reads a classified column.') : null;
  const list = h('div', { id: 'column-lineage', hidden: !state.columnLineage }, columnEdges.length ? columnLineageTable(graph, contract) : null);
  const toggle = columnEdges.length ? h('button', {
    type: 'button', class: 'secondary', 'aria-pressed': state.columnLineage ? 'true' : 'false', 'aria-controls': 'column-lineage',
    onclick: () => {
      state.columnLineage = !state.columnLineage;
      toggle.setAttribute('aria-pressed', state.columnLineage ? 'true' : 'false');
      list.hidden = !state.columnLineage;
      draw();
    },
  }, 'Show column lineage') : null;
  draw();
  section.append(drawing, caption, legend, toggle ? h('p', { class: 'bar' }, toggle) : null, list);
}

// Where a table's column stands in its contract (for a stable order).
function columnIndex(contract, table, column) {
  const spec = contract?.tables.find((t) => t.name === table);
  const i = spec ? spec.columns.findIndex((c) => c.name === column) : -1;
  return i < 0 ? Number.MAX_SAFE_INTEGER : i;
}

function lineageSvg(graph, domain, name, contract, caption, withColumns) {
  const colW = 230, nodeW = 180, nodeH = 36, gap = 16, lineH = 16, pad = 16;
  // With column lineage: per table, the columns to list (name → classification).
  const listed = new Map();
  const list = (table, column, classification) => {
    if (!listed.has(table)) listed.set(table, new Map());
    const m = listed.get(table);
    if (!m.has(column) || classification) m.set(column, classification || null);
  };
  if (withColumns) {
    for (const n of graph.nodes.filter((x) => x.kind === 'derived')) {
      for (const col of contract?.tables.find((t) => t.name === n.label)?.columns || []) list(n.label, col.name, null);
    }
    for (const e of graph.column_edges) {
      list(e.from.table, e.from.column, e.from.classification);
      list(e.to.table, e.to.column, null);
    }
  }
  const columnsOf = (n) => (n.kind === 'event' ? [] : [...(listed.get(n.label) || new Map())]
    .sort(([a], [b]) => columnIndex(contract, n.label, a) - columnIndex(contract, n.label, b) || a.localeCompare(b)));

  const layers = new Map();
  for (const n of graph.nodes) {
    if (!layers.has(n.layer)) layers.set(n.layer, []);
    layers.get(n.layer).push(n);
  }
  const pos = new Map();
  let bottom = pad + nodeH;
  for (const [layer, nodes] of layers) {
    let y = pad;
    for (const n of nodes) {
      const columns = columnsOf(n);
      const height = columns.length ? nodeH + columns.length * lineH + 4 : nodeH;
      pos.set(n.id, { x: pad + layer * colW, y, height, columns });
      y += height + gap;
    }
    bottom = Math.max(bottom, y - gap);
  }
  const width = pad * 2 + Math.max(...layers.keys(), 0) * colW + nodeW;
  const height = bottom + pad;
  const curve = (x1, y1, x2, y2) => {
    const mx = (x1 + x2) / 2;
    return `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`;
  };
  const edges = graph.edges.map((e) => {
    const a = pos.get(e.from), b = pos.get(e.to);
    if (!a || !b) return null;
    return svg('path', { d: curve(a.x + nodeW, a.y + nodeH / 2, b.x - 6, b.y + nodeH / 2), fill: 'none', stroke: e.label === 'delete' ? '#b3261e' : '#8796a8', 'stroke-width': '1.5', 'marker-end': 'url(#arrow)', 'data-edge': `${e.from}->${e.to}` },
      svg('title', {}, `${e.from.split(':')[1]} → ${e.to.split(':')[1]} (${e.label})`));
  });
  // The y of a listed column's line in its table's box.
  const columnY = (table, column) => {
    const p = pos.get('table:' + table);
    const i = p ? p.columns.findIndex(([c]) => c === column) : -1;
    return i < 0 ? null : { x: p.x, y: p.y + nodeH + i * lineH + lineH / 2 };
  };
  const columnEdges = withColumns ? graph.column_edges.map((e) => {
    const a = columnY(e.from.table, e.from.column), b = columnY(e.to.table, e.to.column);
    if (!a || !b) return null;
    const from = `${e.from.table}.${e.from.column}`, to = `${e.to.table}.${e.to.column}`;
    return svg('path', {
      d: curve(a.x + nodeW, a.y, b.x, b.y), fill: 'none', stroke: e.from.classification ? '#5b2a86' : '#4f8fbf', 'stroke-width': '1',
      'stroke-dasharray': e.from.classification ? '3 2' : null, 'data-column-edge': `${from}->${to}`,
    }, svg('title', {}, `${to} ← ${from}${e.from.classification ? ` (${e.from.classification})` : ''}`));
  }) : [];
  const nodes = graph.nodes.map((n) => {
    const p = pos.get(n.id);
    const view = n.served_as === 'view';
    const fill = n.kind === 'event' ? '#fff6e0' : view ? '#f3ecfb' : n.kind === 'derived' ? '#e6f0fa' : '#dff3e6';
    const inputs = graph.edges.filter((e) => e.to === n.id).map((e) => e.from.split(':')[1]);
    const served = n.served_as ? (view ? ', served as a view' : ', materialized') : '';
    const label = n.kind === 'event'
      ? `Event ${n.label}`
      : `${n.kind === 'derived' ? 'Derived table' : 'Table'} ${n.label} (${n.projection}), from ${inputs.join(', ') || 'nothing'}${served}`;
    const box = [
      svg('rect', { x: p.x, y: p.y, width: nodeW, height: p.height, rx: 8, fill, stroke: view ? '#5b2a86' : '#5a6678', 'stroke-dasharray': view ? '6 4' : null }),
      svg('text', { x: p.x + 10, y: p.y + 24, 'font-size': 13, fill: '#1b2330' }, (n.kind === 'event' ? '⚡ ' : '▦ ') + n.label),
      view ? svg('text', { x: p.x + nodeW - 8, y: p.y + 11, 'font-size': 10, 'text-anchor': 'end', fill: '#5b2a86' }, 'view') : null,
      svg('title', {}, [n.description || label, n.served_reason ? `${view ? 'View' : 'Materialized'}: ${n.served_reason}.` : null].filter(Boolean).join('\n')),
    ];
    if (p.columns.length) {
      box.push(svg('line', { x1: p.x, y1: p.y + nodeH - 2, x2: p.x + nodeW, y2: p.y + nodeH - 2, stroke: '#c3ccd8' }));
      p.columns.forEach(([column, classification], i) => {
        const y = p.y + nodeH + i * lineH + lineH / 2;
        const full = classification ? `${column} (${classification})` : column;
        box.push(svg('text', { x: p.x + 12, y: y + 4, 'font-size': 11, fill: classification ? '#5b2a86' : '#3a4656', 'data-column': `${n.label}.${column}` },
          full.length > 27 ? full.slice(0, 26) + '…' : full, svg('title', {}, full)));
      });
    }
    if (n.kind === 'event') {
      return svg('a', { href: '#', 'data-node': n.id, 'aria-label': label, onclick: (ev) => {
        ev.preventDefault();
        const feeds = graph.edges.filter((e) => e.from === n.id).map((e) => `${e.to.split(':')[1]} (${e.label})`);
        caption.textContent = `${n.label}: ${n.description || 'no description'}. Feeds ${feeds.join(', ') || 'no table'}.`;
      } }, box);
    }
    const href = `#/p/${encodeURIComponent(domain)}/${encodeURIComponent(name)}?table=${encodeURIComponent(n.label)}`;
    return svg('a', { href, 'data-node': n.id, 'data-served': n.served_as, 'aria-label': label }, box);
  });
  return svg('svg', { viewBox: `0 0 ${width} ${height}`, width, height, role: 'group', 'aria-label': `Lineage of ${graph.product}` },
    svg('defs', {}, svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: '5', refY: '5', markerWidth: '7', markerHeight: '7', orient: 'auto-start-reverse' },
      svg('path', { d: 'M 0 0 L 10 5 L 0 10 z', fill: '#8796a8' }))),
    edges, svg('g', { 'aria-hidden': 'true' }, columnEdges), nodes);
}

// Column lineage in words: each derived column and a column it is computed from.
function columnLineageTable(graph, contract) {
  const views = new Set(graph.nodes.filter((n) => n.served_as === 'view').map((n) => n.label));
  const tables = graph.nodes.map((n) => n.label);
  const edges = [...graph.column_edges].sort((a, b) =>
    tables.indexOf(a.to.table) - tables.indexOf(b.to.table)
    || columnIndex(contract, a.to.table, a.to.column) - columnIndex(contract, b.to.table, b.to.column)
    || a.to.column.localeCompare(b.to.column));
  return h('div', { class: 'scroll' }, h('table', { class: 'data', 'data-testid': 'column-lineage' },
    h('caption', { class: 'visually-hidden' }, 'Column lineage: each derived column and a column its values are computed from'),
    h('thead', {}, h('tr', {}, ['Derived column', 'Computed from', 'Classification of the source'].map((x) => h('th', { scope: 'col' }, x)))),
    h('tbody', {}, edges.map((e) => h('tr', { 'data-column-edge': `${e.from.table}.${e.from.column}->${e.to.table}.${e.to.column}` },
      h('td', {}, h('span', { class: 'mono' }, `${e.to.table}.${e.to.column}`), views.has(e.to.table) ? [' ', badge('view')] : null),
      h('td', {}, h('span', { 'aria-hidden': 'true' }, '← '), h('span', { class: 'mono' }, `${e.from.table}.${e.from.column}`)),
      h('td', {}, e.from.classification ? badge(e.from.classification, 'pii') : h('span', { class: 'muted' }, 'none')))))));
}

function renderVolume(section, v) {
  const days = v.events;
  const max = Math.max(1, ...days.map((d) => d.events));
  const W = 640, H = 180, left = 44, bottom = 24, top = 10;
  const bw = (W - left - 8) / Math.max(days.length, 1);
  const bars = days.map((d, i) => {
    const bh = ((H - bottom - top) * d.events) / max;
    return svg('rect', { x: left + i * bw + 1, y: H - bottom - bh, width: Math.max(bw - 2, 1), height: bh, fill: '#4f8fbf' },
      svg('title', {}, `${d.day}: ${d.events} events`));
  });
  const total = days.reduce((a, d) => a + d.events, 0);
  const labels = days.length ? [[0, 'start'], [Math.floor(days.length / 2), 'middle'], [days.length - 1, 'end']].map(([i, anchor]) =>
    svg('text', { x: left + i * bw + (anchor === 'end' ? bw : anchor === 'middle' ? bw / 2 : 0), y: H - 6, 'font-size': 11, fill: '#5a6678', 'text-anchor': anchor }, days[i].day)) : [];
  section.append(
    h('h3', {}, 'Events per day, last 30 days'),
    svg('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${total} events in the last ${v.days} days; at most ${max} on one day` },
      svg('line', { x1: left, y1: H - bottom, x2: W, y2: H - bottom, stroke: '#8796a8' }),
      svg('text', { x: 4, y: top + 10, 'font-size': 11, fill: '#5a6678' }, String(max)),
      svg('text', { x: 4, y: H - bottom, 'font-size': 11, fill: '#5a6678' }, '0'),
      bars, labels),
    h('h3', {}, 'Rows per table, last 30 days'),
    rowsChart(days.map((d) => d.day), v.tables),
    h('h3', {}, 'Rows per table, at the end of each day it changed'),
    h('div', { class: 'scroll' }, h('table', { class: 'data' },
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Table'), h('th', { scope: 'col' }, 'Day'), h('th', { scope: 'col' }, 'Rows'), h('th', { scope: 'col' }, 'Version'))),
      h('tbody', {}, Object.entries(v.tables).flatMap(([t, series]) => series.map((s) =>
        h('tr', {}, h('td', { class: 'mono' }, t), h('td', {}, s.day), h('td', {}, String(s.rows)), h('td', {}, String(s.version)))))))));
}

// One line per table: its rows at the end of each day, carried forward
// from the last day it changed.
function rowsChart(dayLabels, tables) {
  const W = 640, H = 160, left = 44, bottom = 8, top = 10;
  const colours = ['#2f5d8a', '#e0a030', '#1d7a46', '#b3261e', '#5b2a86', '#8796a8'];
  const series = Object.entries(tables).map(([name, points]) => {
    const byDay = new Map(points.map((p) => [p.day, p.rows]));
    let last = 0;
    return [name, dayLabels.map((d) => (last = byDay.has(d) ? byDay.get(d) : last))];
  });
  const max = Math.max(1, ...series.flatMap(([, v]) => v));
  const step = (W - left - 8) / Math.max(dayLabels.length - 1, 1);
  const y = (v) => H - bottom - ((H - bottom - top) * v) / max;
  const lines = series.map(([name, values], i) => svg('polyline', {
    points: values.map((v, j) => `${left + j * step},${y(v)}`).join(' '), fill: 'none', stroke: colours[i % colours.length], 'stroke-width': 2,
  }, svg('title', {}, `${name}: ${values[values.length - 1]} rows today`)));
  const summary = series.map(([name, values]) => `${name} ${values[values.length - 1]}`).join(', ');
  return h('figure', {},
    svg('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `Rows per table today: ${summary || 'no tables yet'}` },
      svg('line', { x1: left, y1: H - bottom, x2: W, y2: H - bottom, stroke: '#8796a8' }),
      svg('text', { x: 4, y: top + 10, 'font-size': 11, fill: '#5a6678' }, String(max)),
      svg('text', { x: 4, y: H - bottom, 'font-size': 11, fill: '#5a6678' }, '0'),
      lines),
    h('figcaption', { class: 'legend small' }, series.map(([name], i) =>
      h('span', {}, svg('svg', { width: 12, height: 12, 'aria-hidden': 'true' }, svg('rect', { width: 12, height: 12, fill: colours[i % colours.length] })), ' ', name, ' '))));
}

function renderVersions(section, base, versions) {
  const newest = [...versions].reverse();
  const list = h('ol', { class: 'changes', reversed: true }, newest.map((v) => h('li', {},
    h('strong', {}, `v${v.version}`), ` published ${v.published_at} by ${v.published_by}`,
    v.changes.length ? h('ul', {}, v.changes.map((ch) => h('li', {}, badge(ch.impact, ch.impact === 'breaking' ? 'fail' : 'pass'), ' ', h('span', { class: 'mono' }, ch.subject), ': ', ch.message))) : h('span', { class: 'muted' }, ' (first version)'))));
  const opts = (sel) => newest.map((v) => h('option', { value: v.version, selected: v.version === sel }, v.version));
  const from = h('select', { id: 'cl-from' }, opts(versions[0]?.version));
  const to = h('select', { id: 'cl-to' }, opts(versions[versions.length - 1]?.version));
  const out = h('div', { 'aria-live': 'polite' });
  const compare = async (ev) => {
    ev?.preventDefault();
    try {
      const c = await api(`${base}/changelog?from=${encodeURIComponent(from.value)}&to=${encodeURIComponent(to.value)}`);
      out.replaceChildren(h('p', {}, `${c.changes.length} changes from ${c.from} to ${c.to}`, c.breaking ? [' (', badge('breaking', 'fail'), ')'] : ''),
        h('ul', { class: 'changes' }, c.changes.map((ch) => h('li', {}, badge(ch.impact, ch.impact === 'breaking' ? 'fail' : 'pass'), ' ', h('span', { class: 'mono' }, ch.subject), ': ', ch.message))));
    } catch (e) {
      out.replaceChildren(errorBox(e));
    }
  };
  section.append(list, h('form', { class: 'bar', onsubmit: compare },
    h('label', { for: 'cl-from' }, 'Compare '), from, h('label', { for: 'cl-to' }, ' with '), to, ' ', h('button', { type: 'submit', class: 'secondary' }, 'Show changes')), out);
}

// A small YAML highlighter: keys, strings, numbers, booleans, comments.
function highlightYaml(text) {
  const out = [];
  for (const line of text.split('\n')) {
    const m = line.match(/^(\s*-?\s*)([A-Za-z0-9_.$"'-]+)(:)(\s|$)(.*)$/);
    let rest = line;
    if (m) {
      out.push(m[1], h('span', { class: 'k' }, m[2]), m[3], m[4]);
      rest = m[5];
    }
    const c = rest.match(/^(.*?)(\s#.*|^#.*)$/);
    const value = c ? c[1] : rest;
    const comment = c ? c[2] : '';
    const v = value.trim();
    if (/^(true|false|null|~)$/.test(v)) out.push(h('span', { class: 'b' }, value));
    else if (/^-?\d+(\.\d+)?$/.test(v)) out.push(h('span', { class: 'n' }, value));
    else if (/^["']/.test(v)) out.push(h('span', { class: 's' }, value));
    else out.push(value);
    if (comment) out.push(h('span', { class: 'c' }, comment));
    out.push('\n');
  }
  return out;
}

// ---- SQL console ---------------------------------------------------------------

function renderSql(params) {
  document.title = 'SQL console · Tessera catalog';
  const product = params.get('product');
  const editor = h('textarea', { id: 'sql', name: 'sql', spellcheck: 'false', class: 'mono', 'aria-describedby': 'sql-help' });
  const status = h('p', { id: 'sql-status', role: 'status', 'aria-live': 'polite', class: 'muted' });
  const errors = h('div');
  const grid = h('div');
  const runButton = h('button', { type: 'submit' }, 'Run');
  const csvButton = h('button', { type: 'button', class: 'secondary' }, 'Download CSV');

  const prefill = async () => {
    if (product) {
      const [d, n] = product.split('/');
      try {
        const page = await api(productPath(d, n));
        const names = page.contract.tables.map((t) => `${d}.${n}.${t.name}`);
        editor.value = `-- Tables of ${d}/${n}: ${names.join(', ')}\nSELECT *\nFROM ${names[0]}\nLIMIT 100`;
        return;
      } catch (e) {
        errors.replaceChildren(errorBox(e));
      }
    }
    editor.value = sessionStorage.getItem('tessera.sql') || 'SHOW TABLES';
  };

  const run = async (ev) => {
    ev?.preventDefault();
    const sql = editor.value;
    sessionStorage.setItem('tessera.sql', sql);
    runButton.disabled = true;
    errors.replaceChildren();
    status.textContent = 'Running…';
    const started = performance.now();
    try {
      const r = await api('/api/v1/sql', { method: 'POST', body: { sql } });
      const ms = Math.round(performance.now() - started);
      grid.replaceChildren(resultGrid(r.columns, r.rows, 'Query result'));
      if (r.error) {
        errors.replaceChildren(errorBox(new ApiError(0, r.error.code, r.error.message)));
        status.textContent = `${r.rows.length} rows before the error`;
      } else {
        status.textContent = `${r.row_count} rows${r.truncated ? ' (cut at the row limit)' : ''} in ${r.elapsed_ms} ms (${ms} ms with the network)`;
      }
    } catch (e) {
      status.textContent = 'The query failed.';
      grid.replaceChildren();
      errors.replaceChildren(errorBox(e));
    } finally {
      runButton.disabled = false;
    }
  };

  csvButton.addEventListener('click', async () => {
    errors.replaceChildren();
    try {
      const response = await api('/api/v1/sql', { method: 'POST', body: { sql: editor.value }, accept: 'text/csv', raw: true });
      const blob = await response.blob();
      const url = URL.createObjectURL(blob);
      const a = h('a', { href: url, download: 'result.csv' });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      status.textContent = `Downloaded result.csv (${blob.size} bytes)`;
    } catch (e) {
      errors.replaceChildren(errorBox(e));
    }
  });
  editor.addEventListener('keydown', (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && ev.key === 'Enter') run(ev);
  });

  setMain(
    h('h1', {}, 'SQL console'),
    h('form', { class: 'console card', onsubmit: run },
      h('label', { for: 'sql' }, h('strong', {}, 'SQL')),
      h('p', { id: 'sql-help', class: 'small muted' },
        'One read-only statement. Tables are domain.product.table; SHOW TABLES lists those you may read. Ctrl+Enter runs. Values are masked for your role.'),
      editor,
      h('div', { class: 'bar' }, runButton, csvButton, status)),
    errors, grid);
  prefill().then(() => editor.focus());
}

// ---- Start -------------------------------------------------------------------------

document.addEventListener('keydown', (ev) => {
  const typing = ['INPUT', 'TEXTAREA', 'SELECT'].includes(document.activeElement?.tagName);
  if (ev.key === '/' && !typing) {
    const q = document.getElementById('q');
    ev.preventDefault();
    if (q) q.focus();
    else location.hash = '#/';
  }
});
window.addEventListener('hashchange', route);
loadMe().then(route);
