/**
 * Hashing workers (hash-worker.ts), so SHA-256 never runs on the page's main thread. Each upload's ``stream``
 * (its whole-file SHA-256) lives in one worker of a small pool, chosen when the stream is first named: that
 * worker takes the chunks the page sent (``add``) and the final digest. Chunks to read and checksum, and
 * fingerprints, go to the least busy of the other workers, so one chunk's whole-file hashing never delays
 * reading the next. A failed read (the file changed or vanished) rejects with FileReadError.
 */
import type { WorkerReply, WorkerRequest } from './hash-protocol'

export class FileReadError extends Error {
  constructor() {
    super('The file could not be read; it may have been changed, moved or deleted. Select it again.')
    this.name = 'FileReadError'
  }
}

interface Pending {
  worker: Slot
  resolve: (reply: WorkerReply) => void
  reject: (error: Error) => void
  onProgress?: (done: number) => void
}

interface Slot {
  worker: Worker
  busy: number
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never

export class HashPool {
  private readonly slots: Slot[] = []
  private readonly streams = new Map<string, Slot>()
  private readonly pending = new Map<number, Pending>()
  private nextId = 1

  constructor(size: number) {
    for (let i = 0; i < size; i += 1) this.slots.push(this.spawn())
  }

  private spawn(): Slot {
    const worker = new Worker(new URL('./hash-worker.ts', import.meta.url), { type: 'module' })
    const slot: Slot = { worker, busy: 0 }
    worker.onmessage = (event: MessageEvent<WorkerReply>) => this.receive(event.data)
    worker.onerror = () => this.failAll(slot)
    return slot
  }

  /**
   * Read ``[start, end)`` of ``file`` once: its bytes and their SHA-256 (base64), in a worker other than the
   * one keeping ``stream``'s whole-file SHA-256 where the pool has more than one.
   */
  async chunk(file: Blob, start: number, end: number, stream?: string): Promise<{ bytes: ArrayBuffer; sha256: string }> {
    const reply = await this.run({ op: 'chunk', file, start, end }, undefined, this.leastBusy(stream))
    if (reply.ok && reply.op === 'chunk') return { bytes: reply.bytes, sha256: reply.sha256 }
    throw new FileReadError()
  }

  /**
   * Add ``[start, start + bytes.byteLength)`` of ``file``, just sent, to the whole-file SHA-256 of ``stream``.
   * ``bytes`` is transferred to the worker (detached here). Resolves once they are hashed (or skipped, or let
   * go while the hash catches up from disk: whole-file.ts).
   */
  async add(file: Blob, stream: string, start: number, bytes: ArrayBuffer): Promise<void> {
    const reply = await this.run({ op: 'add', file, stream, start, bytes }, undefined, this.slotOf(stream), [bytes])
    if (!reply.ok) throw new FileReadError()
  }

  /** A fingerprint that recognises the same file again: size, modification time and content samples. */
  async fingerprint(file: File): Promise<string> {
    const reply = await this.run({ op: 'fingerprint', file, lastModified: file.lastModified })
    if (reply.ok && reply.op === 'fingerprint') return reply.fingerprint
    throw new FileReadError()
  }

  /**
   * The whole file's SHA-256 as lowercase hex, from the chunks of ``stream`` and whatever they did not cover
   * (read now); ``onProgress`` gets the bytes hashed so far. The stream is gone afterwards.
   */
  async fileSha256(file: Blob, stream: string, onProgress?: (done: number) => void): Promise<string> {
    const slot = this.slotOf(stream)
    this.streams.delete(stream)
    const reply = await this.run({ op: 'file', file, stream }, onProgress, slot)
    if (reply.ok && reply.op === 'file') return reply.sha256
    throw new FileReadError()
  }

  /** Drop the whole-file hash of ``stream`` (its upload was cancelled). */
  forget(stream: string): void {
    const slot = this.streams.get(stream)
    if (slot === undefined) return
    this.streams.delete(stream)
    this.run({ op: 'forget', stream }, undefined, slot).catch(() => undefined)
  }

  /** The least busy worker, other than the one keeping ``stream`` if there is another. */
  private leastBusy(stream?: string): Slot {
    const keeper = stream === undefined ? undefined : this.slotOf(stream)
    const others = this.slots.filter((s) => s !== keeper)
    return (others.length > 0 ? others : this.slots).reduce((best, s) => (s.busy < best.busy ? s : best))
  }

  /** The worker keeping ``stream``: the one keeping fewest streams when the stream is first named. */
  private slotOf(stream: string): Slot {
    let slot = this.streams.get(stream)
    if (slot === undefined) {
      const kept = (s: Slot): number => [...this.streams.values()].filter((k) => k === s).length
      slot = this.slots.reduce((best, s) => (kept(s) < kept(best) ? s : best))
      this.streams.set(stream, slot)
    }
    return slot
  }

  private run(
    job: DistributiveOmit<WorkerRequest, 'id'>,
    onProgress?: (done: number) => void,
    slot: Slot = this.leastBusy(),
    transfer: Transferable[] = [],
  ): Promise<WorkerReply> {
    const id = this.nextId++
    slot.busy += 1
    return new Promise<WorkerReply>((resolve, reject) => {
      this.pending.set(id, { worker: slot, resolve, reject, onProgress })
      slot.worker.postMessage({ ...job, id } as WorkerRequest, transfer)
    })
  }

  private receive(reply: WorkerReply): void {
    const pending = this.pending.get(reply.id)
    if (!pending) return
    if (reply.ok && reply.op === 'progress') {
      pending.onProgress?.(reply.done)
      return
    }
    this.pending.delete(reply.id)
    pending.worker.busy -= 1
    if (reply.ok) pending.resolve(reply)
    else pending.reject(new FileReadError())
  }

  private failAll(slot: Slot): void {
    for (const [id, pending] of this.pending) {
      if (pending.worker !== slot) continue
      this.pending.delete(id)
      slot.busy -= 1
      pending.reject(new FileReadError())
    }
  }
}
