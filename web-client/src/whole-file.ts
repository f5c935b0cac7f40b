/**
 * A file's whole SHA-256, built from the very chunks the upload reads, so that no byte is read twice and the
 * digest is ready as soon as the last chunk is acknowledged.
 *
 * SHA-256 is sequential, so a WholeFileHash takes bytes in file order only. Chunks arrive almost always in
 * order (an upload reads its chunks one after another); those that do not are handled without holding bytes:
 *
 * - a chunk read again (a retry after a lost connection or a 460) covers bytes already hashed: skipped;
 * - a chunk that starts beyond what is hashed waits if an earlier chunk still being read will fill the gap
 *   (the first two chunks are requested together);
 * - otherwise (an upload resumed at the gateway's offset after a reload) the missing range is read from disk
 *   in the background, up to the furthest chunk seen, and the upload's chunks are taken again once they are
 *   next in line. ``finish()`` reads whatever is still missing and returns the hex digest.
 *
 * The hasher is hash-wasm's SHA-256 (WebAssembly): @noble/hashes, plain JavaScript, reached about a third of
 * its speed here (docs/web-client.md, "Measured"). WebCrypto is native but has no incremental digest.
 */
import { createSHA256, type IHasher } from 'hash-wasm'

const SLICE = 8 * 1024 * 1024

interface Reading {
  start: number
  end: number
  /** Settles once this range was offered to the hasher (or its read failed). */
  offered: Promise<void>
}

export class WholeFileHash {
  /** Bytes hashed so far: ``[0, position)``. */
  position = 0
  private readonly hasher: Promise<IHasher> = createSHA256()
  private readonly readings = new Set<Reading>()
  private target = 0
  private catchingUp: Promise<void> | null = null
  private failure: unknown = null
  onProgress: ((done: number) => void) | null = null

  constructor(private readonly file: Blob) {}

  /**
   * Read ``[start, end)`` of the file, offer it to the hasher, and return the bytes, with what ``beside``
   * (called with the bytes just before they are hashed) returned. The caller must not detach (transfer) the
   * buffer before this resolves.
   */
  async read<T>(start: number, end: number, beside: (bytes: ArrayBuffer) => T): Promise<{ bytes: ArrayBuffer; beside: T }> {
    let settle = (): void => undefined
    const reading: Reading = { start, end, offered: new Promise<void>((resolve) => (settle = resolve)) }
    this.readings.add(reading)
    try {
      const bytes = await this.file.slice(start, end).arrayBuffer()
      const result = { bytes, beside: beside(bytes) }
      await this.offer(reading, bytes)
      return result
    } finally {
      this.readings.delete(reading)
      settle()
    }
  }

  /** The whole file's SHA-256 (lowercase hex), reading from disk what the chunks did not cover. */
  async finish(): Promise<string> {
    this.catchUp(this.file.size)
    while (this.catchingUp) await this.catchingUp
    if (this.failure !== null) throw this.failure
    return (await this.hasher).digest('hex')
  }

  private async offer(reading: Reading, bytes: ArrayBuffer): Promise<void> {
    const hasher = await this.hasher
    // Wait for earlier chunks still being read that will bring the hash up to this one.
    for (let filler = this.fillerOf(reading); reading.start > this.position && filler; filler = this.fillerOf(reading)) {
      await filler.offered
    }
    if (reading.start > this.position) this.catchUp(reading.end)
    else this.take(hasher, reading.start, bytes)
  }

  /** An unfinished read, other than ``reading``, that covers the next byte to hash. */
  private fillerOf(reading: Reading | null): Reading | undefined {
    for (const other of this.readings) {
      if (other !== reading && other.start <= this.position && this.position < other.end) return other
    }
    return undefined
  }

  /** Hash the part of ``bytes`` (which start at ``start``) that comes next, if any. */
  private take(hasher: IHasher, start: number, bytes: ArrayBuffer): void {
    const end = start + bytes.byteLength
    if (start > this.position || end <= this.position) return
    hasher.update(new Uint8Array(bytes, this.position - start))
    this.position = end
    this.onProgress?.(end)
  }

  /** Read the file from disk in the background until ``[0, upTo)`` is hashed. */
  private catchUp(upTo: number): void {
    this.target = Math.max(this.target, upTo)
    if (this.catchingUp) return
    this.catchingUp = this.readFromDisk().finally(() => {
      this.catchingUp = null
    })
  }

  private async readFromDisk(): Promise<void> {
    const hasher = await this.hasher
    try {
      while (this.position < this.target && this.failure === null) {
        const filler = this.fillerOf(null)
        if (filler) {
          await filler.offered // a chunk being read covers it: no need to read it twice
          continue
        }
        const start = this.position
        const bytes = await this.file.slice(start, Math.min(this.file.size, start + SLICE)).arrayBuffer()
        if (bytes.byteLength === 0) throw new Error('the file is shorter than it was')
        this.take(hasher, start, bytes)
      }
    } catch (err) {
      this.failure = err
    }
  }
}
