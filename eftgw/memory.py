"""What one upload may hold in memory, all of it: ``PER_UPLOAD`` (64 MiB), at every size up to 5 TiB.

Over either transport the store's writer keeps what the transport and the body pipeline leave of it
(:func:`writer_share`, chosen per upload from its transport): 53.25 MiB on S3 for HTTPS, 33 MiB less
2 KiB for SFTP, which holds more in front of the pipeline.

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
  (:mod:`eftgw.storage.s3_writer`); the filesystem writer keeps under 4 KiB between writes (the partial
  disk unit its next direct write completes); the aligned buffers its writes copy into are the node's
  (:data:`eftgw.storage.filesystem.BUFFERS`: one of 2 MiB per write under way, a few kept free).

A body with a ``Content-Length`` is received by the connection straight into the pipeline's blocks
(:mod:`eftgw.http.receive`): aiohttp's buffer then holds only what arrived before the switch (within the
bound above, and taken into the first block), each block is at most ``block_size``, and the connection is not
read while both blocks are busy. The bounds below, written for bodies read as aiohttp's chunks, hold for it
too.

The figures come from the libraries' own limits, checked against the pinned versions: asyncio reads a socket
(``selector_events``) and decrypts TLS (``sslproto``) 256 KiB at a time, and TLS hands aiohttp everything
it could decrypt at once, so a chunk of body is at most its 256 KiB high-water mark plus one read.

An SFTP upload's bytes sit in four places in front of the writer (:func:`pipeline_held`, 31 MiB and
2 KiB with S3's 2 MiB blocks for SFTP):

- what its connection received and has not processed (:data:`SFTP_RECEIVE_HELD`): the SFTP session's
  receive buffer, which stops the connection reading its socket once it holds ``SFTP_WINDOW``
  (:class:`eftgw.sftp.flow.ReceiveMemory`, per connection; the channel packet that crossed the mark is in
  it), what the connection had read and not parsed then (one socket read of ``SFTP_SOCKET_READ`` and the
  start of a packet from the read before), all of which it still delivers, and the packet being decrypted;
- the request being processed (asyncssh takes one at a time): a write of up to ``SFTP_REQUEST`` that waits
  for room in the handle's write buffer;
- the handle's write buffer (:class:`eftgw.sftp.buffer.BufferedUpload`): ``SFTP_WRITE_BUFFER`` queued, and
  the write at its head whose first bytes went into a piece (the queue keeps a view of the request);
- the body pipeline: as for HTTPS, with pieces of at most ``SFTP_PIECE`` as chunks.
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


# SFTP. The session's limits (eftgw.sftp.server and eftgw.sftp.fs take them from here; the two of
# eftgw.sftp.asyncssh_compat and asyncssh's own are checked against theirs by tests/test_memory.py).
SFTP_WINDOW = 8 * MiB  # the SSH channel window, and what a connection holds before it stops reading
SFTP_CHANNEL_PACKET = 256 * KiB  # the largest SSH channel packet a client may send
SFTP_SOCKET_READ = 256 * KiB  # a server connection's socket read (asyncssh_compat.SOCKET_READ)
SFTP_REQUEST = 4 * MiB + KiB  # the largest SFTP request asyncssh takes (MAX_SFTP_PACKET_LEN)
SFTP_WRITE_BUFFER = 8 * MiB  # what one handle's write buffer queues (SftpContext.buffer_capacity)
SFTP_PIECE = 1 * MiB  # the write buffer hands the pipeline its bytes in pieces of at most this

# The session's receive buffer up to the pause mark plus the packet that crossed it, one socket read and a
# packet begun in the read before, and one packet being decrypted (its ciphertext and plaintext).
SFTP_RECEIVE_HELD = SFTP_WINDOW + SFTP_SOCKET_READ + 3 * SFTP_CHANNEL_PACKET
# The write buffer's queue, the taken bytes of the request at its head, and the request waiting for room.
SFTP_HANDLE_HELD = SFTP_WRITE_BUFFER + 2 * SFTP_REQUEST

HTTP = "http"
SFTP = "sftp"


def front_held(via: str) -> int:
    """What an upload over transport ``via`` holds in front of its body pipeline."""
    if via == SFTP:
        return SFTP_RECEIVE_HELD + SFTP_HANDLE_HELD
    return RECEIVE_HELD


def largest_chunk(via: str) -> int:
    """The largest piece of body the pipeline gets from transport ``via``."""
    return SFTP_PIECE if via == SFTP else LARGEST_CHUNK


def pipeline_held(block_size: int, via: str = HTTP) -> int:
    """What an upload over ``via`` holds outside its writer: the block being written, the next one being
    gathered (each shorter than ``block_size`` plus one chunk), and what the transport holds in front."""
    return 2 * (block_size + largest_chunk(via)) + front_held(via)


def writer_share(block_size: int, via: str = HTTP) -> int:
    """The memory a writer whose pipeline gathers ``block_size`` blocks of an upload over ``via`` may keep:
    ``PER_UPLOAD`` less :func:`pipeline_held`."""
    return PER_UPLOAD - pipeline_held(block_size, via)
