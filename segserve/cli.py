"""`segserve` command line: export, build-repo, triton, orchestrator, serve, segment."""
from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

import numpy as np

DEFAULT_ARTIFACTS = Path("artifacts")
DEFAULT_REPOSITORY = Path("model_repository/embedded")


def _floats(text: str, count: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if len(values) not in count:
        raise argparse.ArgumentTypeError(f"{what} takes {' or '.join(map(str, count))} numbers, got {text!r}")
    return values


def _pairs(items: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        family, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{what} takes FAMILY=VALUE, got {item!r}")
        pairs[family] = value
    return pairs


def cmd_export(args) -> None:
    from segserve.export.families import export_families
    from segserve.export.manifest import Manifest

    checkpoints = {k: Path(v) for k, v in _pairs(args.checkpoint, "--checkpoint").items()}
    export_families(args.families.split(","), args.out, checkpoints, _pairs(args.expect_sha256, "--expect-sha256"),
                    args.random_size, args.force)
    for record in Manifest(args.out).records.values():
        weights = "RANDOM weights" if record.random_weights else "checkpoint weights"
        print(f"{record.name}: {args.out / record.file} ({weights}; parity max abs error "
              f"{record.parity['max_abs_error']:.2e})")


def cmd_build_repo(args) -> None:
    from segserve.repository.builder import build_repository

    names = build_repository(args.artifacts, args.out, args.target, args.graph_backend, args.session_ttl_s,
                             args.max_sessions)
    print(f"{args.target} repository at {args.out}: {', '.join(names)}")


def _wait_forever(stop_callbacks) -> None:
    event = threading.Event()
    try:
        event.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for stop in stop_callbacks:
            stop()


def cmd_triton(args) -> None:
    from segserve.runtime.triton import EmbeddedTriton

    triton = EmbeddedTriton(args.repository, args.workspace, args.grpc_port, args.http_port, args.metrics_port).start()
    print(f"Triton ready: gRPC {triton.grpc_url}, metrics {triton.metrics_url} (Ctrl-C stops)", flush=True)
    _wait_forever([triton.stop])


def cmd_orchestrator(args) -> None:
    from segserve.orchestrator.server import serve_forever
    from segserve.orchestrator.settings import Settings

    serve_forever(Settings.from_env(triton_url=args.triton_url, grpc_port=args.port, metrics_port=args.metrics_port))


def cmd_serve(args) -> None:
    from segserve.orchestrator.settings import Settings
    from segserve.runtime.stack import start_stack

    stack = start_stack(args.repository, args.workspace, Settings.from_env(), ports={
        "grpc": args.port, "metrics": args.metrics_port, "triton_grpc": args.triton_grpc_port,
        "triton_http": args.triton_http_port, "triton_metrics": args.triton_metrics_port})
    print(f"segserve ready: gRPC {stack.address}, metrics :{args.metrics_port}, "
          f"Triton {stack.triton.grpc_url} (Ctrl-C stops)", flush=True)
    _wait_forever([stack.stop])


def cmd_segment(args) -> None:
    import grpc
    from PIL import Image

    from segserve.client import SegservClient
    from segserve.common.image import decode_image
    from segserve.common.overlay import overlay

    data = args.image.read_bytes()
    if not args.point and not args.box:
        sys.exit("segment: give at least one --point or --box")
    with SegservClient(args.server) as client:
        try:
            result = client.mask_from_prompt(image=data, points=args.point, boxes=args.box, multimask=args.multimask)
        except grpc.RpcError as exc:
            sys.exit(f"segment failed: {exc.code().name}: {exc.details()}")
    best = [obj.best for obj in result.objects]
    if args.out:
        union = np.any([m.mask for m in best], axis=0)
        Image.fromarray(union.astype(np.uint8) * 255).save(args.out)
        print(f"mask: {args.out}")
    if args.overlay:
        labels = [f"#{i} score {m.score:.2f}" for i, m in enumerate(best)]
        overlay(decode_image(data), [m.mask for m in best], labels, args.point, args.box).save(args.overlay)
        print(f"overlay: {args.overlay}")
    summary = [{"object": i, "score": round(m.score, 4), "area": m.area, "bbox": m.bbox} for i, m in enumerate(best)]
    print(json.dumps({"width": result.width, "height": result.height, "random_weights": result.model.random_weights,
                      "objects": summary}))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="segserve", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="export ONNX graphs (parity-checked, cached by checkpoint hash)")
    p.add_argument("--families", default="sam2", help="comma-separated: sam2, mask2former")
    p.add_argument("--checkpoint", action="append", default=[], metavar="FAMILY=PATH",
                   help="local checkpoint (HF directory; SAM 2 also an official .pt); else SEGSERVE_<FAMILY>_CHECKPOINT; "
                        "random weights if neither")
    p.add_argument("--out", type=Path, default=DEFAULT_ARTIFACTS)
    p.add_argument("--expect-sha256", action="append", default=[], metavar="FAMILY=SHA256",
                   help="refuse a checkpoint with another sha256")
    p.add_argument("--random-size", choices=("tiny", "real"), default="tiny",
                   help="random-weight model size when no checkpoint is given (real: published shapes)")
    p.add_argument("--force", action="store_true", help="re-export even when cached")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("build-repo", help="generate the Triton model repository")
    p.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS)
    p.add_argument("--out", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--target", choices=("embedded", "fleet"), default="embedded")
    p.add_argument("--graph-backend", choices=("onnxruntime", "tensorrt"), default="onnxruntime")
    p.add_argument("--session-ttl-s", type=float, default=600.0)
    p.add_argument("--max-sessions", type=int, default=64)
    p.set_defaults(func=cmd_build_repo)

    p = sub.add_parser("triton", help="run the embedded tritonserver on loopback")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--workspace", type=Path, default=Path("build/triton"))
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.set_defaults(func=cmd_triton)

    p = sub.add_parser("orchestrator", help="run the gRPC orchestrator against a running Triton")
    p.add_argument("--triton-url", default=None, help="host:port of Triton gRPC (or SEGSERVE_TRITON_URL)")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--metrics-port", type=int, default=None)
    p.set_defaults(func=cmd_orchestrator)

    p = sub.add_parser("serve", help="run embedded Triton and the orchestrator together")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--workspace", type=Path, default=Path("build/triton"))
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--metrics-port", type=int, default=9464)
    p.add_argument("--triton-grpc-port", type=int, default=8001)
    p.add_argument("--triton-http-port", type=int, default=8000)
    p.add_argument("--triton-metrics-port", type=int, default=8002)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("segment", help="segment an image with point / box prompts")
    p.add_argument("image", type=Path)
    p.add_argument("--point", action="append", default=[], metavar="X,Y[,LABEL]",
                   type=lambda t: _floats(t, (2, 3), "--point"), help="label 1 = foreground (default), 0 = background")
    p.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1",
                   type=lambda t: _floats(t, (4,), "--box"))
    p.add_argument("--multimask", action="store_true", help="ask for three candidates, keep the best")
    p.add_argument("--out", type=Path, help="binary mask PNG")
    p.add_argument("--overlay", type=Path, help="overlay PNG")
    p.add_argument("--server", default="127.0.0.1:50051")
    p.set_defaults(func=cmd_segment)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
