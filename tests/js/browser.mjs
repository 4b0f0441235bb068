// Drive examples/browser in headless Chromium: load the page, wait for the model, choose an audio file, read the
// transcript. Uses playwright-core with the system's Chromium (Debian's `chromium` package); no browser download.
//
//   node browser.mjs PAGE_URL AUDIO_FILE [SCREENSHOT.png]
//
// Prints one JSON object: {"transcript", "status", "load_seconds", "transcribe_seconds"}.
import { chromium } from 'playwright-core';

const [url, audio, screenshot] = process.argv.slice(2);
if (!url || !audio) {
    console.error('usage: node browser.mjs PAGE_URL AUDIO_FILE [SCREENSHOT.png]');
    process.exit(2);
}
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox'] });
try {
    const page = await browser.newPage();
    const logs = [];
    page.on('console', (message) => logs.push(`${message.type()}: ${message.text()}`));
    page.on('pageerror', (error) => logs.push(`pageerror: ${error.message}`));
    page.on('response', (response) => { if (response.status() >= 400) logs.push(`${response.status()}: ${response.url()}`); });
    const start = Date.now();
    await page.goto(url);
    const state = async () => page.evaluate(() => document.body.dataset.state);
    await page.waitForFunction(() => ['ready', 'error'].includes(document.body.dataset.state), null, { timeout: 300000 });
    const loadSeconds = (Date.now() - start) / 1000;
    if ((await state()) !== 'ready') {
        throw new Error(`model did not load: ${await page.textContent('#status')}\n${logs.join('\n')}`);
    }
    const chosen = Date.now();
    await page.setInputFiles('#file', audio);
    await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state), null, { timeout: 300000 });
    const result = {
        transcript: (await page.textContent('#transcript')).trim(),
        status: (await page.textContent('#status')).trim(),
        state: await state(),
        load_seconds: loadSeconds,
        transcribe_seconds: (Date.now() - chosen) / 1000,
    };
    if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
    if (result.state !== 'done') throw new Error(`${result.status}\n${logs.join('\n')}`);
    console.log(JSON.stringify(result));
} finally {
    await browser.close();
}
