/**
 * One file's upload: a tus-js-client Upload driven through tus-adapter.ts, plus what the page shows about it.
 *
 * Progress counts acknowledged bytes only: the ``Upload-Offset`` of the gateway's answers (HEAD, PATCH).
 * Retries never ask the user: a lost connection, a stall, a gateway restart, a busy upload (423), an offset
 * mismatch (409), a server error and a chunk refused for its checksum (460) all retry with backoff, each
 * resuming from the gateway's offset (tus-js-client sends HEAD first). Meanwhile the chunks read for sending
 * also build the whole file's SHA-256 in a worker (whole-file.ts); after the last byte that SHA-256 is
 * compared with the one the gateway computed: only then is the file "verified".
 */
import { type DetailedError, type HttpStack, Upload } from 'tus-js-client'

import { api, type FileInfo, messageFor } from './api'
import { formatDuration } from './format'
import { FileReadError, type HashPool } from './hashing'
import { ChunkReader } from './tus-adapter'

export type TransferState =
  | 'checking' // fingerprinting the file, looking for an unfinished upload of it
  | 'queued'
  | 'uploading'
  | 'retrying' // waiting to try again after an interruption
  | 'paused'
  | 'verifying' // all bytes acknowledged; comparing SHA-256 with the gateway's
  | 'done'
  | 'failed'
  | 'cancelled'

const MiB = 1024 * 1024
export const INITIAL_CHUNK = 2 * MiB
export const MIN_CHUNK = 1 * MiB
export const MAX_CHUNK = 64 * MiB
/** Chunks are sized to take about this long, so progress moves and a lost chunk costs little. */
const TARGET_CHUNK_SECONDS = 3
/** Backoff between attempts (reset whenever the gateway acknowledges new bytes): about 47 minutes in all. */
export const RETRY_DELAYS = [0, 1000, 2000, 4000, 8000, 15000, ...Array<number>(94).fill(30000)]
/** A request with no progress for this long is abandoned and retried (sleep, half-open connections). */
export const STALL_MS = 60_000
/** The same chunk refused this many times in a row for its checksum means the file itself is unreadable. */
const MAX_CHECKSUM_REJECTIONS = 5

export interface TransferHost {
  readonly caseId: string
  readonly hashes: HashPool
  readonly stack: HttpStack
  changed(transfer: Transfer): void
  /** The transfer stopped occupying an upload slot (paused, failed, done, cancelled). */
  released(transfer: Transfer): void
  /** Queue the transfer again (Resume, Retry). */
  requeue(transfer: Transfer): void
  /** The gateway's file with this content, once the upload completed. */
  findFile(transfer: Transfer): Promise<FileInfo | null>
}

class SpeedMeter {
  private samples: Array<[number, number]> = []

  add(bytes: number): void {
    const now = performance.now()
    const last = this.samples[this.samples.length - 1]
    if (last && bytes < last[1]) this.samples = []
    this.samples.push([now, bytes])
    while (this.samples.length > 2 && now - this.samples[0][0] > 6000) this.samples.shift()
  }

  reset(): void {
    this.samples = []
  }

  /** Bytes per second over the last few seconds, or 0 while unknown. */
  get rate(): number {
    if (this.samples.length < 2) return 0
    const [t0, b0] = this.samples[0]
    const [t1, b1] = this.samples[this.samples.length - 1]
    return t1 - t0 < 400 ? 0 : ((b1 - b0) * 1000) / (t1 - t0)
  }
}

export class Transfer {
  readonly key = crypto.randomUUID()
  state: TransferState = 'checking'
  /** A sentence about the current state (why it waits, what failed); empty when the state says it all. */
  message = ''
  /** Bytes the gateway has acknowledged. */
  acked = 0
  /** Bytes sent, including the chunk in flight. */
  sent = 0
  /** Where the gateway said this upload stood when this page first asked, if it resumed an earlier one. */
  resumedFrom: number | null = null
  fingerprint = ''
  uploadUrl: string | null = null
  localSha256 = ''
  verifiedFile: FileInfo | null = null
  hashed = 0
  checksumRejections = 0
  retryAt = 0
  /** False when retrying cannot help (closed case, expired session, too large). */
  canRetry = true
  private upload: Upload | null = null
  private readonly meter = new SpeedMeter()
  private chunkStarted = 0
  private rejectedInARow = 0
  private restartFresh = false

