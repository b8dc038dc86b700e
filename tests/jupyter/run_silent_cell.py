"""Start a silent cell in a Jupyter kernel and return once the kernel is busy.

Usage: run_silent_cell.py <base-url> <token> <kernel-id> <code>

The cell keeps running after this exits; it prints nothing, so Jupyter's
last_activity stays where it was while the kernel reports busy.
"""
import asyncio
import json
import sys
import uuid

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


async def main(base, token, kernel_id, code):
    url = base.replace("http://", "ws://", 1) + f"api/kernels/{kernel_id}/channels"
    ws = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {token}"}))
    msg_id = uuid.uuid4().hex
    await ws.write_message(json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                   "msg_type": "execute_request", "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }))
    while True:
        raw = await asyncio.wait_for(ws.read_message(), timeout=60)
        if raw is None:
            sys.exit("the kernel channel closed before the cell started")
        msg = json.loads(raw)
        if (msg.get("msg_type") == "status"
                and msg.get("parent_header", {}).get("msg_id") == msg_id
                and msg["content"].get("execution_state") == "busy"):
            break
    ws.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
