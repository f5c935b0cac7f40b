/** The case's files: name, size, who uploaded it, when, its SHA-256, the purge date once closed, download. */
import type { FileInfo } from '../api'
import { h, replaceChildren, srOnly } from '../dom'
import { formatBytes, formatDate, formatDateTime } from '../format'

export interface FilesView {
  files: FileInfo[]
  contentUrl: (file: FileInfo) => string
  canDownload: (file: FileInfo) => boolean
}

export class FilesTable {
  readonly el: HTMLElement
  private readonly body: HTMLElement
  private rendered = ''

  constructor() {
    this.body = h('div', { class: 'files-body' })
    this.el = h(
      'section',
      { class: 'card files', 'aria-labelledby': 'files-title' },
      h('h2', { id: 'files-title' }, 'Files in this case'),
      this.body,
    )
  }

  update(view: FilesView): void {
    const signature = JSON.stringify(view.files.map((f) => [f.id, f.sha256, f.purge_due_at, view.canDownload(f)]))
    if (signature === this.rendered) return
    this.rendered = signature
    if (view.files.length === 0) {
      replaceChildren(this.body, h('p', { class: 'empty' }, 'No files yet.'))
      return
    }
    const purge = view.files.some((f) => f.purge_due_at)
    const head = h(
      'tr',
      null,
      h('th', { scope: 'col' }, 'Name'),
      h('th', { scope: 'col', class: 'num' }, 'Size'),
      h('th', { scope: 'col' }, 'Uploaded by'),
      h('th', { scope: 'col' }, 'Date'),
      h('th', { scope: 'col' }, 'SHA-256'),
      purge ? h('th', { scope: 'col' }, 'Deleted on') : null,
      h('th', { scope: 'col' }, srOnly('Actions')),
    )
    const rows = view.files.map((file) => this.row(file, view, purge))
    replaceChildren(
      this.body,
      h(
        'div',
        { class: 'table-scroll' },
        h(
          'table',
          { class: 'files-table' },
          h('caption', { class: 'sr-only' }, 'Files in this case, newest first'),
          h('thead', null, head),
          h('tbody', null, ...rows),
        ),
      ),
    )
  }

  private row(file: FileInfo, view: FilesView, purge: boolean): HTMLTableRowElement {
    const from = file.source === 'engineer' ? 'support engineer' : file.source
    const via = file.via === 'sftp' ? ', via SFTP' : ''
    const copy = h(
      'button',
      {
        type: 'button',
        class: 'button small quiet copy',
        'aria-label': `Copy the SHA-256 of ${file.name}`,
        onclick: () => {
          void navigator.clipboard?.writeText(file.sha256).then(() => {
            copy.textContent = 'Copied'
            setTimeout(() => (copy.textContent = 'Copy'), 1500)
          })
        },
      },
      'Copy',
    )
    const download = view.canDownload(file)
      ? h('a', { class: 'button small', href: view.contentUrl(file), download: '' }, 'Download', srOnly(` ${file.name}`))
      : null
    return h(
      'tr',
      { 'data-file-id': file.id },
      h('th', { scope: 'row', class: 'file-name' }, file.name),
      h('td', { class: 'num file-size', title: `${file.size} bytes` }, formatBytes(file.size)),
      h('td', { class: 'file-uploader' }, h('span', { class: 'uploader' }, file.uploaded_by), h('span', { class: 'muted' }, ` (${from}${via})`)),
      h('td', { class: 'file-date' }, formatDateTime(file.uploaded_at)),
      h('td', { class: 'file-sha' }, h('code', { class: 'sha256' }, file.sha256), copy),
      purge ? h('td', { class: 'file-purge' }, formatDate(file.purge_due_at)) : null,
      h('td', { class: 'file-actions' }, download),
    )
  }
}
