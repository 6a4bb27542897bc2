// Shared helpers for the e2e tests: load the SDK version run.sh selected, create a debug-mode
// sandbox (no control-plane call; the SDK talks to http://localhost:49983), and give each test
// file a scratch directory of its own under the run's temp dir.
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';

/** npm alias of the SDK under test ("e2b-2.45" or "e2b-2.51"), chosen by run.sh. */
export const SDK_PKG = process.env.E2E_SDK_PKG || 'e2b-2.51';
/** The SDK's module namespace (Sandbox, CommandExitError, TimeoutError, FileType, ...). */
export const sdk = await import(SDK_PKG);
export const { Sandbox, CommandExitError, TimeoutError, NotFoundError, FileType, FilesystemEventType } =
  sdk;

/** Version of the SDK as "major.minor" (the alias suffix), for per-version branches. */
export const SDK_VERSION = SDK_PKG.replace(/^e2b-/, '');

/** Root of the run's temp dir, created and removed by run.sh. */
const ROOT = process.env.E2E_TMP || '/tmp';

/** A fresh directory path (not created) for one test file or one test. */
export function scratchPath(tag) {
  return join(ROOT, `${tag}-${randomBytes(4).toString('hex')}`);
}

/** A sandbox in the SDK's debug mode. run.sh exports E2B_DEBUG=true; pass it explicitly as well
 * so a test file run by hand cannot reach a real control plane. */
export async function newSandbox() {
  process.env.E2B_DEBUG = 'true';
  return Sandbox.create({ debug: true });
}

/** Resolve after ms milliseconds. */
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Poll pred() every 25 ms until it is truthy or timeoutMs passes; returns its last value. */
export async function waitFor(pred, timeoutMs = 5000, what = 'condition') {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(25);
  }
}

/** A one-line description of an error for assertion messages: class, message, extra fields. */
export function describeErr(err) {
  if (!err) return String(err);
  const extra = {};
  for (const k of ['exitCode', 'stdout', 'stderr', 'code', 'status']) if (k in err) extra[k] = err[k];
  return `${err.constructor?.name}: ${err.message} ${JSON.stringify(extra)}`;
}
