// The core page flows in Firefox (Debian's firefox-esr, driven by puppeteer-core over WebDriver BiDi):
// launch, three files, a network cut mid-upload, a reload mid-upload and the resume, and what SHA-256 the page
// shows, with axe-core on the way. Run by tests/web/test_engines.py as `node firefox-core.mjs CONFIG.json`
// against a real gateway (behind a throttling proxy, so uploads take long enough to be interrupted). Prints
// one JSON object with what it saw; the Python test decides what is right. Progress goes to stderr.
import fs from 'node:fs'
import puppeteer from 'puppeteer-core'

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
const axeSource = fs.readFileSync(cfg.axe, 'utf8')
const out = { steps: [], pageErrors: [], console: [], requests: [], failed: [], violations: {}, shown: {} }
const log = (text) => process.stderr.write(`[firefox] ${text}\n`)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const browser = await puppeteer.launch({
  browser: 'firefox',
  executablePath: cfg.firefox,
  headless: true,
  acceptInsecureCerts: true, // the gateway's self-signed certificate
  timeout: 60_000,
})
try {
  out.version = await browser.version()
  log(out.version)
  const page = await browser.newPage()
  page.setDefaultTimeout(90_000)
  page.on('dialog', (dialog) => void dialog.accept()) // beforeunload while uploads run: the test means it
  page.on('pageerror', (error) => out.pageErrors.push(String(error)))
  page.on('console', (message) => out.console.push(`${message.type()}: ${message.text()}`))
  page.on('request', (request) => {
    const headers = request.headers()
    out.requests.push({ method: request.method(), url: request.url(), offset: headers['upload-offset'] ?? null })
  })
  page.on('requestfailed', (request) => out.failed.push({ method: request.method(), url: request.url(), at: Date.now() }))

  const row = (name) =>
    `Array.from(document.querySelectorAll('.transfer-list > li')).find((li) => li.querySelector('.transfer-name')?.textContent === ${JSON.stringify(name)})`
  const acked = (name) => page.evaluate(`(${row(name)})?.querySelector('progress')?.value ?? 0`)
  const state = (name) => page.evaluate(`(${row(name)})?.dataset.state ?? ''`)
  const waitFor = (expression, what) => {
    log(`waiting: ${what}`)
    return page.waitForFunction(expression, { polling: 100 })
  }
  const waitDone = (count) => waitFor(`document.querySelectorAll('.transfer-list > li[data-state=done]').length === ${count}`, `${count} done`)
  const choose = async (...paths) => (await page.$('#file-input')).uploadFile(...paths)
  const axe = async () => {
    if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.evaluate(axeSource)
    return page.evaluate(async (options) => {
      const result = await window.axe.run(document, options)
      return result.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => ({ target: n.target.join(' '), summary: n.failureSummary })) }))
    }, cfg.axeOptions)
  }
  const shownHashes = () =>
    page.evaluate(() =>
      Object.fromEntries(
        Array.from(document.querySelectorAll('.transfer-list > li[data-state=done]')).map((li) => [
          li.querySelector('.transfer-name').textContent,
          li.querySelector('.transfer-hash code')?.textContent ?? '',
        ]),
      ),
    )

  // 1. Launch: the token leaves the address bar, the case opens.
  out.steps.push('launch')
  await page.goto(cfg.launchUrl)
  await waitFor(`document.querySelector('#case-title')?.textContent === ${JSON.stringify(`Case ${cfg.caseId}`)}`, 'case title')
  out.afterLaunchUrl = page.url()
  out.violations.case = await axe()

  // 2. Three files at once.
  out.steps.push('three files')
  await choose(...cfg.three)
  await waitDone(3)
  Object.assign(out.shown, await shownHashes())
  out.violations.files = await axe()

  // 3. The network goes away mid-upload (the browser's own offline mode), then comes back.
  out.steps.push('network cut')
  await choose(cfg.cut.path)
  await waitFor(`(${row(cfg.cut.name)})?.querySelector('progress')?.value >= ${cfg.chunk}`, 'first chunk of the cut file')
  await page.setOfflineMode(true)
  const cutAt = Date.now()
  out.cut = { ackedAtCut: await acked(cfg.cut.name) }
  await waitFor(`(${row(cfg.cut.name)})?.dataset.state === 'retrying'`, 'retrying')
  out.cut.detail = await page.evaluate(`(${row(cfg.cut.name)}).querySelector('.transfer-detail').textContent`)
  for (let i = 0; i < 300 && out.failed.filter((f) => f.at >= cutAt).length < 3; i++) await sleep(100)
  out.cut.failedWhileOffline = out.failed.filter((f) => f.at >= cutAt).map((f) => f.method)
  out.cut.ackedWhileOffline = await acked(cfg.cut.name)
  out.cut.stateWhileOffline = await state(cfg.cut.name)
  await page.setOfflineMode(false)
  await waitDone(4)
  Object.assign(out.shown, await shownHashes())

  // 4. A reload mid-upload, then the same file again: it resumes where the gateway stands.
  out.steps.push('reload and resume')
  await choose(cfg.resume.path)
  await waitFor(`(${row(cfg.resume.name)})?.querySelector('progress')?.value >= ${cfg.chunk}`, 'first chunk of the reloaded file')
  out.reload = { ackedBeforeReload: await acked(cfg.resume.name) }
  await page.reload()
  await waitFor(`document.querySelector('.unfinished-item .transfer-name')?.textContent === ${JSON.stringify(cfg.resume.name)}`, 'unfinished upload listed')
  out.reload.unfinishedListed = await page.evaluate(() => Array.from(document.querySelectorAll('.unfinished-item .transfer-name'), (e) => e.textContent))
  out.violations.unfinished = await axe()
  const mark = out.requests.length
  await choose(cfg.resume.path)
  await waitDone(1)
  out.reload.requests = out.requests.slice(mark).filter((r) => r.url.includes('/uploads') && r.method !== 'GET')
  Object.assign(out.shown, await shownHashes())
  await waitFor(`document.querySelectorAll('.files-table tbody tr').length === ${cfg.three.length + 2}`, 'files listed')
  out.table = await page.evaluate(() =>
    Object.fromEntries(
      Array.from(document.querySelectorAll('.files-table tbody tr')).map((tr) => [tr.querySelector('.file-name').textContent, tr.querySelector('code.sha256').textContent]),
    ),
  )
  out.violations.done = await axe()
  out.steps.push('finished')
} catch (err) {
  out.error = String(err?.stack ?? err)
} finally {
  await browser.close()
}
process.stdout.write(JSON.stringify(out) + '\n')
