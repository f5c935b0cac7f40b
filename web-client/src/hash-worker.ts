/// <reference lib="webworker" />
/**
 * Hashing off the main thread. Jobs (each answered with the same ``id``):
 *
 * - ``chunk``: read ``[start, end)`` of a file once, SHA-256 it (WebCrypto), and hand back both the bytes and
 *   the base64 digest, so what is sent is exactly what was hashed (``Upload-Checksum: sha256 <base64>``);
 * - ``fingerprint``: ``v1:<size>:<lastModified>:<sha256 of the first and last MiB>``, to recognise the same
 *   file after a reload without reading all of it;
 * - ``file``: the whole file's SHA-256 (hex), incrementally with @noble/hashes, reporting progress; this is
 *   what the page compares with the gateway's SHA-256 after an upload.
 */
import { sha256 } from '@noble/hashes/sha2.js'

import type { WorkerReply, WorkerRequest } from './hash-protocol'

const SAMPLE = 1024 * 1024
const FILE_SLICE = 8 * 1024 * 1024

const scope = self as unknown as DedicatedWorkerGlobalScope

function base64(bytes: ArrayBuffer): string {
  let binary = ''
  const view = new Uint8Array(bytes)
  for (let i = 0; i < view.length; i += 1) binary += String.fromCharCode(view[i])
  return btoa(binary)
}

function hex(bytes: ArrayBuffer | Uint8Array): string {
  return Array.from(bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes), (b) => b.toString(16).padStart(2, '0')).join('')
}

function reply(message: WorkerReply, transfer: Transferable[] = []): void {
  scope.postMessage(message, transfer)
}

async function handle(job: WorkerRequest): Promise<void> {
  switch (job.op) {
    case 'chunk': {
      const bytes = await job.file.slice(job.start, job.end).arrayBuffer()
      const digest = await crypto.subtle.digest('SHA-256', bytes)
      reply({ id: job.id, ok: true, op: 'chunk', bytes, sha256: base64(digest) }, [bytes])
      return
    }
    case 'fingerprint': {
      const { file } = job
      const head = await file.slice(0, SAMPLE).arrayBuffer()
      const tail = file.size > SAMPLE ? await file.slice(Math.max(SAMPLE, file.size - SAMPLE)).arrayBuffer() : new ArrayBuffer(0)
      const joined = new Uint8Array(head.byteLength + tail.byteLength)
      joined.set(new Uint8Array(head), 0)
      joined.set(new Uint8Array(tail), head.byteLength)
      const digest = await crypto.subtle.digest('SHA-256', joined)
      reply({ id: job.id, ok: true, op: 'fingerprint', fingerprint: `v1:${file.size}:${job.lastModified}:${hex(digest)}` })
      return
    }
    case 'file': {
      const hasher = sha256.create()
      const { file } = job
      let lastReport = 0
      for (let offset = 0; offset < file.size; offset += FILE_SLICE) {
        const bytes = await file.slice(offset, Math.min(file.size, offset + FILE_SLICE)).arrayBuffer()
        hasher.update(new Uint8Array(bytes))
        const now = performance.now()
        if (now - lastReport > 200) {
          lastReport = now
          reply({ id: job.id, ok: true, op: 'progress', done: offset + bytes.byteLength })
        }
      }
      reply({ id: job.id, ok: true, op: 'file', sha256: hex(hasher.digest()) })
      return
    }
  }
}

// Whole-file jobs run one after another (each reads a whole file); chunk jobs run as they come.
let files: Promise<void> = Promise.resolve()

scope.onmessage = (event: MessageEvent<WorkerRequest>) => {
  const job = event.data
  const fail = (err: unknown): void => {
    const name = err instanceof DOMException || err instanceof Error ? err.name : 'Error'
    reply({ id: job.id, ok: false, error: name })
  }
  if (job.op === 'file') files = files.then(() => handle(job).catch(fail))
  else handle(job).catch(fail)
}
