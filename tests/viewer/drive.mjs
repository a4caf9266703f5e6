// Drives the OHIF viewer in headless chromium the way a person would, and says what it saw.
//
//   node drive.mjs --url http://127.0.0.1:PORT/ --study STUDY_UID --row-text TEXT
//                  --api http://127.0.0.1:GW [--chromium /usr/bin/chromium]
//                  [--workflow 'Basic Viewer'] [--mode viewer] [--step-timeout 60]
//                  [--paint-timeout 60] [--until STEP] [--linger S] [--screenshot FILE]
//
// Steps, in order, each waited for with a bound (no timing is judged, only whether it happened):
//   launch         chromium starts (playwright-core, executablePath)
//   study-list     the study list shows a row holding TEXT (OHIF 3.13's list shows no UID:
//                  pick a text only that study has, its description say)
//   open-study     a click selects the row, a click on the workflow's button (--workflow, in
//                  the "Launch workflow" panel) opens the viewer on /MODE?StudyInstanceUIDs=UID
//   viewport       a viewport canvas is on the page
//   painted        the canvas holds non-blank pixels (read back with getImageData); fails
//                  early once a frame request failed and nothing has moved for 5 s
// --until STEP stops after that step (the later ones are not tried, and not reported).
// --linger S keeps the page open S seconds more after the last step, to record what the
// viewer goes on asking for (prefetching the rest of a stack, say).
// Prints one JSON object on stdout: ok, failed_step, error (naming the step that did not
// happen and its bound), steps, study_row (the row's text), canvas (pixel statistics),
// requests (every request to --api: method, path with query, Accept, status, content type,
// in the order the browser sent them, with when it was sent and when its body was in, in ms
// since the driver started, for the record only), console (errors and warnings), page_errors.
// Exit status 0 when every step happened, 1 when one did not, 2 on bad arguments.

import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

const USAGE = 'usage: node drive.mjs --url URL --study UID --row-text TEXT --api ORIGIN [--chromium PATH] '
  + '[--workflow NAME] [--mode ROUTE] [--step-timeout S] [--paint-timeout S] [--until STEP] [--linger S] '
  + '[--screenshot FILE]';
const STEPS = ['launch', 'study-list', 'open-study', 'viewport', 'painted'];

// What chromium needs here (as root, no GPU, no network but loopback): without the
// background-networking flags it keeps trying to reach Google's hosts. playwright gives it a
// new empty profile in the temp dir and removes it at close. SwiftShader gives
// WebGL in software, which cornerstone renders with (else it falls back to its CPU path).
const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--use-angle=swiftshader', '--enable-unsafe-swiftshader',
];

// A canvas counts as painted when at least this share of its pixels is not black and it
// holds at least this many distinct colours (a cleared or uniformly filled canvas has one).
const MIN_LIT_SHARE = 0.01;
const MIN_DISTINCT = 8;
// A pixel is "lit" when a channel exceeds this (JPEG-ish noise and anti-aliasing stay below).
const LIT_LEVEL = 8;
const POLL_MS = 250;
// The painted step gives up early when a frame request failed and the page has sent or
// awaited nothing from --api for this long: nothing more is coming.
const QUIET_MS = 5000;

function options() {
  let parsed;
  try {
    parsed = parseArgs({
      options: {
        url: { type: 'string' },
        study: { type: 'string' },
        'row-text': { type: 'string' },
        workflow: { type: 'string', default: 'Basic Viewer' },
        api: { type: 'string' },
        chromium: { type: 'string', default: '/usr/bin/chromium' },
        mode: { type: 'string', default: 'viewer' },
        'step-timeout': { type: 'string', default: '60' },
        'paint-timeout': { type: 'string', default: '60' },
        until: { type: 'string', default: 'painted' },
        linger: { type: 'string', default: '0' },
        screenshot: { type: 'string' },
      },
    }).values;
  } catch (error) {
    process.stderr.write(`${error.message}\n${USAGE}\n`);
    process.exit(2);
  }
  if (!parsed.url || !parsed.study || !parsed['row-text'] || !parsed.api || !STEPS.includes(parsed.until)) {
    process.stderr.write(`${USAGE}\n`);
    process.exit(2);
  }
  return {
    ...parsed,
    stepTimeout: Number(parsed['step-timeout']) * 1000,
    paintTimeout: Number(parsed['paint-timeout']) * 1000,
  };
}

