// Runs one test script in a fresh headless Chromium and prints its result
// as JSON on the last line of stdout. Everything else goes to stderr.
const { chromium } = require('playwright-core');

const launch = JSON.parse(process.env.ATELIER_BROWSER_LAUNCH);
const args = JSON.parse(process.env.ATELIER_BROWSER_ARGS || 'null');
const script = require(process.argv[2]);

(async () => {
  const flags = [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-dev-shm-usage',
  ];
  if (launch.mapHosts && launch.mapHosts.length) {
    flags.push('--host-resolver-rules=' + launch.mapHosts.map((h) => `MAP ${h} 127.0.0.1`).join(',') + ',EXCLUDE localhost');
  }
  const browser = await chromium.launch({ executablePath: launch.chromium, args: flags });
  let code = 0;
  try {
    const context = await browser.newContext({
      ignoreHTTPSErrors: true,
      viewport: { width: launch.width, height: launch.height },
    });
    const page = await context.newPage();
    page.on('console', (m) => { if (m.type() === 'error') console.error('console:', m.text()); });
    page.on('pageerror', (e) => console.error('pageerror:', e.message));
    const result = await script({ browser, context, page, args });
    process.stdout.write('\n' + JSON.stringify(result === undefined ? null : result) + '\n');
  } catch (e) {
    console.error(e && e.stack ? e.stack : String(e));
    code = 1;
  } finally {
    await browser.close().catch(() => {});
  }
  process.exit(code);
})();
