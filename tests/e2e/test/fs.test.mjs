// sandbox.files.{list,makeDir,exists,getInfo,rename,remove}: filesystem.Filesystem unary RPCs.
// Setup and verification go through node:fs (envd runs on this machine), so each test exercises
// exactly one RPC.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';

import { describeErr, newSandbox, scratchPath, sdk } from '../lib/sdk.mjs';

const T = { timeout: 30_000 };
const { FileType } = sdk;
let sbx;
let dir;

before(async () => {
  sbx = await newSandbox();
  dir = scratchPath('fs');
  mkdirSync(dir, { recursive: true });
});

after(() => {
  rmSync(dir, { recursive: true, force: true });
});

const notFound = (err) => {
  assert.ok(err instanceof sdk.NotFoundError, `expected NotFoundError, got ${describeErr(err)}`);
  return true;
};

describe('files.list', () => {
  let root;
  before(() => {
    root = join(dir, 'tree');
    mkdirSync(join(root, 'sub', 'deeper'), { recursive: true });
    writeFileSync(join(root, 'a.txt'), 'aaa');
    writeFileSync(join(root, 'sub', 'b.txt'), 'bb');
    writeFileSync(join(root, 'sub', 'deeper', 'c.txt'), 'c');
  });

  it('lists one level by default with names, paths and types', T, async () => {
    const entries = await sbx.files.list(root);
    const got = entries.map((e) => [e.name, e.path, e.type]).sort();
    assert.deepEqual(got, [
      ['a.txt', join(root, 'a.txt'), FileType.FILE],
      ['sub', join(root, 'sub'), FileType.DIR],
    ]);
    const a = entries.find((e) => e.name === 'a.txt');
    assert.equal(a.size, 3);
  });

  it('depth 2 includes the second level', T, async () => {
    const entries = await sbx.files.list(root, { depth: 2 });
    assert.deepEqual(entries.map((e) => e.path).sort(), [
      join(root, 'a.txt'),
      join(root, 'sub'),
      join(root, 'sub', 'b.txt'),
      join(root, 'sub', 'deeper'),
    ]);
  });

  it('depth 3 includes the third level', T, async () => {
    const entries = await sbx.files.list(root, { depth: 3 });
    assert.deepEqual(entries.map((e) => e.path).sort(), [
      join(root, 'a.txt'),
      join(root, 'sub'),
      join(root, 'sub', 'b.txt'),
      join(root, 'sub', 'deeper'),
      join(root, 'sub', 'deeper', 'c.txt'),
    ]);
    const c = entries.find((e) => e.name === 'c.txt');
    assert.equal(c.type, FileType.FILE);
  });

  it('an empty directory lists as []', T, async () => {
    const d = join(dir, 'empty-dir');
    mkdirSync(d);
    assert.deepEqual(await sbx.files.list(d), []);
  });

  it('a missing directory rejects with NotFoundError', T, async () => {
    await assert.rejects(sbx.files.list(join(dir, 'missing-dir')), notFound);
  });

  it('listing a file rejects with InvalidArgumentError', T, async () => {
    await assert.rejects(sbx.files.list(join(root, 'a.txt')), (err) => {
      assert.ok(err instanceof sdk.InvalidArgumentError, `expected InvalidArgumentError, got ${describeErr(err)}`);
      return true;
    });
  });
});

describe('files.makeDir', () => {
  it('returns true when it creates the directory (with parents), false when it exists', T, async () => {
    const d = join(dir, 'mk', 'a', 'b');
    assert.equal(await sbx.files.makeDir(d), true);
    assert.ok(statSync(d).isDirectory());
    assert.equal(await sbx.files.makeDir(d), false);
  });

  it('a path that exists as a file is an error, not false', T, async () => {
    const f = join(dir, 'mk-file');
    writeFileSync(f, 'x');
    assert.equal(await sbx.files.makeDir(join(dir, 'mk-control')), true); // positive control
    await assert.rejects(sbx.files.makeDir(f), (err) => {
      assert.doesNotMatch(err.message, /unimplemented|HTTP 404/, describeErr(err));
      return true;
    });
  });

  it("user 'nobody' creates a directory owned by nobody", T, async () => {
    const parent = join(dir, 'mk-nobody');
    mkdirSync(parent);
    chmodSync(parent, 0o777);
    const d = join(parent, 'x', 'y');
    assert.equal(await sbx.files.makeDir(d, { user: 'nobody' }), true);
    assert.equal(statSync(d).uid, 65534);
    assert.equal(statSync(join(parent, 'x')).uid, 65534);
  });
});