// Runs in the page: pixel statistics of every viewport canvas, largest first.
async function canvasStats(litLevel) {
  const canvases = [...document.querySelectorAll('canvas.cornerstone-canvas, [data-cy="viewport-pane"] canvas')];
  const stats = [];
  for (const canvas of new Set(canvases)) {
    const { width, height } = canvas;
    const entry = { width, height, className: String(canvas.className), read: null };
    if (width === 0 || height === 0) {
      stats.push(entry);
      continue;
    }
    let data = null;
    const context = canvas.getContext('2d', { willReadFrequently: true });
    if (context) {
      data = context.getImageData(0, 0, width, height).data;
      entry.read = 'getImageData';
    } else {
      // A WebGL canvas: decode its toDataURL PNG through a 2D canvas of our own.
      const image = new Image();
      image.src = canvas.toDataURL('image/png');
      await image.decode();
      const copy = document.createElement('canvas');
      copy.width = width;
      copy.height = height;
      const copyContext = copy.getContext('2d');
      copyContext.drawImage(image, 0, 0);
      data = copyContext.getImageData(0, 0, width, height).data;
      entry.read = 'toDataURL';
    }
    let lit = 0;
    let max = 0;
    const distinct = new Set();
    for (let i = 0; i < data.length; i += 4) {
      const peak = Math.max(data[i], data[i + 1], data[i + 2]);
      if (peak > litLevel) lit += 1;
      if (peak > max) max = peak;
      if (distinct.size < 4096) distinct.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
    }
    Object.assign(entry, { pixels: width * height, lit, max, distinct: distinct.size });
    stats.push(entry);
  }
  stats.sort((a, b) => b.width * b.height - a.width * a.height);
  return stats;
}

function painted(stat) {
  return Boolean(stat && stat.pixels && stat.lit >= MIN_LIT_SHARE * stat.pixels && stat.distinct >= MIN_DISTINCT);
}

