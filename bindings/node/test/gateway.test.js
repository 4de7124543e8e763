'use strict';
// node --test bindings/node/test/ — SLUICE_TEST_UPSTREAM is the mock
// upstream's URL (tests/e2e/test_embed_c_node.py starts it).
const test = require('node:test');
const assert = require('node:assert/strict');
const { Gateway, SluiceError } = require('..');

const UPSTREAM = process.env.SLUICE_TEST_UPSTREAM;
const CONFIG = `
[[providers]]
name = "up"
kind = "openai"
base_url = "${UPSTREAM}/v1"
api_key = "sk-up"

[[models]]
name = "gpt-test"
targets = [{ provider = "up", model = "upstream-model" }]

[[models]]
name = "slow-300"
targets = [{ provider = "up" }]

[[models]]
name = "drip-50"
targets = [{ provider = "up" }]
`;
const msgs = (t = 'Hello') => [{ role: 'user', content: t }];
const stats = async () => (await fetch(`${UPSTREAM}/_stats`)).json();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const gw = new Gateway(CONFIG);

test('chat returns the OpenAI response', async () => {
  const r = await gw.chat({ model: 'gpt-test', messages: msgs('from node') });
  assert.equal(r.object, 'chat.completion');
  assert.ok(r.choices[0].message.content);
  const last = await (await fetch(`${UPSTREAM}/_last`)).json();
  assert.equal(JSON.parse(last.body).model, 'upstream-model');
  assert.equal(last.headers.authorization, 'Bearer sk-up');
});

test('stream is an async iterator of chunks', async () => {
  const chunks = [];
  for await (const c of gw.stream({ model: 'gpt-test', messages: msgs() })) chunks.push(c);
  assert.ok(chunks.length >= 2);
  assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk'));
});

test('leaving a for-await early cancels the upstream request', async () => {
  const before = (await stats()).cancelled;
  for await (const c of gw.stream({ model: 'drip-50', messages: msgs() })) {
    assert.equal(c.object, 'chat.completion.chunk');
    break;
  }
  for (let i = 0; i < 100 && (await stats()).cancelled <= before; i++) await sleep(50);
  assert.ok((await stats()).cancelled > before, 'the upstream saw the cancel');
});

test('errors carry status and code', async () => {
  await assert.rejects(gw.chat({ model: 'no-such-model', messages: msgs() }), (e) => {
    assert.ok(e instanceof SluiceError);
    assert.equal(e.status, 404);
    assert.equal(e.code, 'model_not_found');
    return true;
  });
  assert.throws(() => new Gateway('[[models]]\nname = "x"\ntargets = [{ provider = "nope" }]\n'), (e) => {
    assert.equal(e.status, 400);
    assert.equal(e.code, 'invalid_config');
    assert.match(e.message, /<config>:3:/);
    return true;
  });
});

test('calls run concurrently without blocking the event loop', async () => {
  let ticks = 0;
  const timer = setInterval(() => ticks++, 10);
  const t0 = Date.now();
  const rs = await Promise.all(Array.from({ length: 30 }, (_, i) => gw.chat({ model: 'slow-300', messages: msgs(`${i}`) })));
  clearInterval(timer);
  assert.equal(rs.length, 30);
  assert.ok(Date.now() - t0 < 3000, `30 concurrent 300 ms calls took ${Date.now() - t0} ms`);
  assert.ok(ticks >= 10, `the event loop ticked ${ticks} times`);
});

test('serve answers HTTP clients', async () => {
  const addr = gw.serve('127.0.0.1:0');
  try {
    const r = await fetch(`http://${addr}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-test', messages: msgs() }),
    });
    assert.equal(r.status, 200);
    assert.ok((await r.json()).choices[0].message.content);
    assert.match(gw.metrics(), /sluice_requests_total\{route="\/v1\/chat\/completions",model="gpt-test"/);
  } finally {
    gw.stop();
  }
});

test('reload swaps the configuration; a refused one keeps the running', async () => {
  const g = new Gateway(CONFIG);
  await assert.rejects(g.chat({ model: 'tokens-3', messages: msgs() }), (e) => e.status === 404);
  g.reload(`${CONFIG}\n[[models]]\nname = "tokens-3"\ntargets = [{ provider = "up" }]\n`);
  assert.ok((await g.chat({ model: 'tokens-3', messages: msgs() })).choices);
  assert.throws(() => g.reload('[[models]]\nname = "x"\ntargets = [{ provider = "nope" }]\n'), (e) => e.code === 'invalid_config');
  assert.ok((await g.chat({ model: 'tokens-3', messages: msgs() })).choices);
});
