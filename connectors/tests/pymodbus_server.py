#!/usr/bin/env python3
"""A real Modbus TCP device for connectors/tests/modbus.rs: pymodbus's server with known registers.

Usage: pymodbus_server.py PORT
Listens on 127.0.0.1:PORT as unit 1 and prints "ready" once it accepts connections. Runs until
killed. The values below are mirrored in the Rust test (`pymodbus_is_read_and_written`).
"""

import asyncio
import logging
import sys

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import ModbusTcpServer

# Holding registers from address 0:
#   0     u16 1234
#   1     i16 -5
#   2-3   u32 100000, big word order
#   4-5   f32 21.5, big word order
#   6-7   i32 -70000, little word order (low word first)
# Nothing at 100: reading it answers exception 0x02.
HOLDING = [1234, 0xFFFB, 0x0001, 0x86A0, 0x41AC, 0x0000, 0xEE90, 0xFFFE]
# Input register 0: 655 (25.5 with scale 0.1 and offset -40).
INPUT = [655]
COILS = [True, False, True]
DISCRETE = [False, True]


async def main(port: int) -> None:
    # The data block API is deprecated in favour of SimDevice (pymodbus 4); it is still the
    # documented 3.x way, and its warning is noise here.
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    # ModbusSequentialDataBlock's address is 1-based: 1 is protocol address 0.
    device = ModbusDeviceContext(
        hr=ModbusSequentialDataBlock(1, HOLDING),
        ir=ModbusSequentialDataBlock(1, INPUT),
        co=ModbusSequentialDataBlock(1, COILS),
        di=ModbusSequentialDataBlock(1, DISCRETE),
    )
    context = ModbusServerContext(devices={1: device}, single=False)
    server = ModbusTcpServer(context, address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: pymodbus_server.py PORT")
    asyncio.run(main(int(sys.argv[1])))