  /** ``name``: what the gateway is told the file is called (a folder's file carries its path, folders.ts). */
  constructor(
    readonly file: File,
    private readonly host: TransferHost,
    readonly name: string = file.name,
  ) {}

  get size(): number {
    return this.file.size
  }

  get speed(): number {
    return this.state === 'uploading' ? this.meter.rate : 0
  }

  get secondsLeft(): number {
    const speed = this.speed
    return speed > 0 ? (this.size - this.sent) / speed : Number.NaN
  }

  /** Whether the transfer occupies one of the parallel upload slots. */
  get running(): boolean {
    return this.state === 'uploading' || this.state === 'retrying'
  }

  /** Continue the gateway's unfinished upload at ``url`` instead of creating a new one. */
  resumeAt(url: string, offset: number): void {
    this.uploadUrl = url
    this.acked = offset
    this.sent = offset
    this.resumedFrom = offset
  }

  start(): void {
    this.state = 'uploading'
    this.message = ''
    this.meter.reset()
    if (this.upload === null || this.restartFresh) this.upload = this.createUpload()
    this.restartFresh = false
    this.chunkStarted = performance.now()
    this.upload.start()
    this.host.changed(this)
  }

  pause(): void {
    if (!['queued', 'uploading', 'retrying'].includes(this.state)) return
    void this.upload?.abort()
    this.state = 'paused'
    this.message = ''
    this.host.released(this)
    this.host.changed(this)
  }

  resume(): void {
    if (this.state !== 'paused' && this.state !== 'failed') return
    if (this.state === 'failed' && !this.canRetry) return
    this.host.requeue(this)
  }

  async cancel(): Promise<void> {
    const upload = this.upload
    const previous = this.state
    this.state = 'cancelled'
    this.message = ''
    this.host.released(this)
    this.host.changed(this)
    if (previous !== 'done' && previous !== 'verifying') this.host.hashes.forget(this.key)
    if (upload && previous !== 'done' && previous !== 'verifying') {
      // Termination (DELETE) removes what the gateway kept of it; retried by tus-js-client if the network hiccups.
      await upload.abort(true).catch(() => undefined)
    }
  }

  /** Skip the backoff wait (the browser says it is online again, or the page became visible). */
  retryNow(): void {
    if (this.state !== 'retrying' || this.upload === null) return
    void this.upload.abort().then(() => {
      if (this.state === 'retrying') this.start()
    })
  }

  private createUpload(): Upload {
    const file = this.file
    const upload: Upload = new Upload(file, {
      endpoint: api.uploadsEndpoint(this.host.caseId),
      uploadUrl: this.uploadUrl,
      metadata: {
        filename: this.name,
        filetype: file.type || 'application/octet-stream',
        fingerprint: this.fingerprint,
        lastModified: String(file.lastModified),
      },
      chunkSize: INITIAL_CHUNK,
      retryDelays: RETRY_DELAYS,
      storeFingerprintForResuming: false,
      fingerprint: () => Promise.resolve(this.fingerprint),
      // Each chunk read also feeds the whole file's SHA-256, kept in a worker under this transfer's key.
      fileReader: new ChunkReader(this.host.hashes, () => upload.options.chunkSize ?? INITIAL_CHUNK, this.key),
      httpStack: this.host.stack,
      onUploadUrlAvailable: () => {
        this.uploadUrl = upload.url
      },
      onAfterResponse: (req, res) => this.acknowledged(req.getMethod(), res.getStatus(), res.getHeader('Upload-Offset')),
      onProgress: (bytesSent) => {
        this.sent = bytesSent
        this.meter.add(bytesSent)
        if (this.state === 'retrying') {
          this.state = 'uploading'
          this.message = ''
        }
        this.host.changed(this)
      },
      onChunkComplete: (chunkSize) => this.adaptChunkSize(upload, chunkSize),
      onShouldRetry: (err, attempt) => this.shouldRetry(err, attempt),
      onError: (err) => this.fail(err),
      onSuccess: () => void this.verify(),
    })
    return upload
  }

