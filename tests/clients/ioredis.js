// ioredis against aft: ready check (INFO), commands, MULTI/EXEC, WATCH, pipelines.
// Usage: node ioredis.js PORT. Exits non-zero on the first failed check.
"use strict";
const assert = require("assert/strict");
const Redis = require("ioredis");

async function main() {
  const port = Number(process.argv[2]);
  const r = new Redis({ port, host: "127.0.0.1", maxRetriesPerRequest: 1 });
  assert.equal(await r.ping(), "PONG");
  await r.flushall();
  assert.equal(await r.set("k", "v"), "OK");
  assert.equal(await r.get("k"), "v");
  assert.equal(await r.get("missing"), null);
  assert.equal(await r.incr("n"), 1);
  assert.deepEqual(await r.mget("k", "n", "missing"), ["v", "1", null]);
  assert.equal(await r.set("k", "w", "EX", 100, "GET"), "v");
  const ttl = await r.ttl("k");
  assert.ok(ttl >= 99 && ttl <= 100, `ttl ${ttl}`);

  const buf = Buffer.from([0, 255, 13, 10, 128]);
  await r.set(buf, buf);
  assert.deepEqual(await r.getBuffer(buf), buf);

  // MULTI/EXEC: [err, result] pairs; a run-time error stays inside.
  const res = await r.multi().set("a", "abc").incr("a").get("a").exec();
  assert.equal(res[0][1], "OK");
  assert.ok(res[1][0] instanceof Error, "incr on a string fails inside EXEC");
  assert.equal(res[2][1], "abc");

  // WATCH: a change by another client aborts EXEC (null result).
  const other = new Redis({ port, host: "127.0.0.1" });
  await r.watch("w");
  await other.set("w", "changed");
  const aborted = await r.multi().set("w", "mine").exec();
  assert.equal(aborted, null);
  assert.equal(await r.get("w"), "changed");

  // Pipelines.
  const p = r.pipeline();
  for (let i = 0; i < 500; i++) p.incr("pipelined");
  const out = await p.exec();
  assert.equal(out.length, 500);
  assert.equal(await r.get("pipelined"), "500");

  // Concurrent increments from two connections.
  await Promise.all([
    Promise.all(Array.from({ length: 200 }, () => r.incr("shared"))),
    Promise.all(Array.from({ length: 200 }, () => other.incr("shared"))),
  ]);
  assert.equal(await r.get("shared"), "400");

  await other.quit();
  await r.quit();
  console.log(`ioredis ${require("ioredis/package.json").version}: ok`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
