// sandbox.commands.*: process.Process/Start, Connect, List, SendInput, CloseStdin, SendSignal.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';

import { CommandExitError, TimeoutError, describeErr, newSandbox, sdk, sleep, waitFor } from '../lib/sdk.mjs';

const T = { timeout: 30_000 };
let sbx;
/** Background processes started by a test, killed in after() if a test failed half-way. */
const started = new Set();

/** A unique shell comment, so a command can be found again in commands.list(). */
const marker = () => `e2e-${randomBytes(4).toString('hex')}`;

/** Start cmd in the background and wait until it printed "ready": only then is it safe to kill.
 * (A login shell killed while its profile runs can leave the machine's profile state broken;
 * e.g. pyenv's rehash lock, after which every root login shell stalls for 60 s.) */
async function startReady(cmd, opts = {}) {
  let out = '';
  const h = await sbx.commands.run(`echo ready; ${cmd}`, {
    ...opts,
    background: true,
    onStdout: (d) => {
      out += d;
    },
  });
  started.add(h.pid);
  await waitFor(() => out.includes('ready\n'), 10_000, `"ready" from pid ${h.pid}`);
  return h;
}

async function findByMarker(m) {
  const list = await sbx.commands.list();
  return list.find((p) => (p.args || []).some((a) => a.includes(m)));
}

before(async () => {
  sbx = await newSandbox();
});

after(async () => {
  for (const pid of started) await sbx.commands.kill(pid).catch(() => {});
});

describe('commands.run', () => {
  it('returns stdout and exit code 0', T, async () => {
    const r = await sbx.commands.run('echo hello');
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'hello\n');
    assert.equal(r.stderr, '');
  });

  it('returns stderr separately from stdout', T, async () => {
    const r = await sbx.commands.run('echo to-out; echo to-err >&2');
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'to-out\n');
    assert.equal(r.stderr, 'to-err\n');
  });

  it('non-zero exit rejects with CommandExitError carrying exitCode, stdout, stderr', T, async () => {
    await assert.rejects(sbx.commands.run('echo partial; echo broken >&2; exit 3'), (err) => {
      assert.ok(err instanceof CommandExitError, `expected CommandExitError, got ${describeErr(err)}`);
      assert.equal(err.exitCode, 3);
      assert.equal(err.stdout, 'partial\n');
      assert.equal(err.stderr, 'broken\n');
      return true;
    });
  });

  it('output larger than one pipe buffer arrives complete and in order', T, async () => {
    // 200000 lines of "%06d\n" = 1.4 MB through the stream.
    const r = await sbx.commands.run('seq -f "%06g" 1 200000');
    const lines = r.stdout.split('\n');
    assert.equal(lines.length, 200001);
    assert.equal(lines[0], '000001');
    assert.equal(lines[199999], '200000');
    assert.equal(r.stdout.length, 200000 * 7);
  });

  it('non-UTF-8 bytes and multi-byte characters survive base64 transport', T, async () => {
    const r = await sbx.commands.run("printf 'h\\xc3\\xa9llo \\xe2\\x82\\xac\\n'");
    assert.equal(r.stdout, 'héllo €\n');
  });

  it('passes envs to the command', T, async () => {
    const r = await sbx.commands.run('echo "$E2E_A|$E2E_B|$E2E_EMPTY|"', {
      envs: { E2E_A: 'value with spaces', E2E_B: 'x=y;$HOME', E2E_EMPTY: '' },
    });
    assert.equal(r.stdout, 'value with spaces|x=y;$HOME||\n');
  });

  it('runs in the given cwd', T, async () => {
    const r = await sbx.commands.run('pwd', { cwd: '/tmp' });
    assert.equal(r.stdout, '/tmp\n');
  });

  it('a cwd that does not exist is rejected (invalid_argument), not run elsewhere', T, async () => {
    await assert.rejects(sbx.commands.run('pwd', { cwd: '/nonexistent-e2e-dir' }), (err) => {
      assert.ok(!(err instanceof CommandExitError), `command ran anyway: ${describeErr(err)}`);
      assert.ok(err instanceof sdk.InvalidArgumentError, `expected InvalidArgumentError, got ${describeErr(err)}`);
      return true;
    });
  });

  it("user 'root' runs as root", T, async () => {
    const r = await sbx.commands.run('id -un; id -u', { user: 'root' });
    assert.equal(r.stdout, 'root\n0\n');
  });

  it("user 'nobody' with cwd /tmp runs as nobody", T, async () => {
    const r = await sbx.commands.run('id -un; pwd; echo "$USER"', { user: 'nobody', cwd: '/tmp' });
    assert.equal(r.stdout, 'nobody\n/tmp\nnobody\n');
  });

  it('an unknown user is rejected as unauthenticated', T, async () => {
    await assert.rejects(sbx.commands.run('true', { user: 'no-such-user-e2e' }), (err) => {
      assert.ok(err instanceof sdk.AuthenticationError, `expected AuthenticationError, got ${describeErr(err)}`);
      return true;
    });
  });

  it('the default user is root and HOME is its home', T, async () => {
    const r = await sbx.commands.run('id -un; echo "$HOME"');
    assert.equal(r.stdout, 'root\n/root\n');
  });

  it('stdin is closed (EOF) when not requested: cat exits at once', T, async () => {
    const r = await sbx.commands.run('cat; echo done', { timeoutMs: 5000 });
    assert.equal(r.stdout, 'done\n');
  });

  it('onStdout/onStderr receive the output as it is produced', T, async () => {
    const out = [];
    const err = [];
    let firstAt = 0;
    const t0 = Date.now();
    const r = await sbx.commands.run('echo o1; echo e1 >&2; sleep 1; echo o2; echo e2 >&2', {
      onStdout: (d) => {
        if (!firstAt) firstAt = Date.now();
        out.push(d);
      },
      onStderr: (d) => err.push(d),
    });
    const total = Date.now() - t0;
    assert.equal(out.join(''), 'o1\no2\n');
    assert.equal(err.join(''), 'e1\ne2\n');
    assert.equal(r.stdout, 'o1\no2\n');
    assert.equal(r.stderr, 'e1\ne2\n');
    // Streaming, not buffered until exit: the first chunk came well before the end.
    assert.ok(firstAt - t0 < total - 500, `first stdout after ${firstAt - t0} ms of ${total} ms`);
  });
});