  private acknowledged(method: string, status: number, offset: string | undefined): void {
    if (status < 200 || status >= 300 || offset === undefined || !/^\d+$/.test(offset)) return
    const value = Number(offset)
    if (method === 'HEAD' && this.resumedFrom === null && value > 0) this.resumedFrom = value
    if (value > this.acked) this.rejectedInARow = 0
    this.acked = value
    this.sent = Math.max(this.sent, value)
    this.host.changed(this)
  }

  private adaptChunkSize(upload: Upload, chunkSize: number): void {
    const now = performance.now()
    const seconds = (now - this.chunkStarted) / 1000
    this.chunkStarted = now
    if (seconds <= 0 || chunkSize <= 0) return
    const wanted = (chunkSize / seconds) * TARGET_CHUNK_SECONDS
    let next = MIN_CHUNK
    while (next * 2 <= wanted && next < MAX_CHUNK) next *= 2
    const current = upload.options.chunkSize ?? INITIAL_CHUNK
    // Grow one step at a time, shrink at once: a slow link should not wait on a huge chunk.
    upload.options.chunkSize = next > current ? Math.min(next, current * 2) : next
  }

  private shouldRetry(err: DetailedError, attempt: number): boolean {
    if (this.state === 'paused' || this.state === 'cancelled') return false
    if (err.causingError instanceof FileReadError) return false
    const response = err.originalResponse
    const status = response ? response.getStatus() : 0
    const delay = RETRY_DELAYS[attempt] ?? 30_000
    const when = delay >= 1000 ? ` Trying again in ${formatDuration(delay / 1000)}.` : ' Trying again now.'
    let message: string
    if (status === 0) {
      message =
        navigator.onLine === false
          ? 'You appear to be offline. The upload continues by itself when the connection is back.'
          : `The connection to the gateway was interrupted; what arrived is kept.${when}`
    } else if (status === 460) {
      this.checksumRejections += 1
      this.rejectedInARow += 1
      if (this.rejectedInARow >= MAX_CHECKSUM_REJECTIONS) return false
      message = 'A piece of the file arrived damaged, so the gateway discarded it; sending that piece again.'
    } else if (status === 409 || status === 423 || status === 429 || status >= 500) {
      message = `${messageFor(status, response?.getBody())}${when}`
    } else {
      return false
    }
    this.state = 'retrying'
    this.message = message
    this.retryAt = Date.now() + delay
    this.host.changed(this)
    return true
  }

  private fail(err: Error | DetailedError): void {
    if (this.state === 'paused' || this.state === 'cancelled') return
    const detailed = err as DetailedError
    const response = detailed.originalResponse ?? null
    const status = response ? response.getStatus() : 0
    if (detailed.causingError instanceof FileReadError || err instanceof FileReadError) {
      this.message = new FileReadError().message
    } else if (status === 460) {
      this.message =
        'This file kept arriving damaged at the gateway, so the upload stopped. Check the file and your connection, then retry.'
    } else if (status === 0) {
      this.message = 'The gateway could not be reached for a long time. Check your connection, then choose Retry.'
    } else {
      this.message = messageFor(status, response?.getBody())
    }
    // An expired or cancelled upload (404, 410) can only start again from the beginning.
    this.restartFresh = status === 404 || status === 410
    if (this.restartFresh) {
      this.uploadUrl = null
      this.acked = 0
      this.sent = 0
      this.resumedFrom = null
    }
    this.canRetry = ![401, 403, 413].includes(status)
    this.state = 'failed'
    this.host.released(this)
    this.host.changed(this)
  }

  private async verify(): Promise<void> {
    this.acked = this.size
    this.sent = this.size
    this.state = 'verifying'
    this.message = ''
    this.host.released(this)
    this.host.changed(this)
    try {
      this.localSha256 = await this.host.hashes.fileSha256(this.file, this.key, (done) => {
        this.hashed = done
        this.host.changed(this)
      })
    } catch {
      this.state = 'done'
      this.message = 'Uploaded, but the file could not be read again here to compare its SHA-256.'
      this.host.changed(this)
      return
    }
    this.hashed = this.size
    const record = await this.host.findFile(this).catch(() => null)
    if (this.state !== 'verifying') return
    if (record) {
      this.verifiedFile = record
      this.state = 'done'
      this.message = ''
    } else {
      this.state = 'failed'
      this.canRetry = false
      this.message =
        "The gateway's copy does not have the same SHA-256 as your file. Upload the file again, and tell your support engineer."
    }
    this.host.changed(this)
  }
}
