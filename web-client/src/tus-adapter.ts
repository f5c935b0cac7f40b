/**
 * What eftgw adds to tus-js-client, through its documented extension points (``fileReader`` and ``httpStack``):
 *
 * - ChunkSource hands out ChunkRefs (a file range) instead of Blob slices, and reads and checksums the next
 *   chunk in a worker while the current one is on the wire;
 * - GatewayHttpStack sends each chunk as that range of the file (a Blob the browser's network code reads
 *   itself, so the page copies no bytes into the request) with ``Upload-Checksum: sha256 <base64>`` of the
 *   bytes the worker read, adds the CSRF token to unsafe requests, and gives up on a request that makes no
 *   progress for ``stallMs`` (a laptop that slept, a half-open connection) so that tus-js-client's retry
 *   resumes from the gateway's offset. Once a chunk's request went out, the bytes the worker read go on to
 *   the upload's whole-file SHA-256 (``ChunkRef.sent``),
 *   hashed in another worker while that chunk and the next are on the wire. A chunk is read only once the
 *   chunk sent last is hashed (``ChunkSource.read``; the read-ahead is asked for as the next chunk goes out),
 *   so the whole-file hash is never more than two chunks behind the upload (the one being sent, and the one
 *   before it, being hashed), and an upload holds about three chunks' bytes: the one read ahead, the one the
 *   request sends, and the one being hashed. The wait falls on the read of the chunk after next, not on a send.
 */
import type { HttpRequest, HttpResponse, HttpStack, Upload } from 'tus-js-client'

import { csrfHeaders } from './api'
import type { HashPool } from './hashing'

type UploadOptions = NonNullable<ConstructorParameters<typeof Upload>[1]>
type TusFileReader = NonNullable<UploadOptions['fileReader']>
type TusFileSource = Awaited<ReturnType<TusFileReader['openFile']>>

export interface PreparedChunk {
  bytes: ArrayBuffer
  sha256: string
}

/** A range of a file; ``prepare()`` reads it once and checksums it (off the main thread). */
export class ChunkRef {
  constructor(
    readonly start: number,
    readonly end: number,
    private prepared: Promise<PreparedChunk> | null,
    private readonly source: ChunkSource,
  ) {}

  get size(): number {
    return this.end - this.start
  }

  prepare(): Promise<PreparedChunk> {
    const prepared = this.prepared ?? this.source.read(this.start, this.end)
    this.prepared = null // a re-send reads the file again
    return prepared
  }

  /**
   * What the request sends: this range of the file itself, which the browser's network code reads without
   * the page copying the bytes (a body from an ArrayBuffer is copied by the page's thread into the request and
   * again across processes). The gateway checks these bytes against the checksum of the bytes the worker read;
   * a file changed on disk since fails to read (or, changed in place unnoticed, is rejected by the checksum).
   */
  body(): Blob {
    return this.source.range(this.start, this.end)
  }

  /** The request went out: the chunk's ``bytes`` (as prepared) go on to the whole-file SHA-256, detached. */
  sent(bytes: ArrayBuffer): void {
    this.source.hash(this.start, bytes)
  }
}

interface Prefetch {
  start: number
  end: number
  promise: Promise<PreparedChunk>
}

/**
 * tus-js-client's file source, for one file; ``chunkSize()`` is the upload's current chunk size. The chunks
 * it sends also feed the whole-file SHA-256 of ``stream`` (HashPool.add, completed by HashPool.fileSha256).
 */
export class ChunkSource implements TusFileSource {
  readonly size: number
  private prefetch: Prefetch | null = null
  /** The whole-file hashing of the chunk sent last. */
  private hashing: Promise<void> = Promise.resolve()

  constructor(
    private readonly file: Blob,
    private readonly hashes: HashPool,
    private readonly chunkSize: () => number,
    private readonly stream: string,
  ) {
    this.size = file.size
  }

  slice(start: number, end: number): Promise<{ value: ChunkRef; done: boolean }> {
    let stop = Math.min(end, this.size)
    let prepared: Promise<PreparedChunk> | null = null
    if (this.prefetch && this.prefetch.start === start) {
      // The chunk read ahead is sent as it is, even when the chunk size changed since: tus-js-client continues
      // from the gateway's Upload-Offset, and the new size applies from the next chunk on. Reading the range
      // again at the new size would read those bytes twice and lose the overlap with the previous send.
      stop = this.prefetch.end
      prepared = this.prefetch.promise
    }
    this.prefetch = null
    // This chunk is asked for before the one read ahead, so that it is read first.
    if (prepared === null) {
      prepared = this.read(start, stop)
      prepared.catch(() => undefined) // awaited (and reported) when the chunk is sent
    }
    if (stop < this.size) {
      const nextEnd = Math.min(this.size, stop + this.chunkSize())
      const promise = this.read(stop, nextEnd)
      promise.catch(() => undefined) // awaited (and reported) when that chunk is sent
      this.prefetch = { start: stop, end: nextEnd, promise }
    }
    return Promise.resolve({ value: new ChunkRef(start, stop, prepared, this), done: stop >= this.size })
  }

