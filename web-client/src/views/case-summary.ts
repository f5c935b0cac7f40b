/** The case heading: number, state, dates; a closed case says it is read-only and when it will be purged. */
import type { CaseInfo, Session } from '../api'
import { h } from '../dom'
import { formatDate, formatDateTime } from '../format'

export function caseSummary(info: CaseInfo, session: Session): HTMLElement {
  const closed = info.state === 'closed'
  const who = session.role === 'engineer' ? 'support engineer' : 'customer'
  return h(
    'section',
    { class: 'card case', 'aria-labelledby': 'case-title' },
    h(
      'div',
      { class: 'case-head' },
      h('h1', { id: 'case-title' }, 'Case ', h('span', { class: 'case-id' }, info.id)),
      h('span', { class: `badge ${closed ? 'badge-closed' : 'badge-open'}`, 'data-case-state': info.state }, closed ? 'Closed' : 'Open'),
    ),
    h(
      'p',
      { class: 'muted' },
      `Opened ${formatDateTime(info.opened_at)}`,
      closed && info.closed_at ? ` · closed ${formatDateTime(info.closed_at)}` : '',
      ` · you are signed in as `,
      h('span', { class: 'uploader' }, session.user),
      ` (${who})`,
    ),
    closed
      ? h(
          'p',
          { class: 'closed-note', role: 'note' },
          'This case is closed, so its files are read-only and nothing more can be uploaded.',
          info.purge_due_at ? ` The files will be deleted on ${formatDate(info.purge_due_at)}.` : '',
        )
      : null,
  )
}
