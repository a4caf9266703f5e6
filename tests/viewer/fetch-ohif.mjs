// Puts the built OHIF viewer in node_modules/@ohif/app (its dist/ is what the tests serve).
// Run by `npm ci` as this package's postinstall; idempotent.
//
// @ohif/app is not listed as a dependency because npm would then install its ~40
// build-time dependencies too (webpack loaders, React, the codecs' sources...) and warn
// that it wants Node >= 24, while only its prebuilt dist/ is used. So its tarball is
// fetched alone with `npm pack` (same registry, same npm configuration) and checked
// against the integrity pinned in package.json's "ohif" before it is unpacked.

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const pin = JSON.parse(readFileSync(join(here, 'package.json'), 'utf8')).ohif;
const target = join(here, 'node_modules', ...pin.name.split('/'));
const spec = `${pin.name}@${pin.version}`;

function installed() {
  const manifest = join(target, 'package.json');
  if (!existsSync(manifest) || !existsSync(join(target, 'dist', 'index.html'))) return false;
  return JSON.parse(readFileSync(manifest, 'utf8')).version === pin.version;
}

function fetch() {
  // Under `npm ci`, npm_execpath is the npm that runs us: use the same one.
  const npm = process.env.npm_execpath ? [process.execPath, process.env.npm_execpath] : ['npm'];
  const work = mkdtempSync(join(tmpdir(), 'dicomrst-ohif-'));
  try {
    const out = execFileSync(
      npm[0],
      [...npm.slice(1), 'pack', spec, '--json', '--ignore-scripts', '--pack-destination', work],
      { cwd: work, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' },
    );
    const [packed] = JSON.parse(out);
    const tarball = join(work, packed.filename);
    const integrity = 'sha512-' + createHash('sha512').update(readFileSync(tarball)).digest('base64');
    if (integrity !== pin.integrity) {
      throw new Error(`${spec}: tarball integrity ${integrity}, package.json pins ${pin.integrity}`);
    }
    rmSync(target, { recursive: true, force: true });
    mkdirSync(target, { recursive: true });
    execFileSync('tar', ['-xzf', tarball, '-C', target, '--strip-components=1', '--no-same-owner']);
    if (!installed()) throw new Error(`${spec}: no dist/index.html in the tarball`);
    process.stdout.write(`fetch-ohif: ${spec} (${integrity.slice(0, 20)}...) unpacked in ${target}\n`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

if (installed()) {
  process.stdout.write(`fetch-ohif: ${spec} already in ${target}\n`);
} else {
  try {
    fetch();
  } catch (error) {
    process.stderr.write(`fetch-ohif: ${error.message}\n`);
    process.exitCode = 1;
  }
}
