"""Command line: ``siglip-gateway serve | classify | embed | score | info | make-checkpoint |
load | export-onnx``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

import grpc

from gateway.config import Settings

CLIENT_COMMANDS = ("classify", "embed", "score", "info")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Tools with their own argument parsers.
    if argv and argv[0] == "make-checkpoint":
        from gateway.checkpoint import main as make_checkpoint

        return make_checkpoint(argv[1:])
    if argv and argv[0] == "load":
        from gateway.loadgen import main as load

        return load(argv[1:])
    if argv and argv[0] == "export-onnx":
        from gateway.onnx_export import main as export_onnx

        return export_onnx(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return _client_command(args)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="siglip-gateway", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("make-checkpoint", help="write a random checkpoint (see --help)")
    sub.add_parser("load", help="load-test a running server, ghz-style (see --help)")
    sub.add_parser("export-onnx", help="export the towers as an ONNX Runtime/TensorRT Triton "
                   "model repository (see --help)")

    s = sub.add_parser("serve", help="run the gRPC service (embedded Triton unless --triton-url)")
    s.add_argument("--model", help="hub id or local checkpoint directory (SIGLIP_MODEL)")
    s.add_argument("--host", help="address to listen on (SIGLIP_HOST)")
    s.add_argument("--port", type=int, help="gRPC port (SIGLIP_PORT, default 50051)")
    s.add_argument("--metrics-port", type=int,
                   help="Prometheus port (SIGLIP_METRICS_PORT, default 9090; -1 disables)")
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
        c.add_argument("--timeout", type=float, default=60.0, help="seconds")
        c.add_argument("--json", action="store_true", help="print JSON")
        return c

    c = client("classify", "zero-shot classify images against labels")
    c.add_argument("images", nargs="+", help="image files")
    c.add_argument("--labels", required=True, help="comma-separated labels")
    c.add_argument("--template",
                   help='prompt template with one "{}" (default: "This is a photo of {}.")')
    c.add_argument("--top-k", type=int, default=0)
    e = client("embed", "embed images and/or texts")
    e.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    e.add_argument("--text", action="append", default=[], help="text (repeatable)")
    sc = client("score", "image x text score matrix")
    sc.add_argument("images", nargs="+")
    sc.add_argument("--texts", required=True, help="'|'-separated texts")
    client("info", "show what the server serves")
    return p


def _serve(args: argparse.Namespace) -> int:
    from gateway.app import serve

    try:
        settings = Settings.from_env(
            model=args.model, host=args.host, port=args.port, metrics_port=args.metrics_port,
            triton_url=args.triton_url, preprocess_mode=args.preprocess_mode,
            processes=args.processes)
    except ValueError as exc:
        print(f"siglip-gateway: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(serve(settings))
    except Exception as exc:  # start-up failures end with one clear line
        logging.getLogger("gateway").error("start-up failed: %s", exc)
        return 1


def _client_command(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run_client(args))
    except grpc.aio.AioRpcError as exc:
        print(f"siglip-gateway {args.command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


async def _run_client(args: argparse.Namespace) -> int:
    from gateway.client import SiglipClient

    async with SiglipClient(args.server, token=args.token) as client:
        if args.command == "classify":
            labels = [x.strip() for x in args.labels.split(",") if x.strip()]
            results = await client.classify(args.images, labels, prompt_template=args.template,
                                            top_k=args.top_k, timeout=args.timeout)
            if args.json:
                print(json.dumps([[s.__dict__ for s in r] for r in results], indent=2))
            else:
                for path, scores in zip(args.images, results, strict=True):
                    print(path)
                    for s in scores:
                        print(f"  {s.probability:8.4f}  {s.logit:9.4f}  {s.label}")
        elif args.command == "embed":
            from pathlib import Path

            inputs = [Path(p) for p in args.image] + list(args.text)
            embeds = await client.embed(inputs, timeout=args.timeout)
            names = args.image + [repr(t) for t in args.text]
            if args.json:
                print(json.dumps({n: e.tolist() for n, e in zip(names, embeds, strict=True)}))
            else:
                for name, vec in zip(names, embeds, strict=True):
                    head = " ".join(f"{v:+.4f}" for v in vec[:6])
                    print(f"{name}: dim {len(vec)} [{head} ...]")
        elif args.command == "score":
            texts = [t for t in args.texts.split("|") if t]
            result = await client.score(args.images, texts, timeout=args.timeout)
            if args.json:
                print(json.dumps({"logits": result.logits.tolist(),
                                  "probabilities": result.probabilities.tolist()}))
            else:
                for path, row in zip(args.images, result.probabilities, strict=True):
                    pairs = zip(texts, row, strict=True)
                    print(path + ": " + "  ".join(f"{t}={p:.4f}" for t, p in pairs))
        else:
            info = await client.model_info(timeout=args.timeout)
            from google.protobuf import json_format

            print(json_format.MessageToJson(info, always_print_fields_with_no_presence=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
