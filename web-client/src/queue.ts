/**
 * Which transfers upload now: at most ``parallel`` at once (default 3, never more than 6, the browser's
 * connection limit per origin over HTTP/1.1); the rest wait in order. Resumed and retried transfers go first.
 */
import type { Transfer } from './transfer'

export const DEFAULT_PARALLEL = 3
export const MAX_PARALLEL = 6

export class TransferQueue {
  readonly transfers: Transfer[] = []
  private waiting: Transfer[] = []
  readonly parallel: number

  constructor(parallel: number = DEFAULT_PARALLEL) {
    this.parallel = Math.max(1, Math.min(MAX_PARALLEL, Math.floor(parallel)))
  }

  add(transfer: Transfer): void {
    this.transfers.push(transfer)
  }

  enqueue(transfer: Transfer, first = false): void {
    transfer.state = 'queued'
    transfer.message = ''
    this.waiting = this.waiting.filter((t) => t !== transfer)
    if (first) this.waiting.unshift(transfer)
    else this.waiting.push(transfer)
    this.pump()
  }

  /** Start waiting transfers while slots are free. */
  pump(): void {
    this.waiting = this.waiting.filter((t) => t.state === 'queued')
    while (this.waiting.length > 0 && this.running() < this.parallel) {
      const next = this.waiting.shift()
      if (next) next.start()
    }
  }

  remove(transfer: Transfer): void {
    this.waiting = this.waiting.filter((t) => t !== transfer)
    const index = this.transfers.indexOf(transfer)
    if (index >= 0) this.transfers.splice(index, 1)
  }

  running(): number {
    return this.transfers.filter((t) => t.running).length
  }

  /** Transfers that would lose their place if the page closed now. */
  busy(): boolean {
    return this.transfers.some((t) => ['checking', 'queued', 'uploading', 'retrying', 'verifying'].includes(t.state))
  }

  find(predicate: (transfer: Transfer) => boolean): Transfer | undefined {
    return this.transfers.find(predicate)
  }
}
