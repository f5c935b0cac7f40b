/**
 * The case page: what the case holds, the drop zone, transfers in progress, unfinished uploads to resume, and
 * the SFTP account. Customers see their one case; engineers open any case by its number (``/app?case=C-1``).
 */
import { api, ApiError, type CaseInfo, type FileInfo, type Session, type UnfinishedUpload } from './api'
import { h, replaceChildren, setText } from './dom'
import { type PickedFile, pickedFromDrop, pickedFromInput } from './folders'
import { HashPool } from './hashing'
import { TransferQueue } from './queue'
import { Transfer, type TransferHost, STALL_MS } from './transfer'
import { GatewayHttpStack } from './tus-adapter'
import { caseSummary } from './views/case-summary'
import { FilesTable } from './views/files-table'
import { sftpPanel } from './views/sftp'
import { TransferRow } from './views/transfer-row'
import { UnfinishedList } from './views/unfinished'

const POLL_MS = 15_000

export class App implements TransferHost {
  // Two workers at least, so that an upload's whole-file hashing and the reading of its next chunk run side by side.
  readonly hashes = new HashPool(Math.max(2, Math.min(3, (navigator.hardwareConcurrency || 2) - 1)))
  readonly stack = new GatewayHttpStack(STALL_MS)
  readonly queue = new TransferQueue()
  caseId = ''
  private info: CaseInfo | null = null
  private files: FileInfo[] = []
  private unfinished: UnfinishedUpload[] = []
  private readonly rows = new Map<string, TransferRow>()
  private readonly main: HTMLElement
  private readonly alert: HTMLElement
  private readonly announcer: HTMLElement
  private readonly summarySlot = h('div', { class: 'slot' })
  private readonly sftpSlot = h('div', { class: 'slot' })
  private readonly uploadSection: HTMLElement
  private readonly transferList = h('ul', { class: 'transfer-list' })
  private readonly transfersSection: HTMLElement
  private readonly unfinishedList: UnfinishedList
  private readonly filesTable = new FilesTable()
  private readonly fileInput: HTMLInputElement
  private readonly folderInput: HTMLInputElement
  private readonly resumeInput: HTMLInputElement
  private resumeTarget: UnfinishedUpload | null = null
  private pollTimer: ReturnType<typeof setInterval> | undefined
  private refreshing: Promise<void> = Promise.resolve()
  private pendingRender = new Set<Transfer>()
  private renderScheduled = false

  constructor(
    private readonly root: HTMLElement,
    private readonly session: Session,
  ) {
    this.alert = h('div', { class: 'alert', role: 'alert', hidden: true })
    this.announcer = h('div', { class: 'sr-only', 'aria-live': 'polite' })
    this.main = h('main', { id: 'main', class: 'main' })
    this.fileInput = h('input', { type: 'file', multiple: true, class: 'visually-hidden-input', id: 'file-input', tabindex: -1, 'aria-hidden': 'true' })
    this.fileInput.addEventListener('change', () => this.takeFiles(this.fileInput))
    this.folderInput = h('input', { type: 'file', webkitdirectory: true, class: 'visually-hidden-input', id: 'folder-input', tabindex: -1, 'aria-hidden': 'true' })
    this.folderInput.addEventListener('change', () => this.takeFiles(this.folderInput))
    this.resumeInput = h('input', { type: 'file', class: 'visually-hidden-input', id: 'resume-input', tabindex: -1, 'aria-hidden': 'true' })
    this.resumeInput.addEventListener('change', () => this.takeFiles(this.resumeInput, this.resumeTarget))
    this.uploadSection = this.dropZone()
    this.transfersSection = h(
      'section',
      { class: 'card transfers', 'aria-labelledby': 'transfers-title', hidden: true },
      h('h2', { id: 'transfers-title' }, 'Transfers'),
      this.transferList,
    )
    this.unfinishedList = new UnfinishedList(
      { select: (u) => this.chooseFileFor(u), discard: (u) => void this.discard(u) },
      () => this.info?.state !== 'open',
    )
  }

