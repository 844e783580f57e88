"""A loopback stand-in for Slack's Incoming Webhook endpoint.

`SlackReceiver()` listens on 127.0.0.1 (a free port), records the JSON body of every POST in
`bodies` and answers 200 "ok" like Slack does. Set `answer` to "error" to answer 500, or to "close"
to drop the connection without a response. `url` holds a secret-looking token, so tests can check
that it never leaks into logs or messages.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Answer = Literal["ok", "error", "close"]
WEBHOOK_PATH = "/services/T0LOOPBACK/B0LOOPBACK/receiver-secret-token-0123456789"
POLL_INTERVAL_S = 0.05


class SlackReceiver:
    """Records POSTed webhook payloads; answers as `answer` says."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.answer: Answer = "ok"
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(POLL_INTERVAL_S,), name="slack-receiver", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{WEBHOOK_PATH}"

    def texts(self) -> list[str]:
        """The fallback `text` of each received message, in arrival order."""
        return [body.get("text", "") for body in self.bodies]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _handler_for(receiver: SlackReceiver) -> type[BaseHTTPRequestHandler]:
    class WebhookHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            receiver.bodies.append(json.loads(self.rfile.read(length)))
            if receiver.answer == "close":
                self.close_connection = True
                return
            if receiver.answer == "error":
                self._reply(500, b"internal_error")
            else:
                self._reply(200, b"ok")

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Keep test output quiet."""

    return WebhookHandler