// These run as 'nobody' (cwd /tmp): the deadline may kill the shell while a root login profile
// is still running (see startReady).
const NOBODY = { user: 'nobody', cwd: '/tmp' };

describe('commands timeouts', () => {
  it('timeoutMs: sleep 5 with timeoutMs 1000 rejects with TimeoutError, then kill', T, async () => {
    const m = marker();
    const t0 = Date.now();
    await assert.rejects(sbx.commands.run(`sleep 5; : ${m}`, { ...NOBODY, timeoutMs: 1000 }), (err) => {
      assert.ok(err instanceof TimeoutError, `expected TimeoutError, got ${describeErr(err)}`);
      return true;
    });
    const took = Date.now() - t0;
    assert.ok(took >= 900 && took < 4000, `rejected after ${took} ms`);
    // envd kills a process whose Connect-Timeout-Ms expired; if it is still there, kill it now.
    const p = await findByMarker(m);
    if (p) {
      started.add(p.pid);
      await sbx.commands.kill(p.pid);
    }
    await waitFor(async () => !(await findByMarker(m)), 5000, 'the timed-out process to leave the list');
  });

  // Wrenn deviates from E2B's envd on purpose here (docs/envd.md, "A command outlives its
  // stream's deadline"): the stream ends with deadline_exceeded, the process keeps running.
  it('a command outlives its Connect-Timeout-Ms: still listed, connect() re-attaches, kill() ends it', T, async () => {
    const m = marker();
    await assert.rejects(
      sbx.commands.run(`sleep 0.3; echo still-here; sleep 20; : ${m}`, { ...NOBODY, timeoutMs: 1000 }),
      TimeoutError,
    );
    await sleep(500);
    const p = await findByMarker(m);
    assert.ok(p, 'the timed-out command is no longer listed');
    started.add(p.pid);
    const c = await sbx.commands.connect(p.pid, { timeoutMs: 10_000 });
    assert.equal(await sbx.commands.kill(p.pid), true);
    await assert.rejects(c.wait(), CommandExitError);
    started.delete(p.pid);
    await waitFor(async () => !(await findByMarker(m)), 3000, 'the killed process to leave the list');
  });

  it('timeoutMs 0 means no deadline (a 2 s command completes)', T, async () => {
    const r = await sbx.commands.run('sleep 2; echo ok', { timeoutMs: 0 });
    assert.equal(r.stdout, 'ok\n');
  });
});

