// Opens a preference link in a real browser (Debian's Chromium, headless),
// the way a person does: sees the state, unticks e-mail with the keyboard,
// saves, and sees the confirmation. With JavaScript off: the page must not
// need it. Run by tests/it/landing.rs, which then checks what was stored.
//
// Usage: node preference_page.js URL [SCREENSHOT.png]
// Prints one JSON line: what the page showed, and the browser's user agent.
'use strict';

const { chromium } = require('playwright-core');
const fs = require('fs');
const os = require('os');
const path = require('path');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

async function main() {
  const [url, screenshot] = process.argv.slice(2);
  if (!url) {
    throw new Error('usage: node preference_page.js URL [SCREENSHOT.png]');
  }
  // A fresh profile directory for every run: nothing carries over.
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'consentd-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    javaScriptEnabled: false,
    locale: 'en-GB',
    // A phone's screen: the page must read there.
    viewport: { width: 390, height: 844 },
    deviceScaleFactor: 2,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  try {
    const page = context.pages()[0] || (await context.newPage());
    // What the browser sends as User-Agent (script is off: asked over CDP).
    const cdp = await context.newCDPSession(page);
    const { userAgent } = await cdp.send('Browser.getVersion');
    const response = await page.goto(url);
    if (!response || response.status() !== 200) {
      throw new Error(`GET ${url}: ${response && response.status()}`);
    }
    const heading = (await page.locator('h1').textContent()).trim();
    const email = page.getByLabel(/^E-mail/);
    const emailBefore = await email.isChecked();
    const smsBefore = await page.getByLabel(/^Text messages/).isChecked();
    if (screenshot) {
      await page.screenshot({ path: screenshot, fullPage: true });
    }
    // The keyboard, as someone who does not use a mouse: focus the box,
    // Space unticks it, then Tab to the button and Enter submits.
    await email.focus();
    await page.keyboard.press('Space');
    const emailAfterSpace = await email.isChecked();
    await page.getByRole('button', { name: /Save my preferences/ }).focus();
    await Promise.all([page.waitForNavigation(), page.keyboard.press('Enter')]);
    const confirmation = (await page.locator('h1').textContent()).trim();
    const status = (await page.locator('[role=status]').textContent()).trim();
    // Back to the page: the box stays unticked.
    await Promise.all([page.waitForNavigation(), page.getByRole('link', { name: /Back to my preferences/ }).click()]);
    const emailReloaded = await page.getByLabel(/^E-mail/).isChecked();
    console.log(
      JSON.stringify({
        heading,
        emailBefore,
        smsBefore,
        emailAfterSpace,
        confirmation,
        status,
        emailReloaded,
        userAgent,
      }),
    );
  } finally {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
}

main().catch((error) => {
  console.error(error && error.stack ? error.stack : String(error));
  process.exit(1);
});
