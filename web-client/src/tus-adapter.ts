/**
 * What eftgw adds to tus-js-client, through its documented extension points (``fileReader`` and ``httpStack``):
 *
 * - ChunkSource hands out ChunkRefs (a file range) instead of Blob slices, and reads and hashes the next chunk
 *   in a worker while the current one is on the wire;
 * - GatewayHttpStack sends each chunk as the exact bytes that were hashed, with
 *   ``Upload-Checksum: sha256 <base64>``, adds the CSRF token to unsafe requests, and gives up on a request
 *   that makes no progress for ``stallMs`` (a laptop that slept, a half-open connection) so that
 *   tus-js-client's retry resumes from the gateway's offset.
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

/** A range of a file; ``prepare()`` reads it once and hashes it (off the main thread). */
export class ChunkRef {
  constructor(
    readonly file: Blob,
    readonly start: number,
    readonly end: number,
    private prepared: Promise<PreparedChunk> | null,
    private readonly hashes: HashPool,
    private readonly stream: string,
  ) {}

  get size(): number {
    return this.end - this.start
  }

  prepare(): Promise<PreparedChunk> {
    const prepared = this.prepared ?? this.hashes.chunk(this.file, this.start, this.end, this.stream)
    this.prepared = null // a re-send reads the file again
    return prepared
  }
}

interface Prefetch {
  start: number
  end: number
  promise: Promise<PreparedChunk>
}

/**
 * tus-js-client's file source, for one file; ``chunkSize()`` is the upload's current chunk size. Its chunks
 * also feed the whole-file SHA-256 of ``stream`` (HashPool.fileSha256).
 */
export class ChunkSource implements TusFileSource {
  readonly size: number
  private prefetch: Prefetch | null = null

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
    if (stop < this.size) {
      const nextEnd = Math.min(this.size, stop + this.chunkSize())
      const promise = this.hashes.chunk(this.file, stop, nextEnd, this.stream)
      promise.catch(() => undefined) // awaited (and reported) when that chunk is sent
      this.prefetch = { start: stop, end: nextEnd, promise }
    }
    return Promise.resolve({ value: new ChunkRef(this.file, start, stop, prepared, this.hashes, this.stream), done: stop >= this.size })
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
    let payload: ArrayBuffer | null = null
    if (body instanceof ChunkRef) {
      const chunk = await body.prepare()
      this.headers['Upload-Checksum'] = `sha256 ${chunk.sha256}`
      payload = chunk.bytes
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
