// Uploads one file with tus-js-client, in the protocol mode given, and prints one JSON line per event on
// stdout so that a test can follow it (and kill it midway):
//   {"event":"url","url":...}                 the upload URL is known (and stored for resuming)
//   {"event":"resumed","url":...}             a previous upload was found in the URL store and is resumed
//   {"event":"acknowledged","offset":N}       the gateway acknowledged N bytes (a chunk's response)
//   {"event":"success","url":...,"interop":...,"complete":...}  the upload is complete (and the last
//                                             response's Upload-Draft-Interop-Version and Upload-Complete)
// Errors go to stderr and make the exit status 1.
//
// Usage: node tus-upload.mjs <endpoint> <file> <protocol> <token> <url-store.json> [chunk-size]
// A second run with the same file and URL store resumes the upload the first one left.
import * as fs from 'node:fs'
import { FileUrlStorage, Upload } from 'tus-js-client'

const [endpoint, file, protocol, token, store, chunkSize] = process.argv.slice(2)
const emit = (event) => process.stdout.write(`${JSON.stringify(event)}\n`)

const upload = new Upload(fs.createReadStream(file), {
  endpoint,
  protocol,
  headers: { Authorization: `Bearer ${token}` },
  metadata: { filename: 'tus-js-client.bin', filetype: 'application/octet-stream' },
  chunkSize: Number(chunkSize || 1024 * 1024),
  retryDelays: [],
  urlStorage: new FileUrlStorage(store),
  removeFingerprintOnSuccess: false,
  onUploadUrlAvailable: () => emit({ event: 'url', url: upload.url }),
  onChunkComplete: (_size, accepted) => emit({ event: 'acknowledged', offset: accepted }),
  onSuccess: ({ lastResponse }) =>
    emit({
      event: 'success',
      url: upload.url,
      interop: lastResponse.getHeader('Upload-Draft-Interop-Version'),
      complete: lastResponse.getHeader('Upload-Complete'),
    }),
  onError: (error) => {
    process.stderr.write(`${error}\n`)
    process.exit(1)
  },
})

const previous = await upload.findPreviousUploads()
if (previous.length > 0) {
  upload.resumeFromPreviousUpload(previous[0])
  emit({ event: 'resumed', url: previous[0].uploadUrl })
}
upload.start()
