// Loads fedd's status page in headless Chromium (Debian's, driven by playwright-core) and reports
// what a person would see, as JSON on stdout: title, each endpoint's state cell (text and computed
// background colour), every request the page made. Saves a screenshot.
//
//   node statuspage.mjs URL SCREENSHOT.png USER_DATA_DIR
import { createRequire } from 'node:module';

const require = createRequire(new URL('../node/package.json', import.meta.url));
const { chromium } = require('playwright-core');

const [url, screenshot, userDataDir] = process.argv.slice(2);
if (!url || !screenshot || !userDataDir) {
  console.error('usage: node statuspage.mjs URL SCREENSHOT.png USER_DATA_DIR');
  process.exit(2);
}
const VIEWPORT = { width: 1280, height: 800 };
const watchdog = setTimeout(() => {
  console.error('statuspage.mjs: no result within 40 s');
  process.exit(3);
}, 40000);

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);
const requests = [];
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  timeout: 20000,
  viewport: VIEWPORT,
  deviceScaleFactor: 1,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync',
  ],
});
try {
  context.setDefaultTimeout(10000);
  context.on('request', (request) => requests.push(request.url()));
  const page = context.pages()[0] ?? (await context.newPage());
  const response = await page.goto(url, { waitUntil: 'load', timeout: 15000 });
  const cells = await page.$$eval('td.state', (tds) =>
    tds.map((td) => ({
      endpoint: td.dataset.endpoint,
      text: td.innerText.trim(),
      background: getComputedStyle(td).backgroundColor,
    })),
  );
  await page.screenshot({ path: screenshot, fullPage: false, timeout: 10000 });
  const external = requests.filter((u) => {
    const parsed = new URL(u);
    if (parsed.protocol === 'data:' || parsed.protocol === 'about:') return false;
    return !LOOPBACK.has(parsed.hostname) && !LOOPBACK.has(parsed.host);
  });
  const result = {
    status: response ? response.status() : null,
    contentType: response ? response.headers()['content-type'] ?? null : null,
    title: await page.title(),
    states: cells,
    headings: await page.$$eval('h2', (hs) => hs.map((h) => h.innerText.trim())),
    requests,
    external,
    viewport: VIEWPORT,
  };
  process.stdout.write(JSON.stringify(result) + '\n');
} finally {
  await context.close();
  clearTimeout(watchdog);
}
