// Exit 0 when node_modules already holds exactly what package-lock.json pins (every package at
// its locked version), so run.sh can skip `npm ci`: that wipes node_modules, which breaks a
// concurrent run and needs the registry (absent, e.g., in a network namespace).
const fs = require('node:fs');
const path = require('node:path');

const here = path.join(__dirname, '..');
try {
  const lock = JSON.parse(fs.readFileSync(path.join(here, 'package-lock.json'), 'utf8'));
  for (const [p, meta] of Object.entries(lock.packages || {})) {
    if (!p || meta.link) continue; // the root project, symlinked workspaces
    const file = path.join(here, p, 'package.json');
    // npm skips optional packages whose engines or platform do not fit (undici 8 needs node 22).
    if (meta.optional && !fs.existsSync(file)) continue;
    const pj = JSON.parse(fs.readFileSync(file, 'utf8'));
    if (pj.version !== meta.version) process.exit(1);
  }
  process.exit(0);
} catch {
  process.exit(1);
}
