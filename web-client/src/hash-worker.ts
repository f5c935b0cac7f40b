/// <reference lib="webworker" />
/**
 * Hashing off the main thread. Jobs (each answered with the same ``id``):
 *
 * - ``chunk``: read ``[start, end)`` of a file once, SHA-256 it (WebCrypto), and hand back both the bytes and
 *   the base64 digest, so what is sent is exactly what was hashed (``Upload-Checksum: sha256 <base64>``);
 * - ``add``: a chunk the page has just sent (its bytes transferred here: the request keeps its own copy), added
 *   to the whole-file SHA-256 of its upload's ``stream`` (whole-file.ts); answered once hashed;
 * - ``fingerprint``: ``v1:<size>:<lastModified>:<sha256 of the first and last MiB>``, to recognise the same
 *   file after a reload without reading all of it;
 * - ``file``: the whole file's SHA-256 (hex), what the page compares with the gateway's after an upload: the
 *   stream's chunks, and whatever they did not cover read from disk, reporting progress meanwhile;
 * - ``forget``: drop a stream (the upload was cancelled).
 *
 * The page gives an upload's chunks (read, WebCrypto) and its stream (WebAssembly) to different workers where
 * it has two (hashing.ts), so the whole-file hash of one chunk runs while the next is read and sent.
 */
import type { WorkerReply, WorkerRequest } from './hash-protocol'
import { WholeFileHash } from './whole-file'

const SAMPLE = 1024 * 1024

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
    case 'add': {
      const stream = streamOf(job.stream, job.file)
      await stream.add(job.start, job.bytes)
      reply({ id: job.id, ok: true, op: 'add', position: stream.position })
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
      const stream = streamOf(job.stream, job.file)
      let lastReport = 0
      stream.onProgress = (done) => {
        const now = performance.now()
        if (now - lastReport > 200) {
          lastReport = now
          reply({ id: job.id, ok: true, op: 'progress', done })
        }
      }
      try {
        reply({ id: job.id, ok: true, op: 'file', sha256: await stream.finish() })
      } finally {
        streams.delete(job.stream)
      }
      return
    }
    case 'forget': {
      streams.delete(job.stream)
      reply({ id: job.id, ok: true, op: 'forget' })
      return
    }
  }
}

const streams = new Map<string, WholeFileHash>()

function streamOf(name: string, file: Blob): WholeFileHash {
  let stream = streams.get(name)
  if (stream === undefined) {
    stream = new WholeFileHash(file)
    streams.set(name, stream)
  }
  return stream
}

scope.onmessage = (event: MessageEvent<WorkerRequest>) => {
  const job = event.data
  const fail = (err: unknown): void => {
    const name = err instanceof DOMException || err instanceof Error ? err.name : 'Error'
    reply({ id: job.id, ok: false, error: name })
  }
  handle(job).catch(fail)
}
