"""A gateway node serving SFTP only, as a separate process (for tests that kill -9 it).

Usage: ``python tests/sftp/sftp_gateway_process.py DATA_DIR PORT``; prints ``ready`` once listening, stops
cleanly on SIGTERM. The same core and SFTP service as ``eftgw serve``, without the HTTP site.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from eftgw.config import Settings
from eftgw.gateway import Gateway
from eftgw.sftp import SftpService


async def main(data_dir: Path, port: int) -> None:
    gateway = Gateway.build(Settings(data_dir=data_dir, sftp_port=port, host="127.0.0.1"))
    await gateway.start()
    service = SftpService(gateway, check_interval=0.5, failure_delay=0.2)
    await service.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await service.stop()
    await gateway.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