  /**
   * ``[start, end)`` of the file, read once, and its SHA-256 (a worker's), once the chunk sent last is in the
   * whole-file SHA-256: tus-js-client asks for the chunk after next when it sends the next one, so at most that
   * one and the one before it wait to be hashed. Rejects with FileReadError if the whole-file hash could not
   * read the file.
   */
  read(start: number, end: number): Promise<PreparedChunk> {
    return this.hashing.then(() => this.hashes.chunk(this.file, start, end, this.stream))
  }

  /** ``[start, end)`` of the file, as a Blob the request reads itself. */
  range(start: number, end: number): Blob {
    return this.file.slice(start, end)
  }

  /** Add the bytes of ``[start, ...)``, just sent, to the whole-file SHA-256 (in the stream's worker). */
  hash(start: number, bytes: ArrayBuffer): void {
    this.hashing = this.hashes.add(this.file, this.stream, start, bytes)
    this.hashing.catch(() => undefined) // awaited (and reported) before the next chunk is read
  }

  /** Settles when the chunk sent last is hashed; rejects with FileReadError if the file could not be read. */
  hashed(): Promise<void> {
    return this.hashing
  }

  close(): void {
    this.prefetch = null
  }
}

export class ChunkReader implements TusFileReader {
  constructor(
    private readonly hashes: HashPool,
    private readonly chunkSize: () => number,
    private readonly stream: string,
  ) {}

  openFile(input: unknown): Promise<TusFileSource> {
    if (!(input instanceof Blob)) return Promise.reject(new Error('only files can be uploaded'))
    return Promise.resolve(new ChunkSource(input, this.hashes, this.chunkSize, this.stream))
  }
}

/** A request that failed without an answer from the gateway (network, stall, abort). */
export class NoResponseError extends Error {
  constructor(readonly reason: 'network' | 'stalled' | 'aborted') {
    super(`request failed: ${reason}`)
    this.name = 'NoResponseError'
  }
}

export class GatewayHttpStack implements HttpStack {
  constructor(private readonly stallMs: number) {}

  createRequest(method: string, url: string): HttpRequest {
    return new GatewayRequest(method, url, this.stallMs)
  }

  getName(): string {
    return 'eftgw-xhr-sha256'
  }
}

class GatewayRequest implements HttpRequest {
  private readonly xhr = new XMLHttpRequest()
  private readonly headers: Record<string, string> = {}
  private progress: ((bytesSent: number) => void) | null = null
  private aborted = false

  constructor(
    private readonly method: string,
    private readonly url: string,
    private readonly stallMs: number,
  ) {
    this.xhr.open(method, url, true)
  }

  getMethod(): string {
    return this.method
  }

  getURL(): string {
    return this.url
  }

  setHeader(header: string, value: string): void {
    this.headers[header] = value
  }

  getHeader(header: string): string | undefined {
    return this.headers[header]
  }

  setProgressHandler(handler: (bytesSent: number) => void): void {
    this.progress = handler
  }

  async send(body: unknown = null): Promise<HttpResponse> {
    let payload: Blob | null = null
    let bytes: ArrayBuffer | null = null
    let chunk: ChunkRef | null = null
    if (body instanceof ChunkRef) {
      chunk = body
      const prepared = await body.prepare()
      this.headers['Upload-Checksum'] = `sha256 ${prepared.sha256}`
      bytes = prepared.bytes
      payload = body.body()
    } else if (body !== null && body !== undefined) {
      throw new Error('unexpected request body')
    }
    if (this.aborted) throw new NoResponseError('aborted')
    Object.assign(this.headers, csrfHeaders(this.method))
    for (const [name, value] of Object.entries(this.headers)) this.xhr.setRequestHeader(name, value)
    const xhr = this.xhr
    return new Promise<HttpResponse>((resolve, reject) => {
      let stalled = false
      let timer: ReturnType<typeof setTimeout> | undefined
      const arm = (): void => {
        clearTimeout(timer)
        timer = setTimeout(() => {
          stalled = true
          xhr.abort()
        }, this.stallMs)
      }
      xhr.onload = () => {
        clearTimeout(timer)
        resolve(new GatewayResponse(xhr))
      }
      xhr.onerror = () => {
        clearTimeout(timer)
        reject(new NoResponseError('network'))
      }
      xhr.onabort = () => {
        clearTimeout(timer)
        reject(new NoResponseError(stalled ? 'stalled' : 'aborted'))
      }
      xhr.upload.onprogress = (event: ProgressEvent) => {
        arm()
        if (event.lengthComputable) this.progress?.(event.loaded)
      }
      arm()
      xhr.send(payload)
      // The request reads the file range itself: the bytes the worker read and checksummed move on to the
      // whole-file hash.
      if (chunk !== null && bytes !== null) chunk.sent(bytes)
    })
  }

  abort(): Promise<void> {
    this.aborted = true
    this.xhr.abort()
    return Promise.resolve()
  }

  getUnderlyingObject(): XMLHttpRequest {
    return this.xhr
  }
}

class GatewayResponse implements HttpResponse {
  constructor(private readonly xhr: XMLHttpRequest) {}

  getStatus(): number {
    return this.xhr.status
  }

  getHeader(header: string): string | undefined {
    return this.xhr.getResponseHeader(header) ?? undefined
  }

  getBody(): string {
    return this.xhr.responseType === '' || this.xhr.responseType === 'text' ? this.xhr.responseText : ''
  }

  getUnderlyingObject(): XMLHttpRequest {
    return this.xhr
  }
}
