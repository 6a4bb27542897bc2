// sandbox.files.watchDir: filesystem.Filesystem/WatchDir (server stream). Changes are made with
// node:fs (envd watches this machine's filesystem), so only the watch stream is under test.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { describeErr, newSandbox, scratchPath, sdk, sleep, waitFor } from '../lib/sdk.mjs';

const T = { timeout: 30_000 };
const { FilesystemEventType: E } = sdk;
let sbx;
let dir;
const handles = new Set();

before(async () => {
  sbx = await newSandbox();
  dir = scratchPath('watch');
  mkdirSync(dir, { recursive: true });
});

after(async () => {
  for (const h of handles) await h.stop().catch(() => {});
  rmSync(dir, { recursive: true, force: true });
});

/** Start watching d; events accumulate in w.events. */
async function watch(d, opts = {}) {
  const w = { events: [], exitErr: undefined, exited: false };
  w.handle = await sbx.files.watchDir(d, (ev) => w.events.push(ev), {
    timeoutMs: 60_000,
    onExit: (err) => {
      w.exited = true;
      w.exitErr = err;
    },
    ...opts,
  });
  handles.add(w.handle);
  w.has = (name, type) => w.events.some((e) => e.name === name && e.type === type);
  w.expect = (name, type) =>
    waitFor(() => w.has(name, type), 5000, `${type} event for '${name}'; got ${JSON.stringify(w.events)}`);
  w.stop = async () => {
    await w.handle.stop();
    handles.delete(w.handle);
  };
  return w;
}

describe('files.watchDir', () => {
  it('reports create, write and remove with names relative to the directory, then stop()', T, async () => {
    const d = join(dir, 'basic');
    mkdirSync(d);
    const w = await watch(d);
    writeFileSync(join(d, 'new.txt'), 'first');
    await w.expect('new.txt', E.CREATE);
    appendFileSync(join(d, 'new.txt'), ' more');
    await w.expect('new.txt', E.WRITE);
    rmSync(join(d, 'new.txt'));
    await w.expect('new.txt', E.REMOVE);
    for (const e of w.events) assert.equal(e.name, 'new.txt', `unexpected event ${JSON.stringify(e)}`);
    await w.stop();
    const n = w.events.length;
    writeFileSync(join(d, 'after-stop.txt'), 'x');
    await sleep(500);
    assert.equal(w.events.length, n, `events after stop(): ${JSON.stringify(w.events.slice(n))}`);
    // stop() aborts the stream; the SDK reports that abort to onExit as "[canceled]". Anything
    // else would be an error that came from envd.
    if (w.exitErr) assert.match(w.exitErr.message, /canceled/, `onExit error: ${describeErr(w.exitErr)}`);
  });

  it('reports the creation and removal of a subdirectory', T, async () => {
    const d = join(dir, 'subdirs');
    mkdirSync(d);
    const w = await watch(d);
    mkdirSync(join(d, 'child'));
    await w.expect('child', E.CREATE);
    rmSync(join(d, 'child'), { recursive: true });
    await w.expect('child', E.REMOVE);
    await w.stop();
  });

  it('reports a rename', T, async () => {
    const d = join(dir, 'renames');
    mkdirSync(d);
    writeFileSync(join(d, 'old.txt'), 'x');
    const w = await watch(d);
    renameSync(join(d, 'old.txt'), join(d, 'renamed.txt'));
    await w.expect('old.txt', E.RENAME);
    await w.expect('renamed.txt', E.CREATE);
    await w.stop();
  });

  it('is not recursive by default', T, async () => {
    const d = join(dir, 'flat');
    mkdirSync(join(d, 'inner'), { recursive: true });
    const w = await watch(d);
    writeFileSync(join(d, 'inner', 'deep.txt'), 'x');
    writeFileSync(join(d, 'top.txt'), 'x');
    await w.expect('top.txt', E.CREATE);
    await sleep(300);
    assert.ok(
      !w.events.some((e) => e.name.includes('deep.txt')),
      `nested event reported: ${JSON.stringify(w.events)}`,
    );
    await w.stop();
  });

  it('recursive:true reports nested changes as relative paths, including new subdirectories', T, async () => {
    const d = join(dir, 'rec');
    mkdirSync(join(d, 'inner'), { recursive: true });
    const w = await watch(d, { recursive: true });
    writeFileSync(join(d, 'inner', 'deep.txt'), 'x');
    await w.expect('inner/deep.txt', E.CREATE);
    mkdirSync(join(d, 'made-later'));
    await w.expect('made-later', E.CREATE);
    await sleep(200); // let the watcher add the new directory
    writeFileSync(join(d, 'made-later', 'f.txt'), 'x');
    await w.expect('made-later/f.txt', E.CREATE);
    await w.stop();
  });

  it('several watchers on one directory each get the events', T, async () => {
    const d = join(dir, 'multi');
    mkdirSync(d);
    const w1 = await watch(d);
    const w2 = await watch(d);
    writeFileSync(join(d, 'both.txt'), 'x');
    await w1.expect('both.txt', E.CREATE);
    await w2.expect('both.txt', E.CREATE);
    await w1.stop();
    writeFileSync(join(d, 'only2.txt'), 'x');
    await w2.expect('only2.txt', E.CREATE);
    await w2.stop();
  });

  it('watching a missing directory rejects with NotFoundError', T, async () => {
    await assert.rejects(sbx.files.watchDir(join(dir, 'missing'), () => {}), (err) => {
      assert.ok(err instanceof sdk.NotFoundError, `expected NotFoundError, got ${describeErr(err)}`);
      return true;
    });
  });

  it('watching a file rejects with InvalidArgumentError', T, async () => {
    const f = join(dir, 'a-file');
    writeFileSync(f, 'x');
    await assert.rejects(sbx.files.watchDir(f, () => {}), (err) => {
      assert.ok(err instanceof sdk.InvalidArgumentError, `expected InvalidArgumentError, got ${describeErr(err)}`);
      return true;
    });
  });
});
