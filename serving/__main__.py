"""`python -m serving`: the recommendation service on KF_BIND_HOST:KF_SERVE_PORT (settings: KF_*);
with --workers N (KF_SERVE_WORKERS) above 1, N service processes sharing the port."""

import argparse
import logging
import sys

import uvloop
from aiohttp import web

from schemas.config import Settings
from serving.app import init_app
from serving.workers import Supervisor


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--port", type=int, default=settings.serving.serve_port, help="listen port (KF_SERVE_PORT)")
    parser.add_argument(
        "--workers", type=int, default=settings.serving.serve_workers, help="service processes (KF_SERVE_WORKERS)"
    )
    parser.add_argument(
        "--reuse-port", action="store_true", help="bind with SO_REUSEPORT (what the workers of --workers do)"
    )
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if arguments.workers > 1:
        return Supervisor(settings, arguments.port, arguments.workers).run()
    # uvloop: the event loop's own work (HTTP, Redis replies) shares two cores with the models
    loop = uvloop.new_event_loop()
    web.run_app(
        init_app(settings),
        host=settings.stack.bind_host,
        port=arguments.port,
        access_log=None,
        loop=loop,
        reuse_port=arguments.reuse_port or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
