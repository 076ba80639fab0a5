"""A fake cache node that speaks valid RESP but answers nonsense, in its own OS process.

Every command it receives gets the same fixed reply (``+OK``, a bulk string, an array,
``:1``...), or, in the streaming modes, the first command gets a reply header announcing
something huge (a 2 GB bulk string, a 2-billion-element array) followed by an endless
stream of its body, as fast as the socket takes it.

Run it as a script (it prints its port on the first line of stdout)::

    python tests/garbage_node.py --reply ':1\\r\\n'
    python tests/garbage_node.py --stream-bulk 2000000000
    python tests/garbage_node.py --stream-array 2000000000

or from a test with :func:`garbage_node`, which starts it and yields a ``NodeSpec``.
"""

from __future__ import annotations

import argparse
import codecs
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import anyio
import hiredis
from anyio.abc import SocketStream

from cachering.node import NodeSpec

_CHUNK = 65536


async def _serve_fixed(stream: SocketStream, reply: bytes) -> None:
    reader = hiredis.Reader()
    while True:
        reader.feed(await stream.receive())
        out = []
        while reader.gets() is not False:
            out.append(reply)
        if out:
            await stream.send(b"".join(out))


async def _serve_stream(stream: SocketStream, header: bytes, body: bytes) -> None:
    await stream.receive()
    await stream.send(header)
    chunk = body * max(1, _CHUNK // len(body))
    while True:
        await stream.send(chunk)


async def _main(args: argparse.Namespace) -> None:
    if args.stream_bulk is not None:
        header, body = b"$%d\r\n" % args.stream_bulk, b"x"
    elif args.stream_array is not None:
        header, body = b"*%d\r\n" % args.stream_array, b":1\r\n"
    else:
        header, body = b"", codecs.escape_decode(args.reply.encode())[0]  # type: ignore[attr-defined]

    async def handle(stream: SocketStream) -> None:
        with suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            async with stream:
                if header:
                    await _serve_stream(stream, header, body)
                else:
                    await _serve_fixed(stream, body)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    print(port, flush=True)
    await listener.serve(handle)


@contextmanager
def garbage_node(node_id: str, *options: str) -> Iterator[NodeSpec]:
    """Start a garbage node process (``options`` as on its command line); yield its spec."""
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *options],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"garbage node did not start: {line!r}")
        yield NodeSpec(id=node_id, host="127.0.0.1", port=int(line))
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reply", default="+OK\\r\\n", help="fixed reply (escapes allowed)")
    parser.add_argument("--stream-bulk", type=int, help="announce a bulk string this long")
    parser.add_argument("--stream-array", type=int, help="announce an array this long")
    anyio.run(_main, parser.parse_args())
