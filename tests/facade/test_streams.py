"""Shutdown ends the responses that last as long as their client stays (a status stream, the live-events
WebSocket), so a stopping server does not wait aiohttp's 60 s shutdown timeout for them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
from queue_fakes import APP, FakeGenerator, serve

from server.settings import load_settings


async def test_shutdown_ends_open_streams_at_once(tmp_path: Path) -> None:
    settings = load_settings({}, data_dir=str(tmp_path))
    test_client = serve(settings, FakeGenerator(settings, hold=True))
    await test_client.start_server()
    base = str(test_client.make_url(""))
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/queue/{APP}", json={"prompt": "held"}) as response:
            request_id = (await response.json())["request_id"]
        stream = await http.get(f"{base}/queue/{APP}/requests/{request_id}/status/stream")
        await stream.content.readline()  # the stream is open: its first event came
        ws = await http.ws_connect(f"{base}/ws")
        await ws.send_json({"action": "subscribe", "request_ids": [request_id]})
        await ws.receive_json()
        started = time.monotonic()
        await test_client.close()  # the server's shutdown
        elapsed_s = time.monotonic() - started
        assert elapsed_s < 15, f"shutdown waited {elapsed_s:.1f} s for open streams"
        async with asyncio.timeout(5):
            while (await ws.receive()).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                pass  # the events sent before it closed
            await stream.content.read()  # a stream cut mid-chunk would raise ClientPayloadError here
            assert stream.content.at_eof()
        stream.close()
