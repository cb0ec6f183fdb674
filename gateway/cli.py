"""Command line: ``siglip-gateway serve | classify | embed | score | info | make-checkpoint |
load | export-onnx``."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import grpc

from gateway.config import Settings

PROG = "siglip-gateway"
CLIENT_COMMANDS = ("classify", "embed", "score", "info")
# Tools off the request path (siglip_tools/): each module adds its own subcommand's options.
TOOLS = {"make-checkpoint": "siglip_tools.checkpoint", "load": "siglip_tools.load",
         "export-onnx": "siglip_tools.onnx_export"}
# Exit codes: 1 = the server or the service failed; 2 = the command line was wrong.
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in the command line or its files: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump), pointing to --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    try:
        return _dispatch(argv)
    except UsageError as exc:
        return _fail(command, str(exc), EXIT_USAGE)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        # Files named on the command line (tools read configs, checkpoints, output folders).
        return _fail(command, _describe_os_error(exc), EXIT_USAGE)
    except json.JSONDecodeError as exc:
        return _fail(command, f"invalid JSON: {exc}", EXIT_USAGE)
    except KeyboardInterrupt:
        return 130


def _dispatch(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command in TOOLS:
        return args.run_tool(args)
    return _client_command(args)


def _fail(command: str, message: str, code: int) -> int:
    where = f"{PROG} {command}" if command and not command.startswith("-") else PROG
    print(f"{where}: {message}", file=sys.stderr)
    return code


def _describe_os_error(exc: OSError) -> str:
    reason = {FileNotFoundError: "no such file or directory", IsADirectoryError: "is a directory",
              NotADirectoryError: "not a directory", PermissionError: "permission denied",
              }.get(type(exc), exc.strerror or str(exc))
    return f"{exc.filename}: {reason}" if exc.filename else reason


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in TOOLS.items():
        try:
            tool = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name not in ("siglip_tools", module_name):
                raise
            continue  # the gateway image ships the service without its tools
        t = sub.add_parser(name, help=tool.HELP, description=tool.DESCRIPTION)
        tool.add_arguments(t)
        t.set_defaults(run_tool=tool.run)

    s = sub.add_parser("serve", help="run the gRPC service (embedded Triton unless --triton-url)")
    s.add_argument("--model", action="append",
                   help="[NAME=]CHECKPOINT: a hub id or local checkpoint directory, optionally "
                        "named; repeat it to serve several models, the first the default "
                        "(SIGLIP_MODEL, comma-separated)")
    s.add_argument("--models-file",
                   help="the models and their limits in a TOML or JSON file "
                        "(SIGLIP_MODELS_FILE; README, 'Several models')")
    s.add_argument("--host", help="address to listen on (SIGLIP_HOST)")
    s.add_argument("--port", type=int, help="gRPC port (SIGLIP_PORT, default 50051)")
    s.add_argument("--metrics-port", type=int,
                   help="Prometheus port (SIGLIP_METRICS_PORT, default 9090; -1 disables)")
    s.add_argument("--http-port", type=int,
                   help="HTTP/JSON and OpenAI-compatible port (SIGLIP_HTTP_PORT, default 8080; "
                        "-1 disables)")
    s.add_argument("--triton-url", help="external Triton gRPC HOST:PORT (SIGLIP_TRITON_URL)")
    s.add_argument("--preprocess-mode", choices=("exact", "fast", "triton"),
                   help="image preprocessing (SIGLIP_PREPROCESS_MODE)")
    s.add_argument("--processes", type=int,
                   help="gateway processes sharing the port (SIGLIP_PROCESSES; default from "
                        "the CPUs)")

    def client(name: str, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_)
        c.add_argument("--server", default="localhost:50051", help="gateway HOST:PORT")
        c.add_argument("--token", help="bearer token, when the server requires one")
        c.add_argument("--timeout", type=_positive_float, default=60.0, help="seconds")
        c.add_argument("--json", action="store_true", help="print JSON")
        c.add_argument("--model", metavar="NAME",
                       help="the served model to ask: its name, checkpoint or the checkpoint's "
                            "last path part (default: the server's default model)")
        return c

    c = client("classify", "zero-shot classify images against labels")
    c.add_argument("images", nargs="+", help="image files")
    c.add_argument("--labels", required=True, help="comma-separated labels")
    c.add_argument("--template", action="append", default=[],
                   help='prompt template with one "{}" (default: "This is a photo of {}."); '
                        "repeat it for a prompt ensemble")
    c.add_argument("--templates-file", type=Path,
                   help="prompt ensemble: a file with one template per line")
    c.add_argument("--top-k", type=_non_negative_int, default=0,
                   help="labels to print per image (0 = all)")
    e = client("embed", "embed images and/or texts")
    e.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    e.add_argument("--text", action="append", default=[], help="text (repeatable)")
    e.add_argument("--no-normalize", action="store_true",
                   help="the towers' raw output (get_*_features), not L2-normalized")
    e.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="number format on the wire")
    sc = client("score", "image x text score matrix")
    sc.add_argument("images", nargs="+")
    sc.add_argument("--texts", required=True, help="'|'-separated texts")
    for texts_command in (c, e, sc):
        texts_command.add_argument(
            "--no-truncate", action="store_true",
            help="refuse texts longer than the model's text length instead of truncating them")
    client("info", "show every model the server serves (JSON; --model: the one at the top)")
    return p


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _read_images(paths: Sequence[str], flag: str) -> list[bytes]:
    """Reads every image before connecting, so a bad path is reported as the user typed it."""
    images = []
    for path in paths:
        try:
            images.append(Path(path).read_bytes())
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
            raise UsageError(f"{flag}: {_describe_os_error(exc)}") from None
        except OSError as exc:
            raise UsageError(f"{flag}: {path}: cannot read ({exc.strerror or exc})") from None
    return images


def _split(text: str, sep: str, flag: str) -> list[str]:
    items = [x.strip() for x in text.split(sep) if x.strip()]
    if not items:
        raise UsageError(f"{flag}: no {flag.lstrip('-')} given (separate them with {sep!r})")
    return items


def _templates(args: argparse.Namespace) -> list[str]:
    """--template (repeatable) and --templates-file lines, in that order; none: the server's
    default."""
    templates = list(args.template)
    if args.templates_file is not None:
        try:
            lines = args.templates_file.read_text(encoding="utf-8").splitlines()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
            raise UsageError(f"--templates-file: {_describe_os_error(exc)}") from None
        from_file = [line for line in lines if line.strip()]
        if not from_file:
            raise UsageError(f"--templates-file: {args.templates_file}: no templates in it")
        templates += from_file
    return templates


def _note_truncated(what: str, texts: Sequence[object]) -> None:
    for text in texts:
        shown = text if len(str(text)) <= 60 else f"{str(text)[:57]}..."
        print(f"note: {what} {shown!r} was truncated to the model's text length",
              file=sys.stderr)


def _serve(args: argparse.Namespace) -> int:
    from gateway.app import serve
    from gateway.observability.logs import configure_logging
    from gateway.observability.tracing import TracingConfig

    try:
        settings = Settings.from_env(
            model=",".join(args.model) if args.model else None, models_file=args.models_file,
            host=args.host, port=args.port, metrics_port=args.metrics_port,
            http_port=args.http_port,
            triton_url=args.triton_url, preprocess_mode=args.preprocess_mode,
            processes=args.processes)
        tracing = TracingConfig.from_env(os.environ)
    except ValueError as exc:
        return _fail("serve", str(exc), EXIT_USAGE)
    configure_logging(settings.log_level, settings.log_format)
    try:
        return asyncio.run(serve(settings, tracing))
    except Exception as exc:  # start-up failures end with one clear line
        logging.getLogger("gateway").error("start-up failed: %s", exc)
        return 1


def _client_command(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run_client(args))
    except grpc.aio.AioRpcError as exc:
        return _fail(args.command, f"{exc.code().name}: {exc.details()}", EXIT_FAILED)


async def _run_client(args: argparse.Namespace) -> int:
    from gateway.client import SiglipClient

    # Every local mistake is found before connecting.
    if args.command == "classify":
        images = _read_images(args.images, "images")
        labels = _split(args.labels, ",", "--labels")
        templates = _templates(args)
    elif args.command == "embed":
        if not args.image and not args.text:
            raise UsageError("nothing to embed: give --image FILE and/or --text TEXT")
        images = _read_images(args.image, "--image")
    elif args.command == "score":
        images = _read_images(args.images, "images")
        texts = _split(args.texts, "|", "--texts")
    async with SiglipClient(args.server, token=args.token) as client:
        truncate = False if args.command != "info" and args.no_truncate else None
        if args.command == "classify":
            reply = await client.classify_reply(
                images, labels, prompt_template=templates[0] if len(templates) == 1 else None,
                prompt_templates=templates if len(templates) > 1 else (), top_k=args.top_k,
                truncate=truncate, model=args.model, timeout=args.timeout)
            _note_truncated("label", [labels[i] for i in reply.truncated_labels])
            results = reply.results
            if args.json:
                print(json.dumps([[s.__dict__ for s in r] for r in results], indent=2))
            else:
                for path, scores in zip(args.images, results, strict=True):
                    print(path)
                    for s in scores:
                        print(f"  {s.probability:8.4f}  {s.logit:9.4f}  {s.label}")
        elif args.command == "embed":
            inputs = [*images, *args.text]
            embed_reply = await client.embed_reply(
                inputs, normalize=False if args.no_normalize else None, dtype=args.dtype,
                truncate=truncate, model=args.model, timeout=args.timeout)
            embeds = embed_reply.embeddings
            _note_truncated("text", [inputs[i] for i in embed_reply.truncated_inputs])
            names = args.image + [repr(t) for t in args.text]
            if args.json:
                print(json.dumps({n: e.tolist() for n, e in zip(names, embeds, strict=True)}))
            else:
                for name, vec in zip(names, embeds, strict=True):
                    head = " ".join(f"{v:+.4f}" for v in vec[:6])
                    print(f"{name}: dim {len(vec)} [{head} ...]")
        elif args.command == "score":
            result = await client.score(images, texts, truncate=truncate, model=args.model,
                                        timeout=args.timeout)
            _note_truncated("text", [texts[i] for i in result.truncated_texts])
            if args.json:
                print(json.dumps({"logits": result.logits.tolist(),
                                  "probabilities": result.probabilities.tolist()}))
            else:
                for path, row in zip(args.images, result.probabilities, strict=True):
                    pairs = zip(texts, row, strict=True)
                    print(path + ": " + "  ".join(f"{t}={p:.4f}" for t, p in pairs))
        else:
            info = await client.model_info(model=args.model, timeout=args.timeout)
            from google.protobuf import json_format

            print(json_format.MessageToJson(info, always_print_fields_with_no_presence=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
