/**
 * Uploads of this case that stopped before their last byte (a reload, a closed browser, another computer).
 * Selecting the same file again continues each where the gateway's offset says; "Discard" deletes one.
 */
import type { UnfinishedUpload } from '../api'
import { h, replaceChildren } from '../dom'
import { formatBytes, formatDateTime, percent } from '../format'

export interface UnfinishedActions {
  select(upload: UnfinishedUpload): void
  discard(upload: UnfinishedUpload): void
}

export class UnfinishedList {
  readonly el: HTMLElement
  private readonly list: HTMLUListElement
  private rendered = ''

  constructor(
    private readonly actions: UnfinishedActions,
    private readonly readOnly: () => boolean,
  ) {
    this.list = h('ul', { class: 'unfinished-list' })
    this.el = h(
      'section',
      { class: 'card unfinished', 'aria-labelledby': 'unfinished-title', hidden: true },
      h('h2', { id: 'unfinished-title' }, 'Unfinished uploads'),
      h(
        'p',
        { class: 'hint' },
        'These uploads stopped before they were complete. Select the same file again and it continues where it stopped; nothing is sent twice.',
      ),
      this.list,
    )
  }

  update(uploads: UnfinishedUpload[]): void {
    const signature = JSON.stringify([this.readOnly(), uploads.map((u) => [u.id, u.offset])])
    if (signature === this.rendered) return
    this.rendered = signature
    this.el.hidden = uploads.length === 0
    replaceChildren(this.list, ...uploads.map((u) => this.row(u)))
  }

  private row(upload: UnfinishedUpload): HTMLLIElement {
    const length = upload.length ?? 0
    const progress =
      upload.length === null
        ? `${formatBytes(upload.offset)} received`
        : `${percent(upload.offset, length)} · ${formatBytes(upload.offset)} of ${formatBytes(length)} received`
    const actions = this.readOnly()
      ? null
      : h(
          'div',
          { class: 'transfer-actions' },
          h(
            'button',
            { type: 'button', class: 'button small', 'aria-label': `Select file to resume: ${upload.name}`, onclick: () => this.actions.select(upload) },
            'Select file to resume',
          ),
          h(
            'button',
            { type: 'button', class: 'button small quiet', 'aria-label': `Discard the unfinished upload of ${upload.name}`, onclick: () => this.actions.discard(upload) },
            'Discard',
          ),
        )
    return h(
      'li',
      { class: 'transfer unfinished-item', 'data-upload-id': upload.id },
      h('div', { class: 'transfer-head' }, h('span', { class: 'transfer-name', title: upload.name }, upload.name), h('span', { class: 'transfer-size' }, formatBytes(length))),
      h('progress', { max: Math.max(1, length), value: upload.offset, 'aria-label': `${upload.name}: bytes the gateway already has` }),
      h('p', { class: 'transfer-status' }, progress, ' · started by ', h('span', { class: 'uploader' }, upload.created_by), ` on ${formatDateTime(upload.created_at)}`),
      actions,
    )
  }
}