async function main() {
  const opts = options();
  const t0 = Date.now();
  const result = {
    ok: false, failed_step: null, error: null, steps: [], study_row: null, canvas: null,
    requests: [], console: [], page_errors: [],
  };
  const api = opts.api.replace(/\/$/, '');
  let browser = null;
  let page = null;

  async function step(name, what, bound, action) {
    if (STEPS.indexOf(name) > STEPS.indexOf(opts.until)) return;
    const started = Date.now();
    try {
      const detail = await action();
      result.steps.push({ name, ok: true, seconds: (Date.now() - started) / 1000, detail: detail ?? null });
    } catch (error) {
      result.steps.push({ name, ok: false, seconds: (Date.now() - started) / 1000, detail: null });
      result.failed_step = name;
      const first = String(error && error.message ? error.message : error).split('\n')[0];
      result.error = `step ${name}: ${what} did not happen (bound ${bound / 1000} s): ${first}`;
      throw error;
    }
  }

  try {
    await step('launch', 'chromium starting', opts.stepTimeout, async () => {
      browser = await chromium.launch({
        executablePath: opts.chromium, headless: true, args: CHROMIUM_ARGS,
        timeout: opts.stepTimeout,
      });
      return { version: browser.version() };
    });
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: 'en-US' });
    page = await context.newPage();
    const entries = new Map();
    let lastActivity = Date.now();
    page.on('request', (request) => {
      const url = request.url();
      if (!url.startsWith(api + '/')) return;
      lastActivity = Date.now();
      const entry = {
        method: request.method(), path: url.slice(api.length), accept: request.headers().accept ?? null,
        status: null, content_type: null, failure: null, sent_ms: Date.now() - t0, done_ms: null,
      };
      entries.set(request, entry);
      result.requests.push(entry);
    });
    page.on('response', (response) => {
      const entry = entries.get(response.request());
      if (!entry) return;
      lastActivity = Date.now();
      entry.status = response.status();
      entry.content_type = response.headers()['content-type'] ?? null;
    });
    page.on('requestfinished', (request) => {
      const entry = entries.get(request);
      if (entry) entry.done_ms = Date.now() - t0;
    });
    page.on('requestfailed', (request) => {
      const entry = entries.get(request);
      if (!entry) return;
      entry.failure = request.failure()?.errorText ?? 'failed';
      entry.done_ms = Date.now() - t0;
    });
    page.on('console', (message) => {
      if (['error', 'warning'].includes(message.type()) && result.console.length < 200) {
        result.console.push(`${message.type()}: ${message.text().slice(0, 500)}`);
      }
    });
    page.on('pageerror', (error) => result.page_errors.push(String(error.message).slice(0, 500)));

    const rowText = opts['row-text'];
    const row = page.locator('tbody tr').filter({ hasText: rowText });
    await step('study-list', `a study list row with "${rowText}"`, opts.stepTimeout, async () => {
      await page.goto(opts.url, { timeout: opts.stepTimeout });
      await row.first().waitFor({ state: 'visible', timeout: opts.stepTimeout });
      result.study_row = (await row.first().innerText()).replace(/\s+/g, ' ').trim();
      return { rows: await page.locator('tbody tr').count(), matching: await row.count() };
    });

    await step('open-study', `"${opts.workflow}" opening ${opts.study}`, opts.stepTimeout, async () => {
      await row.first().click({ timeout: opts.stepTimeout });
      const button = page.getByRole('button', { name: opts.workflow, exact: true });
      await button.click({ timeout: opts.stepTimeout });
      await page.waitForURL(
        (url) => url.pathname.startsWith(`/${opts.mode}`)
          && url.searchParams.get('StudyInstanceUIDs') === opts.study,
        { timeout: opts.stepTimeout },
      );
      return { url: page.url() };
    });

    const canvas = page.locator('canvas.cornerstone-canvas, [data-cy="viewport-pane"] canvas').first();
    await step('viewport', 'a viewport canvas', opts.stepTimeout, async () => {
      await canvas.waitFor({ state: 'visible', timeout: opts.stepTimeout });
      const box = await canvas.boundingBox();
      return { box };
    });

    await step('painted', 'non-blank pixels in the viewport canvas', opts.paintTimeout, async () => {
      const deadline = Date.now() + opts.paintTimeout;
      for (;;) {
        const stats = await page.evaluate(canvasStats, LIT_LEVEL);
        result.canvas = stats[0] ?? null;
        if (painted(result.canvas)) return { canvases: stats.length };
        const failed = result.requests.filter(
          (r) => /\/frames\/[^/]+$/.test(r.path.split('?')[0]) && (r.failure || r.status >= 400),
        );
        const pending = result.requests.some((r) => r.status === null && !r.failure);
        if (failed.length && !pending && Date.now() - lastActivity >= QUIET_MS) {
          const first = failed[0];
          throw new Error(`gave up: ${failed.length} frame request(s) failed and none is pending `
            + `(first: ${first.method} ${first.path} -> ${first.status ?? first.failure})`);
        }
        if (Date.now() >= deadline) {
          const seen = result.canvas
            ? `${result.canvas.lit} of ${result.canvas.pixels} pixels lit, ${result.canvas.distinct} colours`
            : 'no canvas';
          throw new Error(`still blank after ${opts.paintTimeout / 1000} s, last look: ${seen}`);
        }
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      }
    });
    result.ok = true;
    await new Promise((resolve) => setTimeout(resolve, Number(opts.linger) * 1000));
  } catch (error) {
    if (!result.failed_step) {
      result.error = `driver: ${String(error && error.message ? error.message : error).split('\n')[0]}`;
    }
  } finally {
    if (page && opts.screenshot) {
      await page.screenshot({ path: opts.screenshot, timeout: 10000 }).catch(() => {});
    }
    if (browser) await browser.close().catch(() => {});
  }
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exitCode = result.ok ? 0 : 1;
}

await main();
