// Drives ChunkSource and GatewayHttpStack of web-client/src/tus-adapter.ts (bundled by the test with esbuild)
// as tus-js-client does, with a hash pool and an XMLHttpRequest that record what they are asked, and prints
// it as JSON:
// - "grown": the ranges read and sent while the chunk size doubles after every chunk;
// - "lag": the order of events when the whole-file hash is slower than the network: each chunk's read (when
//   the pool is asked), its send (with the size of the body the request got, and whether that body is the
//   file's own range), its hand-over to the whole-file hash (with the first byte of the bytes the pool read)
//   and the moment that hash is done; "bodies": for each send, the body's size and its first and last byte.
//   node chunk-source.mjs BUNDLE
const [bundle] = process.argv.slice(2)
const MiB = 1024 * 1024
const events = []

// The request keeps the body it is given, and answers at once: the network is never the slower side here.
const bodies = []
globalThis.XMLHttpRequest = class {
  upload = {}
  status = 0
  open() {}
  setRequestHeader() {}
  getResponseHeader(name) {
    return name === 'Upload-Offset' ? '0' : null
  }
  send(body) {
    bodies.push(body)
    events.push(['send', body instanceof Blob ? body.size : -1, body instanceof Blob ? 'file-range' : 'copy'])
    setTimeout(() => {
      this.status = 204
      this.onload()
    }, 0)
  }
  abort() {}
}

const { ChunkSource, GatewayHttpStack } = await import(bundle)

function pool(hashMs) {
  const reads = []
  let chunkNo = 0
  return {
    reads,
    chunk(file, start, end, stream) {
      reads.push([start, end, stream])
      events.push(['read', start])
      const bytes = new Uint8Array(end - start)
      bytes[0] = chunkNo++ // the request tells chunks apart by their first byte
      return Promise.resolve({ bytes: bytes.buffer, sha256: 'x' })
    },
    add(file, stream, start, bytes) {
      const length = bytes.byteLength
      const first = new Uint8Array(bytes)[0]
      structuredClone(bytes, { transfer: [bytes] }) // posted to the worker: detached here
      events.push(['add', start, length, first])
      return new Promise((resolve) =>
        setTimeout(() => {
          events.push(['hashed', start])
          resolve()
        }, hashMs),
      )
    },
  }
}

async function upload(hashes, size, grow) {
  let chunkSize = 2 * MiB
  // Each MiB of the file holds its number, so a body shows which range of the file it is.
  const content = new Uint8Array(size)
  for (let i = 0; i < size; i += 1) content[i] = Math.floor(i / MiB) % 256
  const source = new ChunkSource(new Blob([content]), hashes, () => chunkSize, 'S')
  const stack = new GatewayHttpStack(60_000)
  const sent = []
  let offset = 0
  while (offset < source.size) {
    const { value, done } = await source.slice(offset, offset + chunkSize)
    events.push(['chunk', value.start, value.end])
    await stack.createRequest('PATCH', 'https://gateway.invalid/upload').send(value)
    sent.push([value.start, value.end])
    offset = value.end
    if (grow) chunkSize *= 2 // as transfer.ts grows the chunk after each fast one
    if (done) break
  }
  await source.hashed()
  return sent
}

const grownPool = pool(0)
const grownSent = await upload(grownPool, 20 * MiB, true)
const grown = { reads: grownPool.reads, sent: grownSent }

events.length = 0
bodies.length = 0
const lagPool = pool(30)
await upload(lagPool, 7 * 2 * MiB + 1000, false)
const sentBodies = []
for (const body of bodies) {
  const view = new Uint8Array(await body.arrayBuffer())
  sentBodies.push([view.length, view[0], view[view.length - 1]])
}
console.log(JSON.stringify({ grown, lag: { reads: lagPool.reads, events, bodies: sentBodies } }))
