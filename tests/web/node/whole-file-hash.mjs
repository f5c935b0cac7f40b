// Drives web-client/src/whole-file.ts (bundled by the test with esbuild) over a real file, adding chunks as an
// upload sends them, and prints what it saw as JSON: the SHA-256 of each scenario, how many bytes
// WholeFileHash read from disk (the chunks' bytes are handed over, never read through the file), and whether
// each add resolved only once its bytes were hashed.
//   node whole-file-hash.mjs BUNDLE FILE
import { readFileSync } from 'node:fs'

const [bundle, path] = process.argv.slice(2)
const { WholeFileHash } = await import(bundle)
const content = readFileSync(path)
const MiB = 1024 * 1024

/** A Blob over ``content`` that counts the bytes read through it. */
function countingFile() {
  const file = {
    size: content.length,
    readBytes: 0,
    slice(start, end) {
      const stop = Math.min(end ?? content.length, content.length)
      return {
        arrayBuffer: async () => {
          await new Promise((resolve) => setTimeout(resolve, 0))
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

/** The bytes of ``[s, e)`` as the page holds a chunk it sent. */
const bytesOf = (s, e) => content.buffer.slice(content.byteOffset + s, content.byteOffset + e)

async function scenario(name, run, hold) {
  const file = countingFile()
  // ``run`` says whether every chunk was hashed by the time its add resolved.
  const hash = new WholeFileHash(file, hold)
  const inStep = await run(hash)
  const sha256 = await hash.finish()
  return { name, sha256, disk_bytes: file.readBytes, in_step: inStep }
}

/** Add each of ``ranges`` in turn; true if every add resolved with its bytes hashed. */
async function addAll(hash, ranges, times = 1) {
  let inStep = true
  for (const [s, e] of ranges) {
    for (let i = 0; i < times; i += 1) {
      await hash.add(s, bytesOf(s, e))
      inStep &&= hash.position >= e
    }
  }
  return inStep
}

const results = []
const ranges = chunks(0, [2 * MiB, 4 * MiB, 8 * MiB])

// An upload from the start: each chunk sent once, in order, hashed before the page may send the next.
results.push(await scenario('in order', (hash) => addAll(hash, ranges)))

// A chunk sent again after a lost connection or a 460: handed over twice, hashed once.
results.push(await scenario('chunk sent again', (hash) => addAll(hash, ranges, 2)))

// A resumed upload starts at the gateway's offset (within the hold): what came before is read from disk, once,
// before the first chunk is hashed; every chunk is hashed when its add resolves.
const offset = 5 * MiB + 12345
results.push(await scenario('resumed at an offset', (hash) => addAll(hash, chunks(offset, [2 * MiB]))))

// Resumed further than the hold (4 MiB here): the first chunk is let go (its add resolves at once, the upload
// goes on) and read from disk with what came before it; once the hash is back at the chunks, they are hashed
// from memory as they come.
const far = 20 * MiB + 777
results.push(
  await scenario(
    'resumed far',
    async (hash) => {
      const [first, ...rest] = chunks(far, [2 * MiB])
      await hash.add(first[0], bytesOf(...first))
      const letGo = hash.position < first[0]
      for (let i = 0; i < 10000 && hash.position < first[1]; i += 1) await new Promise((r) => setTimeout(r, 5))
      return letGo && (await addAll(hash, rest))
    },
    4 * MiB,
  ),
)

// Nothing was sent for an upload (the gateway had it all): the whole file from disk.
results.push(await scenario('no chunks', async () => null))

// A file that became shorter: the add fails, and so does everything after it.
{
  const file = countingFile()
  file.size = content.length + MiB
  const hash = new WholeFileHash(file)
  const failed = await hash.add(content.length + 10, new ArrayBuffer(10)).then(() => false, () => true)
  const finishFailed = await hash.finish().then(() => false, () => true)
  results.push({ name: 'file shrank', failed, finish_failed: finishFailed })
}

console.log(JSON.stringify(results))
