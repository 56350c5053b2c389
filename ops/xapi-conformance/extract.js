#!/usr/bin/env node
// Regenerates processors/collector/tests/fixtures/adl_xapi_1_0_3_statements.json
// from a checkout of adlnet/lrs-conformance-test-suite (see README.md here).
//
//   node ops/xapi-conformance/extract.js <suite-dir> [--commit SHA] [--out FILE] [--now ISO]
//
// <suite-dir> is an extracted checkout of the suite with its npm dependencies
// installed (`npm install` inside it). Nothing from the suite is copied here:
// the suite's own test/helper.js, test/templatingSelection.js, configs/*.js,
// templates/**.json and test/v1_0_3/*.js are loaded from <suite-dir> at run
// time. The mocha globals and the HTTP client ('super-request',
// helper.sendRequest) are replaced by recorders, so every `it` of
// test/v1_0_3 runs exactly the code the suite's harness runs, and we capture
// the request it would send and the status it expects. No network is used.
'use strict';

const path = require('path');
const fs = require('fs');
const Module = require('module');
const crypto = require('crypto');
const childProcess = require('child_process');

// ---------------------------------------------------------------- arguments
const argv = process.argv.slice(2);
function flag(name) {
  const i = argv.indexOf(name);
  if (i < 0) return undefined;
  const v = argv[i + 1];
  argv.splice(i, 2);
  return v;
}
const OUT = path.resolve(flag('--out') || path.join(__dirname, '../../processors/collector/tests/fixtures/adl_xapi_1_0_3_statements.json'));
let COMMIT = flag('--commit');
// Frozen clock: the suite derives a few values from "now" (e.g. a timestamp
// five years in the future). Pinning it keeps the fixture byte-stable.
const NOW_ISO = flag('--now') || '2024-10-21T14:50:45.000Z';
if (argv.length !== 1) {
  console.error('usage: extract.js <suite-dir> [--commit SHA] [--out FILE] [--now ISO]');
  process.exit(2);
}
const SUITE = path.resolve(argv[0]);
const VERSION_DIR = 'v1_0_3';
const TEST_DIR = path.join(SUITE, 'test', VERSION_DIR);
if (!fs.existsSync(path.join(TEST_DIR, 'configs')) || !fs.existsSync(path.join(SUITE, 'test/helper.js'))) {
  console.error('not a suite checkout: ' + SUITE);
  process.exit(2);
}
if (!fs.existsSync(path.join(SUITE, 'node_modules'))) {
  console.error('run `npm install` in ' + SUITE + ' first (the suite modules are loaded from there)');
  process.exit(2);
}
if (!COMMIT) {
  try {
    COMMIT = childProcess.execFileSync('git', ['-C', SUITE, 'rev-parse', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch (e) { /* not a work tree */ }
}
if (!/^[0-9a-f]{40}$/.test(COMMIT || '')) {
  console.error('cannot determine the suite commit; pass --commit <40-hex sha>');
  process.exit(2);
}

// ------------------------------------------------------------- environment
// helper.js resolves templates/configs relative to the cwd, reads these env
// vars, and loads test/.env unless EB_NODE_COMMAND is set.
process.chdir(SUITE);
process.env.TZ = 'UTC'; // the suite parses a few local-time date strings
process.env.DIRECTORY = VERSION_DIR;
process.env.EB_NODE_COMMAND = 'extract.js';
process.env.XAPI_VERSION = '1.0.3';
process.env.LRS_ENDPOINT = 'http://lrs.invalid/xapi';
process.env.BASIC_AUTH_ENABLED = 'false';

const RealDate = Date;
const NOW = RealDate.parse(NOW_ISO);
if (Number.isNaN(NOW)) { console.error('bad --now'); process.exit(2); }
class FrozenDate extends RealDate {
  constructor(...a) { if (a.length === 0) super(NOW); else super(...a); }
  static now() { return NOW; }
}
global.Date = FrozenDate;

// Deterministic UUIDs (v4 layout) keyed by the code location that asks.
let uuidScope = 'init';
let uuidCounter = 0;
function setScope(s) { uuidScope = s; uuidCounter = 0; }
function detUUID() {
  const h = crypto.createHash('sha1').update(uuidScope + '#' + (uuidCounter++)).digest('hex');
  return h.slice(0, 8) + '-' + h.slice(8, 12) + '-4' + h.slice(13, 16) + '-' +
    ((parseInt(h[16], 16) & 3) | 8).toString(16) + h.slice(17, 20) + '-' + h.slice(20, 32);
}

// ------------------------------------------------------------- recorders
let currentTest = null;
const hookRequests = [];
function record(rec) { (currentTest ? currentTest.requests : hookRequests).push(rec); }
const snapshot = v => (v === undefined ? undefined : JSON.parse(JSON.stringify(v)));

function fakeResponse(rec) {
  const st = rec.expects.find(e => typeof e[0] === 'number');
  const status = st ? st[0] : 200;
  let body = '';
  if (rec.method === 'POST' && /\/statements/.test(rec.url) && status === 200) {
    const arr = Array.isArray(rec.payload) ? rec.payload : [rec.payload];
    body = JSON.stringify(arr.map(s => (s && s.id) || detUUID()));
  } else if (rec.method === 'GET') {
    body = JSON.stringify({ statements: [], more: '' });
  }
  return {
    statusCode: status, status, body, text: body,
    headers: { 'content-type': 'application/json', 'x-experience-api-consistent-through': new RealDate(NOW).toISOString(), 'x-experience-api-version': '1.0.3' },
  };
}

// Stand-in for the suite's local super-request: same chain API, no I/O. As in
// the real module, a request is only sent by .end() (or .expect(..., cb)).
function fakeSuperRequest() {
  function Test(method, url) {
    this.rec = { client: 'super-request', method, url, headers: {}, expects: [], sent: false };
    record(this.rec);
  }
  ['qs', 'form', 'multipart', 'followRedirect', 'encoding', 'timeout', 'oauth', 'auth', 'jar', 'upload'].forEach(m => {
    Test.prototype[m] = function (v) { this.rec[m] = true; return this; };
  });
  Test.prototype.headers = function (h) { this.rec.headers = Object.assign({}, h); return this; };
  Test.prototype.json = function (d) { this._json = d; this.rec.kind = 'json'; this.rec.payload = snapshot(d); return this; };
  Test.prototype.body = function (b) {
    this.rec.kind = 'body';
    this.rec.payload = Buffer.isBuffer(b) ? b.toString('utf8') : (typeof b === 'string' ? b : snapshot(b));
    return this;
  };
  Test.prototype.wait = function (p) { this._wait = p; return this; };
  Test.prototype.expect = function () {
    const args = Array.prototype.slice.call(arguments);
    const cb = typeof args[args.length - 1] === 'function' ? args.pop() : null;
    this.rec.expects.push(args.map(a => (typeof a === 'function' ? '[function]' : a instanceof RegExp ? String(a) : a)));
    return cb ? this.end(cb) : this;
  };
  Test.prototype.end = function (cb) {
    const rec = this.rec;
    rec.sent = true;
    if (this._json !== undefined) rec.payload = snapshot(this._json); // body is serialised at end()
    const wait = this._wait && typeof this._wait.then === 'function' ? new Promise(r => this._wait.then(r, r)) : null;
    const p = Promise.resolve(wait).then(() => fakeResponse(rec));
    p.then(res => { if (cb) cb(null, res, res.body); });
    return p;
  };
  const methods = { get: 'GET', post: 'POST', put: 'PUT', del: 'DELETE', delete: 'DELETE', head: 'HEAD', options: 'OPTIONS', patch: 'PATCH' };
  return function () {
    const api = {};
    Object.keys(methods).forEach(m => { api[m] = url => new Test(methods[m], url); });
    return api;
  };
}
const FAKE_SUPER_REQUEST = fakeSuperRequest();
const origLoad = Module._load;
Module._load = function (request) {
  if (request === 'super-request') return FAKE_SUPER_REQUEST;
  return origLoad.apply(this, arguments);
};

const helper = require(path.join(SUITE, 'test/helper.js'));
helper.generateUUID = detUUID;
helper.setTimeMargin = done => done(null, 0);
helper.getTimeMargin = () => 0;
helper.genDelay = () => Promise.resolve();
helper.sendRequest = function (type, url, params, body, expect) {
  const rec = {
    client: 'sendRequest', method: String(type).toUpperCase(),
    url: params ? url + '?' + helper.getUrlEncoding(params) : url,
    headers: helper.addAllHeaders({}), expects: [[expect]], sent: true,
    kind: typeof body === 'string' ? 'body' : 'json', payload: snapshot(body),
  };
  record(rec);
  return Promise.resolve(fakeResponse(rec));
};

// Note which `it`s templatingSelection.createTemplate() generates and from
// which config group/case, so config cases can be attributed to configs/*.js.
const templating = require(path.join(SUITE, 'test/templatingSelection.js'));
const origCreateTemplate = templating.createTemplate;
let templateCtx = null;

// ------------------------------------------------------------- mocha stand-in
function Suite(title, parent, file) {
  this.title = title; this.parent = parent; this.file = file; this.children = [];
  this.hooks = { before: [], beforeEach: [] };
  this.skipped = !!(parent && parent.skipped);
}
const root = new Suite('', null, null);
let cur = root;
let curFile = null;
const mochaCtx = { timeout() { return this; }, slow() { return this; }, retries() { return this; }, skip() { throw new Error('skipped'); } };
function describe(title, fn, skipped) {
  const s = new Suite(title, cur, curFile);
  if (skipped) s.skipped = true;
  if (templateCtx && cur === templateCtx.parent) { templateCtx.group++; templateCtx.kase = -1; s.template = { file: templateCtx.file, group: templateCtx.group }; }
  cur.children.push({ suite: s });
  const prev = cur;
  cur = s;
  try { if (fn) fn.call(mochaCtx); } catch (e) { s.loadError = String(e && e.message || e); }
  cur = prev;
}
function it(title, fn, skipped) {
  let tmpl = null;
  if (templateCtx && cur.template) { templateCtx.kase++; tmpl = { file: cur.template.file, group: cur.template.group, kase: templateCtx.kase }; }
  cur.children.push({ test: { title, fn, file: curFile, skipped: !!skipped || cur.skipped, tmpl } });
}
global.describe = describe;
global.context = describe;
global.describe.skip = global.xdescribe = (t, f) => describe(t, f, true);
global.describe.only = describe;
global.it = it;
global.specify = it;
global.it.skip = global.xit = (t, f) => it(t, f, true);
global.it.only = it;
['before', 'beforeEach', 'after', 'afterEach'].forEach(h => {
  global[h] = function (a, b) { const fn = typeof a === 'function' ? a : b; if (cur.hooks[h]) cur.hooks[h].push(fn); };
});
// createTemplate() makes one describe per config group, one it per case.
templating.createTemplate = function (name) {
  templateCtx = { file: name, group: -1, kase: -1, parent: cur };
  try { return origCreateTemplate.apply(this, arguments); } finally { templateCtx = null; }
};

// Load the test files in the order the suite's runner (bin/lrs-test.js) adds them.
const testFiles = fs.readdirSync(TEST_DIR).filter(f => f.substr(-3) === '.js');
const fileRoots = {};
for (const f of testFiles) {
  curFile = f;
  cur = root;
  const before = root.children.length;
  setScope('load:' + f);
  require(path.join(TEST_DIR, f));
  fileRoots[f] = root.children.slice(before);
}

process.on('uncaughtException', e => { if (currentTest) currentTest.errors.push(String(e && e.message || e)); });
process.on('unhandledRejection', e => { if (currentTest) currentTest.errors.push(String(e && e.message || e)); });

function runFn(fn) {
  return new Promise(resolve => {
    let finished = false;
    const fin = err => { if (!finished) { finished = true; resolve(err ? String(err && err.message || err) : null); } };
    try {
      if (fn.length > 0) fn.call(mochaCtx, fin);
      else {
        const r = fn.call(mochaCtx);
        if (r && typeof r.then === 'function') r.then(() => fin(), fin); else fin();
      }
    } catch (e) { fin(e); }
    setTimeout(() => fin('timeout'), 100);
  });
}

const tests = [];
async function runSuite(s, titles, idx, ancestors) {
  setScope('hooks:' + (s.file || '') + ':' + idx.join('.'));
  currentTest = null;
  for (const h of s.hooks.before) await runFn(h);
  const chain = ancestors.concat(s);
  for (let i = 0; i < s.children.length; i++) {
    const c = s.children[i];
    if (c.suite) { await runSuite(c.suite, titles.concat(c.suite.title), idx.concat(i), chain); continue; }
    const t = c.test;
    const rec = { file: t.file, titles: titles.concat(t.title), idx: idx.concat(i), tmpl: t.tmpl, skipped: t.skipped, requests: [], errors: [], fnLength: t.fn ? t.fn.length : null };
    tests.push(rec);
    if (t.skipped || !t.fn) continue;
    currentTest = null;
    for (const a of chain) for (const h of a.hooks.beforeEach) await runFn(h);
    setScope('test:' + t.file + ':' + rec.idx.join('.') + ':' + t.title);
    currentTest = rec;
    rec.result = await runFn(t.fn);
    currentTest = null;
  }
}

// ------------------------------------------------------------- selection
// Files whose statement writes test transport rather than statement content.
const OUT_OF_SCOPE_FILES = {
  'H.Communication1.1-HeadRequestImplementation.js': 'HEAD semantics (statements sent as arrays)',
  'H.Communication1.3-AlternateRequestSyntax.js': 'alternate request syntax (form bodies)',
  'H.Communication4.0-Authentication.js': 'authentication',
  'E.Data2.6-SignedStatements.js': 'signed statements (multipart bodies)',
};
const isStatementsWrite = r => (r.method === 'POST' || r.method === 'PUT') && /^\/statements(\?|$)/.test(r.url);

function classify(t) {
  const writes = t.requests.filter(isStatementsWrite);
  if (writes.length === 0) return { skip: 'no statement write' };
  if (OUT_OF_SCOPE_FILES[t.file]) return { skip: OUT_OF_SCOPE_FILES[t.file] };
  if (writes.length > 1) return { skip: 'several writes (conflict / prior state)' };
  const w = writes[0];
  if (w.kind !== 'json') return { skip: 'non-JSON body (multipart or raw)' };
  if (Array.isArray(w.payload)) return { skip: 'statement batch (array body)' };
  if (w.payload === null || typeof w.payload !== 'object') return { skip: 'body is not a statement object' };
  const std = helper.addAllHeaders({});
  if (Object.keys(w.headers).length !== Object.keys(std).length || Object.keys(std).some(k => w.headers[k] !== std[k])) return { skip: 'non-standard request headers' };
  if (w.method === 'POST' && w.url !== '/statements') return { skip: 'POST with query parameters' };
  if (w.method === 'PUT' && !/^\/statements\?statementId=[^&]+$/.test(w.url)) return { skip: 'PUT without a well-formed statementId parameter' };
  const st = w.expects.find(e => typeof e[0] === 'number');
  if (!st) return { skip: 'no expected status (outcome depends on prior state)' };
  const status = st[0];
  if (![200, 204, 400].includes(status)) return { skip: 'expected status ' + status };
  return { write: w, status };
}

// ------------------------------------------------------------- notes
function findPlaceholders(v, p, out) {
  if (typeof v === 'string') { if (/\{\{[^}]*\}\}/.test(v)) out.push(p + ' = ' + JSON.stringify(v)); }
  else if (Array.isArray(v)) v.forEach((x, i) => findPlaceholders(x, p + '[' + i + ']', out));
  else if (v && typeof v === 'object') Object.keys(v).forEach(k => findPlaceholders(v[k], p + '.' + k, out));
  return out;
}
function hasKey(v, key) {
  if (Array.isArray(v)) return v.some(x => hasKey(x, key));
  if (v && typeof v === 'object') return Object.keys(v).some(k => k === key || hasKey(v[k], key));
  return false;
}
function stripIds(v) {
  if (Array.isArray(v)) return v.map(stripIds);
  if (v && typeof v === 'object') {
    const o = {};
    Object.keys(v).forEach(k => { o[k] = (k === 'id' && typeof v[k] === 'string' && /^[0-9a-f]{8}-[0-9a-f]{4}-4/.test(v[k])) ? '<uuid>' : stripIds(v[k]); });
    return o;
  }
  return v;
}

// Per-case annotations that need a human reading of the suite (each checked
// against the suite source and xAPI 1.0.3). Keys are case ids; the script
// fails if a key no longer matches a case, so a suite update cannot silently
// attach a note to the wrong statement.
const CASE_NOTES = require('./notes.js');

(async () => {
  await runSuite(root, [], [], []);

  const cases = [];
  const skipped = {};
  for (const t of tests) {
    const c = classify(t);
    if (c.skip) { if (c.skip !== 'no statement write') (skipped[c.skip] = skipped[c.skip] || []).push(t.file + ': ' + t.titles[t.titles.length - 1]); continue; }
    let id, source, name;
    if (t.tmpl) {
      id = 'configs/' + t.tmpl.file + '#' + t.tmpl.group + '.' + t.tmpl.kase;
      source = 'test/' + VERSION_DIR + '/configs/' + t.tmpl.file;
    } else {
      // index path relative to the file's own top-level blocks
      const top = fileRoots[t.file];
      const rootIdx = root.children.indexOf(top[0]);
      const rel = [t.idx[0] - rootIdx].concat(t.idx.slice(1));
      id = t.file.replace(/\.js$/, '') + '#' + rel.join('.');
      source = 'test/' + VERSION_DIR + '/' + t.file;
    }
    const titles = t.titles;
    name = titles.length > 1 ? titles[titles.length - 2] + ' > ' + titles[titles.length - 1] : titles[0];
    const entry = {
      id, source, name,
      expect: c.status === 400 ? 'reject' : 'accept',
      status: c.status,
      method: c.write.method,
      path: titles,
    };
    if (t.tmpl) entry.runner = 'test/' + VERSION_DIR + '/' + t.file;
    entry.statement = c.write.payload;
    const tags = [];
    const notes = [];
    if (!c.write.sent) {
      tags.push('never-sent');
      notes.push('The suite builds this request but never sends it: the `it` callback takes no `done`, and `.expect(' + c.status + ', done)` resolves `done` to the enclosing describe\'s (undefined) argument, so super-request never calls .end(). The case passes in the suite for any LRS.');
    }
    if (t.requests.some(r => r.method === 'GET' || r.method === 'HEAD')) tags.push('write-then-read');
    if (hasKey(entry.statement, 'timestamp') || hasKey(entry.statement, 'stored') || hasKey(entry.statement, 'timeStamp') || hasKey(entry.statement, 'STOred')) tags.push('timestamp');
    const ph = findPlaceholders(entry.statement, '$', []);
    if (ph.length) { tags.push('unresolved-placeholder'); notes.push('Template placeholder left unresolved in the sent JSON: ' + ph.join('; ')); }
    entry._tags = tags;
    entry._notes = notes;
    cases.push(entry);
  }

  // duplicates (same body modulo generated UUIDs)
  const byBody = {};
  for (const e of cases) {
    const k = JSON.stringify(stripIds(e.statement));
    (byBody[k] = byBody[k] || []).push(e);
  }
  let conflicting = 0;
  for (const k of Object.keys(byBody)) {
    const group = byBody[k];
    if (group.length < 2) continue;
    const expects = new Set(group.map(e => e.expect));
    if (expects.size > 1) {
      conflicting++;
      for (const e of group) {
        e._tags.push('conflicting-duplicate');
        e._notes.push('Same statement body (modulo generated UUIDs) is expected to be ' + group.filter(o => o !== e).map(o => o.expect + ' in ' + o.id).join(', ') + '.');
      }
    } else {
      for (const e of group.slice(1)) { e._tags.push('duplicate'); e.duplicate_of = group[0].id; }
    }
  }

  const known = new Set(cases.map(e => e.id));
  for (const id of Object.keys(CASE_NOTES.cases)) {
    if (!known.has(id)) { console.error('notes.js names an unknown case id: ' + id); process.exit(1); }
  }
  for (const e of cases) {
    const extra = CASE_NOTES.cases[e.id];
    if (extra) { e._tags.push(...extra.tags); e._notes.push(extra.note); }
    const ordered = { id: e.id, source: e.source, name: e.name, expect: e.expect, status: e.status, method: e.method };
    if (e._tags.length) ordered.tags = [...new Set(e._tags)].sort();
    if (e._notes.length) ordered.note = e._notes.join(' ');
    if (e.duplicate_of) ordered.duplicate_of = e.duplicate_of;
    ordered.path = e.path;
    if (e.runner) ordered.runner = e.runner;
    ordered.statement = e.statement;
    Object.keys(e).forEach(k => delete e[k]);
    Object.assign(e, ordered);
  }

  const counts = {};
  for (const e of cases) counts[e.source] = counts[e.source] || { accept: 0, reject: 0 }, counts[e.source][e.expect]++;
  const fixture = {
    suite: 'adlnet/lrs-conformance-test-suite',
    commit: COMMIT,
    generated_by: 'ops/xapi-conformance/extract.js',
    notes: CASE_NOTES.notes.concat([
      'Clock frozen at ' + NOW_ISO + ' and helper.generateUUID() replaced by a deterministic v4-shaped generator, so regeneration is byte-stable; UUID values are therefore not the ones a live run would send, and "future" timestamps are relative to that clock.',
      'Excluded writes (statement-resource POST/PUT tests that are not single-statement content cases): ' + Object.keys(skipped).sort().map(k => k + ' x' + skipped[k].length).join('; ') + '.',
      conflicting ? conflicting + ' statement bodies appear with both expectations; see tag conflicting-duplicate.' : 'No statement body appears with both expectations.',
    ]),
    counts: { total: cases.length, accept: cases.filter(e => e.expect === 'accept').length, reject: cases.filter(e => e.expect === 'reject').length, by_source: counts },
    cases,
  };

  // One case per block, statements compact: reviewable diffs, modest size.
  const lines = [];
  lines.push('{');
  for (const k of ['suite', 'commit', 'generated_by', 'notes', 'counts']) lines.push('  ' + JSON.stringify(k) + ': ' + JSON.stringify(fixture[k], null, 2).replace(/\n/g, '\n  ') + ',');
  lines.push('  "cases": [');
  cases.forEach((e, i) => {
    const parts = Object.keys(e).map(k => '      ' + JSON.stringify(k) + ': ' + JSON.stringify(e[k]));
    lines.push('    {\n' + parts.join(',\n') + '\n    }' + (i < cases.length - 1 ? ',' : ''));
  });
  lines.push('  ]');
  lines.push('}');
  fs.mkdirSync(path.dirname(OUT), { recursive: true });
  fs.writeFileSync(OUT, lines.join('\n') + '\n');
  JSON.parse(fs.readFileSync(OUT, 'utf8'));
  console.error('wrote ' + OUT + ': ' + cases.length + ' cases (' + fixture.counts.accept + ' accept, ' + fixture.counts.reject + ' reject)');
  process.exit(0);
})().catch(e => { console.error(e && e.stack || e); process.exit(1); });
