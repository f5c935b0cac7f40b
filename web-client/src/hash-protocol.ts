/** Messages between the page and its hashing workers (see hash-worker.ts). */

export type WorkerRequest =
  | { id: number; op: 'chunk'; file: Blob; start: number; end: number }
  | { id: number; op: 'add'; file: Blob; stream: string; start: number; bytes: ArrayBuffer }
  | { id: number; op: 'fingerprint'; file: Blob; lastModified: number }
  | { id: number; op: 'file'; file: Blob; stream: string }
  | { id: number; op: 'forget'; stream: string }

export type WorkerReply =
  | { id: number; ok: true; op: 'chunk'; bytes: ArrayBuffer; sha256: string }
  | { id: number; ok: true; op: 'add'; position: number }
  | { id: number; ok: true; op: 'fingerprint'; fingerprint: string }
  | { id: number; ok: true; op: 'progress'; done: number }
  | { id: number; ok: true; op: 'file'; sha256: string }
  | { id: number; ok: true; op: 'forget' }
  | { id: number; ok: false; error: string }
