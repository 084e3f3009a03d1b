"""The ``segmote serve`` command: options, checks, model loading, and running uvicorn.

The socket is bound here before uvicorn starts, so ``--port 0`` picks a free
port, and the line ``SegMoTE server listening on http://HOST:PORT`` on
standard output shows scripts and tests where to connect.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from typing import Any, Optional, Sequence

from ..errors import InputError, ModelError
from .auth import is_loopback_host, read_token_file
from .settings import (
    DEFAULT_CACHE_MB,
    DEFAULT_HOST,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_PORT,
    DEFAULT_SESSION_IDLE_TIMEOUT_SECONDS,
    MEBIBYTE,
    ServerSettings,
)

logger = logging.getLogger(__name__)

LISTENING_MESSAGE = "SegMoTE server listening on {url}"

# Seconds an idle keep-alive connection stays open; clicks come seconds apart,
# and the client reconnects once when the server closed it first.
KEEP_ALIVE_SECONDS = 30


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _add_option(parser: argparse.ArgumentParser, *names: str, **options: Any) -> None:
    """Add an option unless a parent parser (the CLI's common options) already defines it."""
    if any(name in parser._option_string_actions for name in names):
        return
    parser.add_argument(*names, **options)


def add_serve_parser(subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """Register ``serve`` on the CLI's subparsers; the parsed arguments carry ``func=run_serve``."""
    parser = subparsers.add_parser(
        "serve",
        parents=list(parents),
        help="run the inference server for remote clients",
        description="Run the SegMoTE inference server: one model shared by all sessions, HTTP on HOST:PORT.",
    )
    _add_option(parser, "--host", default=DEFAULT_HOST,
                help=f"address to listen on (default {DEFAULT_HOST}); any non-loopback address needs --token-file")
    _add_option(parser, "--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free port)")
    _add_option(parser, "--device", default="auto", choices=("auto", "cpu", "cuda"), help="model device (default auto)")
    _add_option(parser, "--backbone", default="lite-medsam", help="backbone name (default lite-medsam)")
    _add_option(parser, "--checkpoint", default=None, help="weights file for backbones that are not shipped")
    _add_option(parser, "--adapters", default="default", help="SegMoTE adapters: default, none, or a .safetensors path")
    _add_option(parser, "--token-file", default=None,
                help="file whose first line is the bearer token clients must send (at least 16 characters)")
    _add_option(parser, "--max-sessions", type=_positive_int, default=DEFAULT_MAX_SESSIONS,
                help=f"sessions open at once; more get HTTP 503 (default {DEFAULT_MAX_SESSIONS})")
    _add_option(parser, "--session-idle-timeout", type=_positive_float, default=DEFAULT_SESSION_IDLE_TIMEOUT_SECONDS,
                help=f"seconds without requests after which a session expires (default {DEFAULT_SESSION_IDLE_TIMEOUT_SECONDS:g})")
    _add_option(parser, "--max-upload-mb", type=_positive_float, default=DEFAULT_MAX_UPLOAD_MB,
                help=f"largest upload in MiB; larger ones get HTTP 413 (default {DEFAULT_MAX_UPLOAD_MB:g})")
    _add_option(parser, "--cache-mb", type=_positive_float, default=DEFAULT_CACHE_MB,
                help=f"slice-feature cache per session in MiB, on the model's device (default {DEFAULT_CACHE_MB:g})")
    _add_option(parser, "--quiet", action="store_true", help="log warnings and errors only")
    _add_option(parser, "--debug", action="store_true", help="log every request and full tracebacks")
    parser.set_defaults(func=run_serve)
    return parser


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Build :class:`ServerSettings` from parsed options, reading the token file once.

    Raises:
        InputError: unreadable token file, or a non-loopback host without a token.
    """
    token = read_token_file(args.token_file) if args.token_file else None
    if token is None and not is_loopback_host(args.host):
        raise InputError(
            f"--host {args.host} accepts connections from other machines, so a token is required: "
            "pass --token-file FILE, or use --host 127.0.0.1"
        )
    return ServerSettings(
        max_sessions=args.max_sessions,
        session_idle_timeout_s=args.session_idle_timeout,
        max_upload_bytes=int(args.max_upload_mb * MEBIBYTE),
        cache_bytes=int(args.cache_mb * MEBIBYTE),
        token=token,
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind a listening TCP socket (IPv4 or IPv6, by the address given).

    Raises:
        InputError: the address is in use or cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio disables Nagle (TCP_NODELAY) only on sockets
    # whose protocol is IPPROTO_TCP, and with Nagle on, every keep-alive response waited
    # about 40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as error:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {error.strerror}; choose another --host or --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.INFO
    if getattr(args, "quiet", False):
        level = logging.WARNING
    if getattr(args, "debug", False):
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("segmote").setLevel(level)


def run_serve(args: argparse.Namespace) -> int:
    """Load the model and serve until interrupted; return the exit status (0, 1 or 2)."""
    import uvicorn

    _configure_logging(args)
    try:
        settings = settings_from_args(args)
        from ..engine.session import Engine

        engine = Engine.load(backbone=args.backbone, checkpoint=args.checkpoint, adapters=args.adapters, device=args.device)
        sock = bind_socket(args.host, args.port)
    except InputError as error:
        print(f"segmote serve: {error}", file=sys.stderr)
        return 2
    except ModelError as error:
        print(f"segmote serve: {error}", file=sys.stderr)
        return 1

    from .app import create_app

    app = create_app(engine, settings)
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    config = uvicorn.Config(
        app,
        log_config=None,  # keep the logging configured above
        access_log=bool(getattr(args, "debug", False)),
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    server = uvicorn.Server(config)
    print(LISTENING_MESSAGE.format(url=url), flush=True)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    logger.info("Server stopped")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``serve`` without the rest of the CLI (``python -m segmote.server``)."""
    parser = argparse.ArgumentParser(prog="python -m segmote.server")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_serve_parser(subparsers)
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)
