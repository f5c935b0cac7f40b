/**
 * Building DOM without HTML strings. Every piece of text (file names, user names, server messages) becomes a
 * Text node, so nothing a user controls is ever parsed as markup: the client never parses a string as HTML
 * (scripts/build-web-client refuses to build if it would).
 */

export type Child = Node | string | number | null | undefined | false
type AttrValue = string | number | boolean | null | undefined
export type Attrs = Record<string, AttrValue | ((event: Event) => void)>

const FORBIDDEN_ATTRS = new Set(['style', 'srcdoc'])

/** An element with attributes (``on*`` keys take listeners) and children (strings become text nodes). */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs | null = null,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag)
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (typeof value === 'function') {
        if (!key.startsWith('on')) throw new Error(`listener for non-event attribute ${key}`)
        el.addEventListener(key.slice(2).toLowerCase(), value)
      } else if (key.startsWith('on') || FORBIDDEN_ATTRS.has(key.toLowerCase())) {
        throw new Error(`refusing attribute ${key}`)
      } else if (value === true) {
        el.setAttribute(key, '')
      } else if (value !== false && value !== null && value !== undefined) {
        el.setAttribute(key, String(value))
      }
    }
  }
  append(el, ...children)
  return el
}

export function append(parent: Node, ...children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue
    parent.appendChild(typeof child === 'string' || typeof child === 'number' ? document.createTextNode(String(child)) : child)
  }
}

/** Replace all children of ``parent``. */
export function replaceChildren(parent: Element, ...children: Child[]): void {
  parent.replaceChildren()
  append(parent, ...children)
}

/** Set text only when it changed (keeps screen readers and layout calm during progress updates). */
export function setText(el: Element, text: string): void {
  if (el.textContent !== text) el.textContent = text
}

/** Text visible to screen readers only. */
export function srOnly(text: string): HTMLSpanElement {
  return h('span', { class: 'sr-only' }, text)
}