  start(): void {
    const header = h(
      'header',
      { class: 'topbar' },
      h('div', { class: 'brand' }, h('span', { class: 'logo', 'aria-hidden': 'true' }, '⇪'), 'Secure file transfer'),
      h('div', { class: 'who' }, h('span', { class: 'uploader' }, this.session.user), this.session.role === 'engineer' ? ' · support engineer' : ''),
    )
    replaceChildren(this.root, header, this.main, this.announcer, this.fileInput, this.folderInput, this.resumeInput)
    this.root.removeAttribute('aria-busy')
    window.addEventListener('online', () => this.retryWaiting())
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') {
        this.retryWaiting()
        void this.refresh()
      }
    })
    window.addEventListener('beforeunload', (event) => {
      if (this.queue.busy()) event.preventDefault()
    })
    // Files dropped outside the drop zone must not make the browser navigate away from the page.
    window.addEventListener('dragover', (event) => event.preventDefault())
    window.addEventListener('drop', (event) => event.preventDefault())
    window.addEventListener('popstate', () => location.reload())

    const requested = new URLSearchParams(location.search).get('case')
    const caseId = this.session.case_id ?? requested
    if (caseId) void this.openCase(caseId)
    else this.showCasePicker()
  }

  // --- case -------------------------------------------------------------------------------------------

  private showCasePicker(message = ''): void {
    const input = h('input', { id: 'case-input', name: 'case', required: true, autocomplete: 'off', spellcheck: 'false' })
    const form = h(
      'form',
      { class: 'card case-picker', 'aria-labelledby': 'picker-title' },
      h('h1', { id: 'picker-title' }, 'Open a case'),
      h('p', { class: 'hint' }, 'Enter the case number to see its files and upload to it.'),
      h('label', { for: 'case-input' }, 'Case number'),
      h('div', { class: 'row' }, input, h('button', { type: 'submit', class: 'button primary' }, 'Open case')),
      message ? h('p', { class: 'alert', role: 'alert' }, message) : null,
    )
    form.addEventListener('submit', (event) => {
      event.preventDefault()
      const id = input.value.trim()
      if (id) location.assign(`/app?case=${encodeURIComponent(id)}`)
    })
    replaceChildren(this.main, form)
    input.focus()
  }

  private async openCase(caseId: string): Promise<void> {
    this.caseId = caseId
    try {
      this.info = await api.getCase(caseId)
    } catch (err) {
      if (this.session.role === 'engineer' && err instanceof ApiError && err.status === 404) {
        this.showCasePicker(err.message)
      } else {
        this.fatal(err)
      }
      return
    }
    document.title = `Case ${caseId} · File transfer`
    replaceChildren(this.summarySlot, caseSummary(this.info, this.session))
    this.uploadSection.hidden = this.info.state !== 'open'
    replaceChildren(
      this.main,
      this.summarySlot,
      this.alert,
      this.sftpSlot,
      this.uploadSection,
      this.transfersSection,
      this.unfinishedList.el,
      this.filesTable.el,
      h('p', { class: 'footnote' }, 'Files travel encrypted (HTTPS). Each piece is checked with SHA-256 when it arrives, and each finished file is compared with your copy.'),
    )
    await this.refresh()
    this.pollTimer = setInterval(() => {
      if (document.visibilityState === 'visible') void this.refresh()
    }, POLL_MS)
  }

  /** Reload the case, its files, its unfinished uploads and its SFTP account (one reload at a time, in order,
   * so an older answer never overwrites a newer one). */
  refresh(): Promise<void> {
    this.refreshing = this.refreshing.then(() => this.reload())
    return this.refreshing
  }

  private async reload(): Promise<void> {
    if (!this.caseId) return
    try {
      const [info, files, unfinished] = await Promise.all([
        api.getCase(this.caseId),
        api.listFiles(this.caseId),
        api.listUnfinished(this.caseId),
      ])
      this.info = info
      this.files = [...files].sort((a, b) => b.uploaded_at.localeCompare(a.uploaded_at))
      this.unfinished = unfinished.filter((u) => !u.partial)
      this.clearAlert()
    } catch (err) {
      this.showAlert(err)
      if (err instanceof ApiError && err.status === 401 && this.pollTimer) clearInterval(this.pollTimer)
      return
    }
    replaceChildren(this.summarySlot, caseSummary(this.info, this.session))
    this.uploadSection.hidden = this.info.state !== 'open'
    this.renderFiles()
    this.renderUnfinished()
    try {
      const account = await api.getSftpAccount(this.caseId)
      replaceChildren(this.sftpSlot, account ? sftpPanel(account) : null)
    } catch {
      // The SFTP panel is a convenience; the page works without it.
    }
  }

  private renderFiles(): void {
    const engineer = this.session.role === 'engineer'
    this.filesTable.update({
      files: this.files,
      contentUrl: (f) => api.contentUrl(this.caseId, f.id),
      // Engineers download everything; customers download what engineers left for them.
      canDownload: (f) => engineer || f.source === 'engineer',
    })
  }

  private renderUnfinished(): void {
    const inPage = new Set(
      this.queue.transfers.filter((t) => t.state !== 'cancelled' && t.uploadUrl).map((t) => t.uploadUrl),
    )
    // A closed case takes no more bytes, so its unfinished uploads cannot be continued: not shown.
    const open = this.info?.state === 'open'
    this.unfinishedList.update(open ? this.unfinished.filter((u) => !inPage.has(u.url)) : [])
  }

  // --- adding files -----------------------------------------------------------------------------------

  private dropZone(): HTMLElement {
    const button = h('button', { type: 'button', class: 'button primary', onclick: () => this.fileInput.click() }, 'Choose files')
    const folderButton = h('button', { type: 'button', class: 'button', onclick: () => this.folderInput.click() }, 'Choose a folder')
    const zone = h(
      'div',
      { class: 'dropzone', id: 'dropzone' },
      h('p', { class: 'drop-title' }, 'Drop files or folders here'),
      h('p', { class: 'muted' }, 'or'),
      h('div', { class: 'drop-buttons' }, button, folderButton),
      h('p', { class: 'hint' }, 'Any size and any number of files; a folder sends every file in it, named with its path (logs/app/server.log becomes logs%2Fapp%2Fserver.log). Uploads continue by themselves after a lost connection, and resume after a reload when you select the same file again.'),
    )
    let depth = 0
    zone.addEventListener('dragenter', (event) => {
      event.preventDefault()
      depth += 1
      zone.classList.add('dragging')
    })
    zone.addEventListener('dragleave', () => {
      depth = Math.max(0, depth - 1)
      if (depth === 0) zone.classList.remove('dragging')
    })
    zone.addEventListener('dragover', (event) => {
      event.preventDefault()
      if (event.dataTransfer) event.dataTransfer.dropEffect = 'copy'
    })
    zone.addEventListener('drop', (event) => {
      event.preventDefault()
      depth = 0
      zone.classList.remove('dragging')
      if (!event.dataTransfer) return
      pickedFromDrop(event.dataTransfer).then(
        (picked) => {
          if (picked.length === 0) this.announce('There were no files in what was dropped.')
          this.addFiles(picked, null)
        },
        (err: unknown) => this.showAlert(`The dropped folder could not be read (${err instanceof Error ? err.message : String(err)}); choose it with "Choose a folder" instead.`),
      )
    })
    return h('section', { class: 'card upload', 'aria-labelledby': 'upload-title' }, h('h2', { id: 'upload-title' }, 'Upload files'), zone)
  }

  private chooseFileFor(upload: UnfinishedUpload): void {
    this.resumeTarget = upload
    this.resumeInput.click()
  }

  private takeFiles(input: HTMLInputElement, target: UnfinishedUpload | null = null): void {
    const files = pickedFromInput(Array.from(input.files ?? []))
    input.value = ''
    this.resumeTarget = null
    this.addFiles(files, target)
  }

  /** Add files; each continues a matching unfinished upload (same fingerprint) or starts a new one. */
  addFiles(files: PickedFile[], target: UnfinishedUpload | null): void {
    if (this.info?.state !== 'open') return
    for (const { file, name } of files) {
      const twin = this.queue.find(
        (t) =>
          t.name === name &&
          t.file.size === file.size &&
          t.file.lastModified === file.lastModified &&
          !['done', 'cancelled', 'failed'].includes(t.state),
      )
      if (twin) {
        this.announce(`${name} is already in the list.`)
        continue
      }
      const transfer = new Transfer(file, this, name)
      this.queue.add(transfer)
      const row = new TransferRow(transfer, {
        pause: (t) => t.pause(),
        resume: (t) => t.resume(),
        cancel: (t) => void t.cancel().then(() => this.refresh()),
        dismiss: (t) => this.dismiss(t),
      })
      this.rows.set(transfer.key, row)
      this.transferList.append(row.el)
      this.transfersSection.hidden = false
      void this.prepare(transfer, target)
    }
  }

  private async prepare(transfer: Transfer, target: UnfinishedUpload | null): Promise<void> {
    try {
      transfer.fingerprint = await this.hashes.fingerprint(transfer.file)
    } catch (err) {
      transfer.state = 'failed'
      transfer.canRetry = false
      transfer.message = err instanceof Error ? err.message : String(err)
      this.changed(transfer)
      return
    }
    if (transfer.state !== 'checking') return // cancelled meanwhile
    const claimed = new Set(this.queue.transfers.filter((t) => t !== transfer && t.state !== 'cancelled').map((t) => t.uploadUrl))
    const candidates = target ? [target] : this.unfinished
    const match = candidates.find((u) => u.metadata.fingerprint === transfer.fingerprint && !claimed.has(u.url))
    if (target && !match) {
      transfer.state = 'failed'
      transfer.canRetry = false
      transfer.message = `This is not the file that the unfinished upload of "${target.name}" was started with, so it was not resumed. Drop it in the upload area to send it as a new file.`
      this.changed(transfer)
      return
    }
    if (match) {
      transfer.resumeAt(match.url, match.offset)
      this.announce(`${transfer.name}: resuming at ${Math.floor((match.offset / Math.max(1, transfer.size)) * 100)} percent.`)
    }
    this.renderUnfinished()
    this.queue.enqueue(transfer)
    this.changed(transfer)
  }

  private async discard(upload: UnfinishedUpload): Promise<void> {
    try {
      await api.discardUpload(upload.url)
      this.announce(`The unfinished upload of ${upload.name} was discarded.`)
    } catch (err) {
      this.showAlert(err)
    }
    await this.refresh()
  }

  private dismiss(transfer: Transfer): void {
    this.hashes.forget(transfer.key)
    this.queue.remove(transfer)
    this.rows.get(transfer.key)?.el.remove()
    this.rows.delete(transfer.key)
    this.transfersSection.hidden = this.queue.transfers.length === 0
    this.fileInput.focus({ preventScroll: true })
  }

  private retryWaiting(): void {
    for (const t of this.queue.transfers) t.retryNow()
  }

  // --- TransferHost -----------------------------------------------------------------------------------

  changed(transfer: Transfer): void {
    this.pendingRender.add(transfer)
    if (this.renderScheduled) return
    this.renderScheduled = true
    // Progress arrives often; draw at most every 200 ms.
    setTimeout(() => {
      this.renderScheduled = false
      const batch = [...this.pendingRender]
      this.pendingRender.clear()
      for (const t of batch) {
        const row = this.rows.get(t.key)
        if (!row) continue
        const before = row.el.dataset.state
        row.update()
        if (before !== t.state) this.stateChanged(t)
      }
    }, 200)
  }

  private stateChanged(transfer: Transfer): void {
    const spoken: Partial<Record<string, string>> = {
      done: `${transfer.name} was uploaded and verified.`,
      failed: `${transfer.name} stopped: ${transfer.message}`,
      paused: `${transfer.name} is paused.`,
      cancelled: `The upload of ${transfer.name} was cancelled.`,
    }
    const text = spoken[transfer.state]
    if (text) this.announce(text)
    if (transfer.state === 'done' || transfer.state === 'cancelled') this.renderUnfinished()
    // A refusal may mean the case closed or the session ended: show the page as it now stands.
    if (transfer.state === 'failed') void this.refresh()
  }

  released(): void {
    this.queue.pump()
  }

  requeue(transfer: Transfer): void {
    this.queue.enqueue(transfer, true)
    this.changed(transfer)
  }

  async findFile(transfer: Transfer): Promise<FileInfo | null> {
    await this.refresh()
    const same = this.files.filter((f) => f.sha256 === transfer.localSha256 && f.size === transfer.size)
    return same.find((f) => f.name === transfer.name) ?? same[0] ?? null
  }

  // --- messages ---------------------------------------------------------------------------------------

  private announce(text: string): void {
    setText(this.announcer, '')
    setTimeout(() => setText(this.announcer, text), 50)
  }

  private showAlert(err: unknown): void {
    replaceChildren(this.alert, err instanceof Error ? err.message : String(err))
    this.alert.hidden = false
  }

  private clearAlert(): void {
    this.alert.hidden = true
    this.alert.replaceChildren()
  }

  private fatal(err: unknown): void {
    const message = err instanceof Error ? err.message : String(err)
    replaceChildren(this.main, h('section', { class: 'card fatal' }, h('h1', null, 'The file transfer page cannot continue'), h('p', { role: 'alert' }, message)))
  }
}
