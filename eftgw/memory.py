"""What one upload may hold in memory, all of it: ``PER_UPLOAD`` (64 MiB), at every size up to 5 TiB.

An HTTPS upload's bytes sit in three places on their way to storage, and the three together stay within
``PER_UPLOAD``:

- the connection's receive buffers (:data:`RECEIVE_HELD`): aiohttp's body buffer, which stops reading the
  socket once it holds more than twice ``READ_BUFSIZE`` (the last piece fed crosses that mark), and asyncio's
  TLS layer, which keeps the ciphertext it received (it stops reading at 256 KiB, crossed by one read) in
  front of its own 256 KiB read buffer;
- the body pipeline (:mod:`eftgw.ingest`): the block it gathers while the previous block is hashed and
  written; each block ends with the chunk that reached the writer's ``block_size``, so it is shorter than
  ``block_size`` plus one chunk (:func:`pipeline_held`);
- the store's writer: what is left (:func:`writer_share`). The S3 writer keeps its parts in memory within it
  (:mod:`eftgw.storage.s3_writer`); the filesystem writer keeps nothing past the block it writes.

The figures come from the libraries' own limits, checked against the pinned versions: asyncio reads a socket
(``selector_events``) and decrypts TLS (``sslproto``) 256 KiB at a time, and TLS hands aiohttp everything
it could decrypt at once, so a chunk of body is at most its 256 KiB high-water mark plus one read.
"""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB

PER_UPLOAD = 64 * MiB  # the most one upload holds: receive buffers, the pipeline's blocks, the writer's parts

# What a connection's request body may hold before aiohttp stops reading the socket is twice this. aiohttp's
# 64 KiB made every 256 KiB the transport reads pause the socket and resume it once the body pipeline took
# it (two epoll changes and their Python per read); with 256 KiB a body streams without pausing while the
# pipeline keeps up. Measured: the event loop's user CPU per GiB of a one-PATCH upload falls from 0.68 to
# 0.57 s (medians of 6, load 9-11). The HTTPS server passes it to aiohttp (eftgw/server.py).
READ_BUFSIZE = 256 * KiB

TRANSPORT_READ = 256 * KiB  # asyncio's read of a socket (selector_events) and of TLS plaintext (sslproto)
TLS_INCOMING = 2 * TRANSPORT_READ  # ciphertext asyncio's TLS layer keeps: its 256 KiB mark plus one read
TLS_READ_BUFFER = TRANSPORT_READ  # the buffer asyncio's TLS layer reads the socket into, one per connection
LARGEST_CHUNK = TLS_INCOMING  # one piece of body aiohttp hands on: at most what TLS decrypts at once

# aiohttp pauses once its buffer is past 2 * READ_BUFSIZE (after the chunk that crossed it), and TLS keeps
# its ciphertext and read buffer meanwhile.
RECEIVE_HELD = 2 * READ_BUFSIZE + LARGEST_CHUNK + TLS_INCOMING + TLS_READ_BUFFER


def pipeline_held(block_size: int) -> int:
    """What an upload holds outside its writer: the block being written, the next one being gathered
    (each shorter than ``block_size`` plus one chunk), and the connection's receive buffers."""
    return 2 * (block_size + LARGEST_CHUNK) + RECEIVE_HELD


def writer_share(block_size: int) -> int:
    """The memory a writer whose pipeline gathers ``block_size`` blocks may keep: ``PER_UPLOAD`` less
    :func:`pipeline_held`."""
    return PER_UPLOAD - pipeline_held(block_size)
