// Drives web-client/src/whole-file.ts (bundled by the test with esbuild) over a real file, in the order an
// upload reads its chunks, and prints what it saw as JSON: the SHA-256 of each scenario and how many bytes
// WholeFileHash read from disk beyond the chunks it was handed.
//   node whole-file-hash.mjs BUNDLE FILE
import { readFileSync } from 'node:fs'

const [bundle, path] = process.argv.slice(2)
const { WholeFileHash } = await import(bundle)
const content = readFileSync(path)
const MiB = 1024 * 1024

/** A Blob over ``content`` that counts the bytes read through it; ``delay(start)`` slows chosen reads. */
function countingFile(delay = () => 0) {
  const file = {
    size: content.length,
    readBytes: 0,
    slice(start, end) {
      const stop = Math.min(end ?? content.length, content.length)
      return {
        arrayBuffer: async () => {
          await new Promise((resolve) => setTimeout(resolve, delay(start)))
          file.readBytes += stop - start
          const copy = new Uint8Array(stop - start)
          copy.set(content.subarray(start, stop))
          return copy.buffer
        },
      }
    },
  }
  return file
}

function chunks(from, sizes) {
  const ranges = []
  let start = from
  for (let i = 0; start < content.length; i += 1) {
    const end = Math.min(content.length, start + sizes[Math.min(i, sizes.length - 1)])
    ranges.push([start, end])
    start = end
  }
  return ranges
}

async function scenario(name, run, delay) {
  const file = countingFile(delay)
  const hash = new WholeFileHash(file)
  const handed = await run(hash)
  const sha256 = await hash.finish()
  return { name, sha256, disk_bytes: file.readBytes - handed }
}

const side = () => null
const results = []
const ranges = chunks(0, [2 * MiB, 4 * MiB, 8 * MiB])

// An upload from the start: each chunk read once, in order.
results.push(
  await scenario('in order', async (hash) => {
    let handed = 0
    for (const [s, e] of ranges) {
      await hash.read(s, e, side)
      handed += e - s
    }
    return handed
  }),
)

// The first chunk and the prefetched second are requested together; the second is read first.
results.push(
  await scenario(
    'second chunk read first',
    async (hash) => {
      let handed = 0
      const [[s0, e0], [s1, e1], ...rest] = ranges
      await Promise.all([hash.read(s1, e1, side), hash.read(s0, e0, side)])
      handed += e0 - s0 + e1 - s1
      for (const [s, e] of rest) {
        await hash.read(s, e, side)
        handed += e - s
      }
      return handed
    },
    (start) => (start === 0 ? 50 : 0),
  ),
)

// A chunk sent again after a lost connection or a 460: read again, hashed once.
results.push(
  await scenario('chunk read again', async (hash) => {
    let handed = 0
    for (const [s, e] of ranges) {
      await hash.read(s, e, side)
      await hash.read(s, e, side)
      handed += 2 * (e - s)
    }
    return handed
  }),
)

// A resumed upload starts at the gateway's offset: what came before is read from disk, once.
const offset = 5 * MiB + 12345
results.push(
  await scenario('resumed at an offset', async (hash) => {
    let handed = 0
    for (const [s, e] of chunks(offset, [2 * MiB])) {
      await hash.read(s, e, side)
      handed += e - s
    }
    return handed
  }),
)

// Nothing was read for an upload (the gateway had it all): the whole file from disk.
results.push(await scenario('no chunks', async () => 0))

// The bytes handed back are the chunk's, and ``beside`` saw them before they were hashed.
const hash = new WholeFileHash(countingFile())
const seen = await hash.read(0, 1000, (bytes) => bytes.byteLength)
results.push({ name: 'read returns', bytes: seen.bytes.byteLength, beside: seen.beside, equal: Buffer.from(seen.bytes).equals(content.subarray(0, 1000)) })

console.log(JSON.stringify(results))
