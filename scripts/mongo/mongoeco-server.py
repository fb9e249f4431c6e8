"""A MongoDB wire-protocol server for tests: PyPI `mongoeco` (in-memory engine) on a port.

Usage: python3.13 scripts/mongo/mongoeco-server.py PORT
Prints "listening on HOST:PORT" once it accepts connections, then serves until killed.
"""
import asyncio
import sys

from mongoeco.wire.proxy import AsyncMongoEcoProxyServer


async def main(port: int) -> None:
    server = AsyncMongoEcoProxyServer(host="127.0.0.1", port=port)
    address = await server.start()
    print(f"listening on {address.host}:{address.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 27017))
