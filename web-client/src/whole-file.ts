/**
 * A file's whole SHA-256, built from the very chunks the upload sends, so that no byte is read twice and the
 * digest is ready as soon as the last chunk is acknowledged.
 *
 * The page hands each chunk over right after giving it to the network (``add``): its upload sends chunks one
 * after another, so they arrive in file order. SHA-256 is sequential, so a WholeFileHash takes bytes in file
 * order only:
 *
 * - a chunk sent again (a retry after a lost connection or a 460) covers bytes already hashed: skipped;
 * - a chunk that starts a little beyond what is hashed (at most ``HOLD`` bytes: an upload resumed after a
 *   reload, at the gateway's offset) waits while the gap is read from disk, then is hashed: the page waits for
 *   that before it sends more, so the hash stays in step with the upload;
 * - a chunk that starts further beyond is let go (its bytes are not kept): the missing range is read from disk
 *   in the background, up to the furthest chunk let go, while the upload goes on; once the hash is within
 *   ``HOLD`` of the chunks again, they are hashed as they come.
 *
 * ``finish()`` reads whatever is still missing and returns the hex digest. Every step that touches the
 * hasher runs one at a time, in the order it was asked for.
 *
 * The hasher is hash-wasm's SHA-256 (WebAssembly): @noble/hashes, plain JavaScript, reached about a third of
 * its speed here (docs/web-client.md, "Measured"). WebCrypto is native but has no incremental digest.
 */
import { createSHA256, type IHasher } from 'hash-wasm'

/** What is read from disk at a time while catching up. */
const SLICE = 8 * 1024 * 1024
/** The largest gap a chunk waits for (read from disk before it); beyond it the chunk is let go. */
export const HOLD = 64 * 1024 * 1024

export class WholeFileHash {
  /** Bytes hashed so far: ``[0, position)``. */
  position = 0
  private readonly hasher: Promise<IHasher> = createSHA256()
  /** The end of the furthest chunk let go: the background catch-up reads up to here. */
  private target = 0
  private catchingUp = false
  private steps: Promise<void> = Promise.resolve()
  private failure: unknown = null
  onProgress: ((done: number) => void) | null = null

  /** ``hold``: the largest gap a chunk waits for (``HOLD``; smaller in tests). */
  constructor(
    private readonly file: Blob,
    private readonly hold: number = HOLD,
  ) {}

  /**
   * Hash ``bytes``, which are ``[start, start + bytes.byteLength)`` of the file, once what comes before them
   * is hashed. Resolves when they are hashed, skipped (already hashed) or let go (too far ahead); rejects if
   * reading the file failed.
   */
  add(start: number, bytes: ArrayBuffer): Promise<void> {
    const end = start + bytes.byteLength
    if (start - this.position > this.hold) {
      this.catchUp(end)
      return this.failure === null ? Promise.resolve() : Promise.reject(this.failure)
    }
    return this.step(async (hasher) => {
      await this.readFromDisk(hasher, start)
      this.take(hasher, start, bytes)
    })
  }

  /** The whole file's SHA-256 (lowercase hex), reading from disk what the chunks did not cover. */
  async finish(): Promise<string> {
    await this.step((hasher) => this.readFromDisk(hasher, this.file.size))
    return (await this.hasher).digest('hex')
  }

  /** Run ``work`` after every step asked for before it; a failed read fails this step and all later ones. */
  private step(work: (hasher: IHasher) => Promise<void>): Promise<void> {
    const run = this.steps.then(async () => {
      if (this.failure !== null) throw this.failure
      try {
        await work(await this.hasher)
      } catch (err) {
        this.failure = err
        throw err
      }
    })
    this.steps = run.catch(() => undefined)
    return run
  }

  /** Hash the part of ``bytes`` (which start at ``start``) that comes next, if any. */
  private take(hasher: IHasher, start: number, bytes: ArrayBuffer): void {
    const end = start + bytes.byteLength
    if (start > this.position || end <= this.position) return
    hasher.update(new Uint8Array(bytes, this.position - start))
    this.position = end
    this.onProgress?.(end)
  }

  /** Read ``[position, upTo)`` from disk and hash it, a slice at a time. */
  private async readFromDisk(hasher: IHasher, upTo: number): Promise<void> {
    while (this.position < upTo) await this.readSlice(hasher, upTo)
  }

  private async readSlice(hasher: IHasher, upTo: number): Promise<void> {
    const start = this.position
    const end = Math.min(this.file.size, upTo, start + SLICE)
    const bytes = await this.file.slice(start, end).arrayBuffer()
    if (bytes.byteLength < end - start) throw new Error('the file is shorter than it was')
    this.take(hasher, start, bytes)
  }

  /**
   * Read the file from disk in the background until ``[0, upTo)`` is hashed, one slice per step, so chunks
   * added meanwhile take their turn between slices.
   */
  private catchUp(upTo: number): void {
    this.target = Math.max(this.target, upTo)
    if (this.catchingUp) return
    this.catchingUp = true
    const next = (): void => {
      if (this.position >= this.target || this.failure !== null) {
        this.catchingUp = false
        return
      }
      this.step(async (hasher) => {
        if (this.position < this.target) await this.readSlice(hasher, this.target)
      }).then(next, () => {
        this.catchingUp = false
      })
    }
    next()
  }
}
