/**
 * Folders: a dropped or chosen folder becomes every file in it, at any depth, each named by its path relative
 * to the folder's parent (``logs/app/server.log``).
 *
 * The gateway keeps file names as flat names (a case is one folder, also over SFTP, and ``/`` never survives
 * its sanitiser), so the path goes into the name with each ``/`` written as ``%2F`` and each ``%`` inside a
 * folder's file path as ``%25``: ``logs%2Fapp%2Fserver.log``. That is plain ASCII, legal in file names on
 * Windows, macOS and Linux, never taken for a path by a download or an SFTP client, not a look-alike of ``/``,
 * and reversible (URL decoding gives the path back). Files chosen or dropped on their own keep their name.
 */

/** A file and the name it is uploaded under. */
export interface PickedFile {
  file: File
  name: string
}

/** What the gateway keeps of a name, in UTF-8 bytes. */
const MAX_NAME_BYTES = 255
const SEPARATOR = '%2F'

/** The upload name of a file at ``relativePath`` (``a/b/c.log``); a bare name comes back unchanged. */
export function uploadName(relativePath: string): string {
  const parts = relativePath
    .normalize('NFC')
    .split('/')
    .filter((part) => part !== '' && part !== '.')
  if (parts.length <= 1) return parts[0] ?? relativePath
  const encoded = parts.map((part) => part.replaceAll('%', '%25'))
  // A deep path would be cut at its end by the gateway (losing the file's own name): drop leading folders.
  let dropped = false
  while (encoded.length > 1 && byteLength((dropped ? '…' + SEPARATOR : '') + encoded.join(SEPARATOR)) > MAX_NAME_BYTES) {
    encoded.shift()
    dropped = true
  }
  return (dropped ? '…' + SEPARATOR : '') + encoded.join(SEPARATOR)
}

function byteLength(text: string): number {
  return new TextEncoder().encode(text).length
}

/** The files of a file input: with ``webkitdirectory`` each carries its path in ``webkitRelativePath``. */
export function pickedFromInput(files: Iterable<File>): PickedFile[] {
  return Array.from(files, (file) => ({ file, name: file.webkitRelativePath ? uploadName(file.webkitRelativePath) : file.name }))
}

/**
 * The files of a drop, folders walked to the end. The entries are taken while the drop event runs (the
 * browser empties the DataTransfer after it); reading them may take longer.
 */
export async function pickedFromDrop(data: DataTransfer): Promise<PickedFile[]> {
  const items = Array.from(data.items).filter((item) => item.kind === 'file')
  const taken = items.map((item) => ({ entry: item.webkitGetAsEntry?.() ?? null, file: item.getAsFile() }))
  if (taken.length === 0) return pickedFromInput(Array.from(data.files))
  const out: PickedFile[] = []
  for (const { entry, file } of taken) {
    if (entry?.isDirectory) {
      await walk(entry as FileSystemDirectoryEntry, out)
    } else if (file) {
      out.push({ file, name: file.name })
    }
  }
  return out
}

async function walk(directory: FileSystemDirectoryEntry, out: PickedFile[]): Promise<void> {
  const reader = directory.createReader()
  // readEntries answers in batches (100 in Chromium) until it answers an empty one.
  for (;;) {
    const batch = await new Promise<FileSystemEntry[]>((resolve, reject) => reader.readEntries(resolve, reject))
    if (batch.length === 0) return
    for (const entry of batch) {
      if (entry.isDirectory) {
        await walk(entry as FileSystemDirectoryEntry, out)
      } else if (entry.isFile) {
        const file = await new Promise<File>((resolve, reject) => (entry as FileSystemFileEntry).file(resolve, reject))
        out.push({ file, name: uploadName(entry.fullPath) })
      }
    }
  }
}
