"""`rlhf studio [RUNS_DIR]`: serve the studio page over the runs under RUNS_DIR.

    rlhf studio runs/                       # http://127.0.0.1:8090/
    rlhf studio runs/ --host 0.0.0.0        # prints http://HOST:8090/?token=... (a token is required)
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from typing import Optional

from rlhf.config import opt, parse
from rlhf.errors import UserError


@dataclass
class StudioConfig:
    """A local web page to watch, debug and compare the runs under RUNS_DIR."""

    command = "studio"
    runs_dir: str = opt("runs", "folder holding run folders (found by their run.json), searched 6 levels deep",
                        positional=True)
    host: str = opt("127.0.0.1", "address to bind; any other than this machine's requires a token")
    port: int = opt(8090, "port (0 picks a free one and prints it)")
    token: Optional[str] = opt(None, "token the page needs (default: none on 127.0.0.1, a random one elsewhere); "
                                     "better from the RLHF_STUDIO_TOKEN environment variable")
    threads: int = opt(8, "worker threads")
    stale_after: float = opt(300.0, "a running run with no heartbeat or write for this many seconds is 'stopped'")

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise UserError(f"port must be 0..65535, got {self.port}")
        if self.threads < 1:
            raise UserError("threads must be at least 1")
        if self.stale_after <= 0:
            raise UserError("stale_after must be positive")
        if not os.path.isdir(self.runs_dir):
            raise UserError(f"{self.runs_dir}: no such folder (give the folder that holds your runs)")


def make_server(cfg: StudioConfig, player=None):
    """(waitress server bound but not serving, the token or None, the Flask app)."""
    from rlhf.studio.app import create_app
    from rlhf.web import is_loopback, make_waitress

    local = is_loopback(cfg.host)
    token = cfg.token or os.environ.get("RLHF_STUDIO_TOKEN") or (None if local else secrets.token_urlsafe(24))
    app = create_app(cfg.runs_dir, token=token, local=local, stale_after=cfg.stale_after, player=player)
    server = make_waitress(app, host=cfg.host, port=cfg.port, threads=cfg.threads, ident="rlhf-studio",
                           stream=True)
    return server, token, app


def main(argv: list[str]) -> int:
    import logging

    cfg = parse(StudioConfig, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    server, token, app = make_server(cfg)
    shown = socket.gethostname() if cfg.host in ("0.0.0.0", "::", "") else cfg.host
    url = f"http://{shown}:{server.effective_port}/" + (f"?token={token}" if token else "")
    print(f"rlhf: studio over {os.path.abspath(cfg.runs_dir)} at {url} (Ctrl-C stops)", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        player = app.extensions["studio"]["player"]
        if player is not None:
            player.close()
    return 0
