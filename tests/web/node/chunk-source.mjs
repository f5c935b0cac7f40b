// Drives ChunkSource of web-client/src/tus-adapter.ts (bundled by the test with esbuild) as tus-js-client does,
// with a hash pool that counts the ranges it is asked to read, and prints them as JSON.
//   node chunk-source.mjs BUNDLE
const [bundle] = process.argv.slice(2)
const { ChunkSource } = await import(bundle)
const MiB = 1024 * 1024

const reads = []
const pool = {
  chunk(file, start, end, stream) {
    reads.push([start, end, stream])
    return Promise.resolve({ bytes: new ArrayBuffer(end - start), sha256: 'x' })
  },
}
let chunkSize = 2 * MiB
const source = new ChunkSource(new Blob([new Uint8Array(20 * MiB)]), pool, () => chunkSize, 'S')
const sent = []
let offset = 0
while (offset < source.size) {
  const { value, done } = await source.slice(offset, offset + chunkSize)
  await value.prepare()
  sent.push([value.start, value.end])
  offset = value.end
  chunkSize *= 2 // as transfer.ts grows the chunk after each fast one
  if (done) break
}
console.log(JSON.stringify({ reads, sent }))
