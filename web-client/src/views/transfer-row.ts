/** One row of the Transfers list: name, progress from acknowledged bytes, speed, time left, and controls. */
import { h, setText } from '../dom'
import { formatBytes, formatDuration, formatSpeed, percent } from '../format'
import type { Transfer } from '../transfer'

export interface RowActions {
  pause(transfer: Transfer): void
  resume(transfer: Transfer): void
  cancel(transfer: Transfer): void
  dismiss(transfer: Transfer): void
}

const LABELS: Record<string, string> = {
  checking: 'Checking',
  queued: 'Waiting',
  uploading: 'Uploading',
  retrying: 'Reconnecting',
  paused: 'Paused',
  verifying: 'Verifying',
  done: 'Uploaded',
  failed: 'Stopped',
  cancelled: 'Cancelled',
}

export class TransferRow {
  readonly el: HTMLLIElement
  private readonly badge: HTMLSpanElement
  private readonly progress: HTMLProgressElement
  private readonly status: HTMLParagraphElement
  private readonly detail: HTMLParagraphElement
  private readonly hash: HTMLElement
  private readonly pauseButton: HTMLButtonElement
  private readonly cancelButton: HTMLButtonElement
  private readonly dismissButton: HTMLButtonElement

  constructor(
    readonly transfer: Transfer,
    private readonly actions: RowActions,
  ) {
    const name = transfer.name
    this.badge = h('span', { class: 'badge' })
    this.progress = h('progress', { max: Math.max(1, transfer.size), 'aria-label': `Upload of ${name}, bytes confirmed by the gateway` })
    this.progress.value = 0
    this.status = h('p', { class: 'transfer-status' })
    this.detail = h('p', { class: 'transfer-detail' })
    this.hash = h('code', { class: 'sha256' })
    this.pauseButton = h('button', { type: 'button', class: 'button small', onclick: () => this.togglePause() })
    this.cancelButton = h(
      'button',
      { type: 'button', class: 'button small quiet', 'aria-label': `Cancel upload of ${name}`, onclick: () => this.actions.cancel(this.transfer) },
      'Cancel',
    )
    this.dismissButton = h(
      'button',
      { type: 'button', class: 'button small quiet', 'aria-label': `Remove from list: ${name}`, onclick: () => this.actions.dismiss(this.transfer) },
      'Remove from list',
    )
    this.el = h(
      'li',
      { class: 'transfer', 'data-key': transfer.key },
      h(
        'div',
        { class: 'transfer-head' },
        h('span', { class: 'transfer-name', title: name }, name),
        h('span', { class: 'transfer-size' }, formatBytes(transfer.size)),
        this.badge,
      ),
      this.progress,
      this.status,
      this.detail,
      h('div', { class: 'transfer-actions' }, this.pauseButton, this.cancelButton, this.dismissButton),
    )
    this.update()
  }

  private togglePause(): void {
    const t = this.transfer
    if (t.state === 'paused' || t.state === 'failed') this.actions.resume(t)
    else this.actions.pause(t)
  }

  update(): void {
    const t = this.transfer
    this.el.dataset.state = t.state
    setText(this.badge, LABELS[t.state] ?? t.state)
    this.badge.className = `badge badge-${t.state}`
    if (t.state === 'verifying') {
      this.progress.max = Math.max(1, t.size)
      this.progress.value = t.hashed
    } else {
      this.progress.value = t.acked
    }
    setText(this.status, this.statusText())
    setText(this.detail, t.message)
    this.detail.hidden = t.message === ''
    this.detail.setAttribute('role', t.state === 'failed' ? 'alert' : 'status')
    if (t.state === 'done' && t.verifiedFile && !this.hash.isConnected) {
      this.status.after(h('p', { class: 'transfer-hash' }, 'SHA-256 ', this.hash))
      setText(this.hash, t.verifiedFile.sha256)
    }
    const pausable = ['queued', 'uploading', 'retrying'].includes(t.state)
    const resumable = t.state === 'paused' || (t.state === 'failed' && t.canRetry)
    this.pauseButton.hidden = !(pausable || resumable)
    const verb = t.state === 'failed' ? 'Retry' : pausable ? 'Pause' : 'Resume'
    setText(this.pauseButton, verb)
    this.pauseButton.setAttribute('aria-label', `${verb} upload of ${t.name}`)
    this.cancelButton.hidden = !(pausable || resumable || t.state === 'checking')
    this.dismissButton.hidden = !['done', 'cancelled'].includes(t.state) && !(t.state === 'failed' && !t.canRetry)
  }

  private statusText(): string {
    const t = this.transfer
    const confirmed = `${percent(t.acked, t.size)} · ${formatBytes(t.acked)} of ${formatBytes(t.size)} confirmed`
    switch (t.state) {
      case 'checking':
        return 'Checking the file…'
      case 'queued':
        return t.acked > 0 ? `${confirmed} · waiting for a free upload slot` : 'Waiting for a free upload slot'
      case 'uploading': {
        const parts = [confirmed]
        if (t.sent > t.acked) parts.push(`${percent(t.sent, t.size)} sent`)
        if (t.speed > 0) parts.push(formatSpeed(t.speed))
        const left = formatDuration(t.secondsLeft)
        if (left) parts.push(`${left} left`)
        if (t.resumedFrom) parts.push(`resumed at ${percent(t.resumedFrom, t.size)}`)
        return parts.join(' · ')
      }
      case 'retrying':
        return confirmed
      case 'paused':
        return `Paused at ${percent(t.acked, t.size)} · ${formatBytes(t.acked)} of ${formatBytes(t.size)} kept by the gateway`
      case 'verifying':
        return `All bytes arrived. Comparing SHA-256 with the gateway's copy… ${percent(t.hashed, t.size)}`
      case 'done':
        return t.verifiedFile
          ? "Uploaded and verified: the gateway's SHA-256 matches your file."
          : 'Uploaded.'
      case 'failed':
        return t.acked > 0 ? confirmed : ''
      case 'cancelled':
        return 'Cancelled; nothing of it is kept.'
    }
  }
}