describe('background processes', () => {
  it('background:true returns a handle with a pid before the command ends', T, async () => {
    const t0 = Date.now();
    const h = await sbx.commands.run('sleep 1; echo bg-done', { background: true });
    started.add(h.pid);
    assert.ok(Date.now() - t0 < 900, 'run() waited for the command');
    assert.ok(Number.isInteger(h.pid) && h.pid > 0, `pid ${h.pid}`);
    const r = await h.wait();
    started.delete(h.pid);
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'bg-done\n');
  });

  it('commands.connect(pid) attaches to live output and the end', T, async () => {
    const h = await sbx.commands.run('sleep 1; echo later; exit 4', { background: true });
    started.add(h.pid);
    const seen = [];
    const c = await sbx.commands.connect(h.pid, { onStdout: (d) => seen.push(d) });
    assert.equal(c.pid, h.pid);
    await assert.rejects(c.wait(), (err) => {
      assert.ok(err instanceof CommandExitError, describeErr(err));
      assert.equal(err.exitCode, 4);
      return true;
    });
    assert.equal(seen.join(''), 'later\n');
    await h.wait().catch(() => {});
    started.delete(h.pid);
  });

  it('commands.kill(pid) ends a background process; connect sees the end', T, async () => {
    const h = await startReady('sleep 30');
    const c = await sbx.commands.connect(h.pid);
    assert.equal(await sbx.commands.kill(h.pid), true);
    // SIGKILL: exit code -1 (signal), so wait() rejects with CommandExitError.
    await assert.rejects(c.wait(), (err) => {
      assert.ok(err instanceof CommandExitError, describeErr(err));
      assert.notEqual(err.exitCode, 0);
      return true;
    });
    await assert.rejects(h.wait(), CommandExitError);
    started.delete(h.pid);
    const list = await sbx.commands.list();
    assert.ok(!list.some((p) => p.pid === h.pid), 'killed process still listed');
  });

  it('handle.kill() works too, and killing an unknown pid returns false', T, async () => {
    const h = await startReady('sleep 30');
    assert.equal(await h.kill(), true);
    await assert.rejects(h.wait(), CommandExitError);
    started.delete(h.pid);
    assert.equal(await sbx.commands.kill(h.pid), false);
    assert.equal(await sbx.commands.kill(2 ** 31), false);
  });

  it('connect to an unknown pid rejects with NotFoundError', T, async () => {
    await assert.rejects(sbx.commands.connect(2 ** 31 - 7), (err) => {
      assert.ok(err instanceof sdk.NotFoundError, `expected NotFoundError, got ${describeErr(err)}`);
      return true;
    });
  });

  it('commands.list shows a running process with its cmd, args, envs and cwd', T, async () => {
    const m = marker();
    const h = await startReady(`sleep 30; : ${m}`, { cwd: '/tmp', envs: { E2E_LIST: m } });
    const list = await sbx.commands.list();
    const p = list.find((x) => x.pid === h.pid);
    assert.ok(p, `pid ${h.pid} not in ${JSON.stringify(list.map((x) => x.pid))}`);
    assert.equal(p.cmd, '/bin/bash');
    assert.deepEqual(p.args, ['-l', '-c', `echo ready; sleep 30; : ${m}`]);
    assert.equal(p.envs?.E2E_LIST, m);
    assert.equal(p.cwd, '/tmp');
    await sbx.commands.kill(h.pid);
    await h.wait().catch(() => {});
    started.delete(h.pid);
    await waitFor(async () => !(await sbx.commands.list()).some((x) => x.pid === h.pid), 3000, 'list to drop the pid');
  });
});

describe('stdin', () => {
  it('stdin:true + sendStdin + closeStdin feeds cat', T, async () => {
    const h = await sbx.commands.run('cat', { background: true, stdin: true });
    started.add(h.pid);
    await sbx.commands.sendStdin(h.pid, 'hello\n');
    await sbx.commands.sendStdin(h.pid, new TextEncoder().encode('wörld\n'));
    await sbx.commands.closeStdin(h.pid);
    const r = await h.wait();
    started.delete(h.pid);
    assert.equal(r.stdout, 'hello\nwörld\n');
  });

  it('handle.sendStdin/closeStdin and a large input', T, async () => {
    const h = await sbx.commands.run('wc -c', { background: true, stdin: true });
    started.add(h.pid);
    const chunk = 'x'.repeat(64 * 1024);
    for (let i = 0; i < 8; i++) await h.sendStdin(chunk);
    await h.closeStdin();
    const r = await h.wait();
    started.delete(h.pid);
    assert.equal(r.stdout.trim(), String(8 * 64 * 1024));
  });

  it('sendStdin to an unknown pid rejects with NotFoundError', T, async () => {
    await assert.rejects(sbx.commands.sendStdin(2 ** 31 - 9, 'x'), (err) => {
      assert.ok(err instanceof sdk.NotFoundError, `expected NotFoundError, got ${describeErr(err)}`);
      return true;
    });
  });
});

describe('concurrency', () => {
  it('ten commands in parallel each get their own output', T, async () => {
    const rs = await Promise.all(
      Array.from({ length: 10 }, (_, i) => sbx.commands.run(`sleep 0.$((RANDOM % 5)); echo n${i}`)),
    );
    rs.forEach((r, i) => assert.equal(r.stdout, `n${i}\n`));
  });

  it('the daemon is still healthy after the tests above', T, async () => {
    await sleep(10);
    assert.equal(await sbx.isRunning(), true);
  });
});