describe('files.exists', () => {
  it('true for a file and a directory, false for a missing path', T, async () => {
    const f = join(dir, 'ex.txt');
    writeFileSync(f, 'x');
    assert.equal(await sbx.files.exists(f), true);
    assert.equal(await sbx.files.exists(dir), true);
    assert.equal(await sbx.files.exists(join(dir, 'nope')), false);
  });
});

describe('files.getInfo', () => {
  it('describes a file', T, async () => {
    const f = join(dir, 'info.txt');
    writeFileSync(f, 'twelve bytes');
    chmodSync(f, 0o640);
    const when = new Date('2024-05-06T07:08:09Z');
    utimesSync(f, when, when);
    const info = await sbx.files.getInfo(f);
    assert.equal(info.name, 'info.txt');
    assert.equal(info.path, f);
    assert.equal(info.type, FileType.FILE);
    assert.equal(info.size, 12);
    assert.equal(info.mode & 0o777, 0o640, `mode ${info.mode?.toString(8)}`);
    assert.equal(info.permissions, '-rw-r-----');
    assert.equal(info.owner, 'root');
    assert.equal(info.group, 'root');
    assert.ok(info.modifiedTime instanceof Date, `modifiedTime ${info.modifiedTime}`);
    assert.equal(info.modifiedTime.getTime(), when.getTime());
    assert.equal(info.symlinkTarget, undefined);
  });

  it('describes a directory', T, async () => {
    const d = join(dir, 'info-dir');
    mkdirSync(d);
    chmodSync(d, 0o755);
    const info = await sbx.files.getInfo(d);
    assert.equal(info.type, FileType.DIR);
    assert.equal(info.name, 'info-dir');
    assert.equal(info.permissions, 'drwxr-xr-x');
  });

  it('a symlink reports its target', T, async () => {
    const target = join(dir, 'link-target.txt');
    const link = join(dir, 'link');
    writeFileSync(target, 'target');
    symlinkSync(target, link);
    const info = await sbx.files.getInfo(link);
    assert.equal(info.name, 'link');
    assert.equal(info.symlinkTarget, target);
  });

  it('a missing path rejects with NotFoundError', T, async () => {
    await assert.rejects(sbx.files.getInfo(join(dir, 'missing')), notFound);
  });
});

describe('files.rename', () => {
  it('moves a file and returns the new entry', T, async () => {
    const a = join(dir, 'mv-a.txt');
    const b = join(dir, 'mv-b.txt');
    writeFileSync(a, 'moving');
    const info = await sbx.files.rename(a, b);
    assert.equal(info.path, b);
    assert.equal(info.name, 'mv-b.txt');
    assert.equal(info.type, FileType.FILE);
    assert.equal(existsSync(a), false);
    assert.equal(readFileSync(b, 'utf8'), 'moving');
  });

  it('moves a directory into a new parent', T, async () => {
    const a = join(dir, 'mv-dir');
    mkdirSync(a);
    writeFileSync(join(a, 'in.txt'), 'in');
    const b = join(dir, 'mv-new-parent', 'moved-dir');
    const info = await sbx.files.rename(a, b);
    assert.equal(info.type, FileType.DIR);
    assert.equal(readFileSync(join(b, 'in.txt'), 'utf8'), 'in');
  });

  it('a missing source rejects with NotFoundError', T, async () => {
    await assert.rejects(sbx.files.rename(join(dir, 'nope'), join(dir, 'nope2')), notFound);
  });
});

describe('files.remove', () => {
  it('removes a file', T, async () => {
    const f = join(dir, 'rm.txt');
    writeFileSync(f, 'x');
    await sbx.files.remove(f);
    assert.equal(existsSync(f), false);
  });

  it('removes a directory tree', T, async () => {
    const d = join(dir, 'rm-tree');
    mkdirSync(join(d, 'x', 'y'), { recursive: true });
    writeFileSync(join(d, 'x', 'y', 'z.txt'), 'z');
    await sbx.files.remove(d);
    assert.equal(existsSync(d), false);
  });

  it('then exists() is false', T, async () => {
    const f = join(dir, 'rm2.txt');
    writeFileSync(f, 'x');
    assert.equal(await sbx.files.exists(f), true);
    await sbx.files.remove(f);
    assert.equal(await sbx.files.exists(f), false);
  });
});
