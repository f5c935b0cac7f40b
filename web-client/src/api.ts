/**
 * The gateway's JSON API as the page uses it: same origin, the session cookie, and the CSRF token on every
 * unsafe request. Every failure becomes an ApiError whose message is a sentence for people (the gateway's own
 * message when it sent one); codes are for the program, never shown.
 */

export type Role = 'customer' | 'engineer' | 'service'

export interface Session {
  user: string
  role: Role
  case_id: string | null
  csrf_token: string
  expires_at: string
}

export interface CaseInfo {
  id: string
  state: 'open' | 'closed'
  opened_at: string
  closed_at: string | null
  purge_due_at: string | null
}

export interface FileInfo {
  id: string
  name: string
  size: number
  sha256: string
  uploaded_at: string
  uploaded_by: string
  source: string
  via?: string
  purge_due_at?: string | null
}

export interface UnfinishedUpload {
  id: string
  url: string
  name: string
  length: number | null
  offset: number
  metadata: Record<string, string>
  created_by: string
  created_at: string
  expires_at: string
  partial: boolean
}

export interface SftpAccount {
  username: string
  host: string
  port: number
  expires_at: string
}

export const NETWORK_MESSAGE = 'The gateway could not be reached; check your connection and try again.'

const FALLBACK: Record<number, string> = {
  400: 'The gateway could not accept this request.',
  401: 'Your session has expired; open the transfer page again from the portal.',
  403: 'You are not allowed to do this.',
  404: 'This was not found on the gateway.',
  409: 'Something changed on the gateway meanwhile; please try again.',
  410: 'This upload has expired or was cancelled; start it again.',
  413: 'The file is larger than this gateway accepts.',
  423: 'The gateway is still busy with this upload; try again shortly.',
  429: 'The gateway is busy; try again shortly.',
  460: 'A piece of the file was damaged on the way and was discarded.',
  503: 'File storage is unavailable right now; your upload is kept, try again shortly.',
}

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
  ) {
    super(message)
    this.name = 'ApiError'
  }
}

/** The sentence to show for an HTTP error: the gateway's message if it sent JSON with one, else ours. */
export function messageFor(status: number, body: string | null | undefined): string {
  if (body) {
    try {
      const parsed: unknown = JSON.parse(body)
      if (parsed && typeof parsed === 'object' && typeof (parsed as { message?: unknown }).message === 'string') {
        const message = (parsed as { message: string }).message.trim()
        if (message) return message
      }
    } catch {
      // not JSON: fall through to our own sentence
    }
  }
  if (status === 0) return NETWORK_MESSAGE
  if (FALLBACK[status]) return FALLBACK[status]
  if (status >= 500) return 'The gateway had a problem; please try again shortly.'
  return 'The gateway could not complete this request.'
}

export function codeOf(body: string | null | undefined): string {
  try {
    const parsed: unknown = JSON.parse(body ?? '')
    if (parsed && typeof parsed === 'object' && typeof (parsed as { code?: unknown }).code === 'string') {
      return (parsed as { code: string }).code
    }
  } catch {
    // no code
  }
  return ''
}

let csrfToken: string | null = null

export function setCsrfToken(token: string): void {
  csrfToken = token
}

export function isUnsafe(method: string): boolean {
  return !['GET', 'HEAD', 'OPTIONS'].includes(method.toUpperCase())
}

/** Headers every unsafe request of this page carries. */
export function csrfHeaders(method: string): Record<string, string> {
  return isUnsafe(method) && csrfToken ? { 'X-CSRF-Token': csrfToken } : {}
}

async function exchange<T>(method: string, path: string, body?: unknown): Promise<{ data: T; headers: Headers }> {
  const headers: Record<string, string> = { Accept: 'application/json', ...csrfHeaders(method) }
  if (body !== undefined) headers['Content-Type'] = 'application/json'
  let response: Response
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
      redirect: 'error',
    })
  } catch {
    throw new ApiError(NETWORK_MESSAGE, 0, 'network')
  }
  const text = await response.text().catch(() => '')
  if (!response.ok) {
    throw new ApiError(messageFor(response.status, text), response.status, codeOf(text) || `http_${response.status}`)
  }
  if (!text) return { data: undefined as T, headers: response.headers }
  try {
    return { data: JSON.parse(text) as T, headers: response.headers }
  } catch {
    throw new ApiError('The gateway sent an answer this page does not understand.', response.status, 'bad_json')
  }
}

export async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  return (await exchange<T>(method, path, body)).data
}

/** The path of the next page from a `Link: <url>; rel="next"` header, on this page's own origin; or null. */
export function nextPage(link: string | null): string | null {
  const match = link?.match(/<([^>]+)>;\s*rel="next"/)
  if (!match) return null
  const url = new URL(match[1], location.origin)
  return url.pathname + url.search
}

/** Every item of a list the gateway sends in pages, following its `Link: rel="next"` to the last page. */
export async function requestAll<T>(path: string): Promise<T[]> {
  const items: T[] = []
  let next: string | null = path
  for (let pages = 0; next !== null && pages < 10_000; pages++) {
    const { data, headers } = await exchange<T[]>('GET', next)
    items.push(...data)
    next = nextPage(headers.get('Link'))
  }
  return items
}

const casePath = (caseId: string): string => `/api/v1/cases/${encodeURIComponent(caseId)}`

export const api = {
  createSession: (token: string) => request<Session>('POST', '/api/v1/session', { token }),
  getSession: () => request<Session>('GET', '/api/v1/session'),
  getCase: (caseId: string) => request<CaseInfo>('GET', casePath(caseId)),
  listFiles: (caseId: string) => requestAll<FileInfo>(`${casePath(caseId)}/files`),
  listUnfinished: (caseId: string) => requestAll<UnfinishedUpload>(`${casePath(caseId)}/uploads`),
  uploadsEndpoint: (caseId: string) => `${location.origin}${casePath(caseId)}/uploads`,
  contentUrl: (caseId: string, fileId: string) => `${casePath(caseId)}/files/${encodeURIComponent(fileId)}/content`,
  /** The case's temporary SFTP account, or null when it has none (404). */
  async getSftpAccount(caseId: string): Promise<SftpAccount | null> {
    try {
      return await request<SftpAccount>('GET', `${casePath(caseId)}/sftp-account`)
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return null
      throw err
    }
  },
  async discardUpload(url: string): Promise<void> {
    // tus termination; the URL comes from the gateway's own list, so it is same-origin.
    const response = await fetch(url, {
      method: 'DELETE',
      headers: { 'Tus-Resumable': '1.0.0', ...csrfHeaders('DELETE') },
      credentials: 'same-origin',
    }).catch(() => null)
    if (response === null) throw new ApiError(NETWORK_MESSAGE, 0, 'network')
    if (!response.ok && response.status !== 404 && response.status !== 410) {
      const text = await response.text().catch(() => '')
      throw new ApiError(messageFor(response.status, text), response.status, codeOf(text))
    }
  },
}
