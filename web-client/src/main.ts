/**
 * Start-up. ``/launch#<token>``: take the launch token out of the address bar before anything else (so it
 * stays out of history and can never be sent on), then exchange it for the session cookie. ``/app``: use the
 * session the cookie already holds (a reload, or after the portal POSTed the token to /launch).
 */
import './styles.css'

import { api, ApiError, type Session, setCsrfToken } from './api'
import { App } from './app'
import { h, replaceChildren } from './dom'

/** The token from ``#<token>`` or ``#token=<token>``. */
export function launchToken(hash: string): string {
  const raw = hash.replace(/^#/, '')
  if (!raw) return ''
  const named = new URLSearchParams(raw).get('token')
  return (named ?? decodeURIComponent(raw)).trim()
}

async function signIn(): Promise<Session> {
  if (location.pathname === '/launch') {
    const token = launchToken(location.hash)
    history.replaceState(null, '', '/app')
    if (!token) {
      try {
        return await api.getSession()
      } catch {
        throw new ApiError('This link is incomplete. Open the file transfer page again from the support portal.', 400, 'no_token')
      }
    }
    return api.createSession(token)
  }
  return api.getSession()
}

function showProblem(root: HTMLElement, err: unknown): void {
  const message =
    err instanceof ApiError && err.status === 401 && !err.message
      ? 'Your session has expired; open the transfer page again from the portal.'
      : err instanceof Error
        ? err.message
        : String(err)
  root.removeAttribute('aria-busy')
  replaceChildren(
    root,
    h(
      'main',
      { class: 'main' },
      h('section', { class: 'card fatal' }, h('h1', null, 'The file transfer page cannot open'), h('p', { role: 'alert' }, message)),
    ),
  )
}

async function boot(): Promise<void> {
  const root = document.getElementById('app')
  if (!root) return
  try {
    const session = await signIn()
    setCsrfToken(session.csrf_token)
    new App(root, session).start()
  } catch (err) {
    showProblem(root, err)
  }
}

void boot()
