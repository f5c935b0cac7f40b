/** The case's temporary SFTP account (for very large files or scripted transfers), if it has one. */
import type { SftpAccount } from '../api'
import { h } from '../dom'
import { formatDateTime } from '../format'

export function sftpPanel(account: SftpAccount): HTMLElement {
  const item = (term: string, value: string) => [h('dt', null, term), h('dd', null, h('code', null, value))]
  return h(
    'section',
    { class: 'card sftp', 'aria-labelledby': 'sftp-title' },
    h('h2', { id: 'sftp-title' }, 'SFTP access'),
    h('p', { class: 'hint' }, 'You can also transfer files with an SFTP program (WinSCP, FileZilla, sftp) using this temporary account. The password was given to you separately.'),
    h(
      'dl',
      { class: 'sftp-details' },
      ...item('Host', account.host),
      ...item('Port', String(account.port)),
      ...item('User name', account.username),
      h('dt', null, 'Expires'),
      h('dd', null, formatDateTime(account.expires_at)),
    ),
  )
}
