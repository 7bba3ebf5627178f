"""`segserve` command line: export, build-repo, triton, orchestrator, serve, segment, panoptic."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from segserve.extras import require

DEFAULT_ARTIFACTS = Path("artifacts")
# The working repository (with graphs); model_repository/ holds the readable, committed configs.
DEFAULT_REPOSITORY = Path("build/model_repository/embedded")


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
    require("segserve export", "export")
    from segserve.export.families import export_families
    from segserve.export.manifest import Manifest

    if args.tensorrt:  # before the ONNX export: say at once what is missing for the engines
        from segserve.engines.build import EngineBuildError, check_precision, require_tensorrt

        try:
            check_precision(args.trt_precision, require_tensorrt()[1])
        except EngineBuildError as exc:
            sys.exit(f"segserve export --tensorrt: {exc}")
    from segserve.export.hub import HubError
    from segserve.export.manifest import ChecksumMismatch

    # Paths stay strings here: an `hf://ORG/NAME@COMMIT` is resolved by export.hub, not as a path.
    checkpoints = _pairs(args.checkpoint, "--checkpoint")
    families = args.families.split(",")
    try:
        export_families(families, args.out, checkpoints, _pairs(args.expect_sha256, "--expect-sha256"),
                        args.random_size, args.force, allow_unpinned=args.allow_unpinned)
    except (HubError, ChecksumMismatch) as exc:
        sys.exit(f"segserve export: {exc}")
    for record in Manifest(args.out).records.values():
        weights = "RANDOM weights" if record.random_weights else "checkpoint weights"
        print(f"{record.name}: {args.out / record.file} ({weights}; parity max abs error "
              f"{record.parity['max_abs_error']:.2e})")
    if args.measure_bf16:
        _measure_bf16(args.out, families, args.force)
    if args.tensorrt:
        from segserve.engines.build import BuildOptions, build_engines

        options = BuildOptions(args.trt_precision, args.trt_workspace_gib, args.trt_timing_cache)
        try:
            outcomes = build_engines(args.out, options, families, force=args.force)
        except EngineBuildError as exc:
            sys.exit(f"segserve export --tensorrt: {exc}")
        for graph, outcome in outcomes.items():
            print(f"{graph}: {outcome}")


def cmd_fetch_weights(args) -> None:
    """Download `hf://` checkpoints into the Hugging Face cache (and verify them) without exporting:
    run where the Hub is reachable, then carry the cache (HF_HOME) to an air-gapped machine."""
    require("segserve fetch-weights", "export")
    import tempfile

    from segserve.export.hub import HubError, resolve
    from segserve.export.manifest import ChecksumMismatch

    pairs = _pairs(args.checkpoint, "--checkpoint")
    if not pairs:
        sys.exit("segserve fetch-weights: give at least one --checkpoint FAMILY=hf://ORG/NAME@COMMIT")
    with tempfile.TemporaryDirectory() as views:
        for family, uri in pairs.items():
            try:
                hub = resolve(uri, family, Path(views), args.allow_unpinned)
            except (HubError, ChecksumMismatch) as exc:
                sys.exit(f"segserve fetch-weights: {exc}")
            print(json.dumps({"family": family, **hub.provenance(), "path": str(hub.snapshot)}))


def _measure_bf16(out: Path, families: list[str], force: bool) -> None:
    """`export --measure-bf16`: each graph in bf16 (OpenVINO) against fp32 (ONNX Runtime), recorded in
    the manifest (cached by the graphs' sha256); a graph that fails its gate is served in fp32."""
    from segserve.export.precision import PrecisionError, measure

    try:
        records = measure(out, families, force=force)
    except PrecisionError as exc:
        sys.exit(f"segserve export --measure-bf16: {exc}")
    for name, record in records.items():
        shown = {k: record.metrics[k] for k in record.gate if k in record.metrics}
        print(f"{name}: bf16 {record.status}, served {record.served_precision} {json.dumps(shown)}"
              + (f" ({record.reason})" if record.status != "passed" else ""))


def cmd_build_repo(args) -> None:
    require("segserve build-repo", "server")
    from segserve.repository.builder import build_repository

    if args.cpu_standins and args.target != "fleet":
        sys.exit("segserve: --cpu-standins applies to --target fleet")
    from segserve.repository.builder import RepositoryError

    try:
        names = build_repository(args.artifacts, args.out, args.target, args.graph_backend, args.session_ttl_s,
                                 args.max_sessions, intra_op_threads=args.graph_threads,
                                 options={"trt_cache_path": args.trt_cache_path,
                                          "trt_precision": args.trt_precision,
                                          "target_gpu": args.target_gpu,
                                          "target_compute_capability": args.target_compute_capability,
                                          "graph_cache_dir": args.graph_cache_dir},
                                 cpu_runtime=args.cpu_runtime, precision=args.precision)
    except RepositoryError as exc:
        sys.exit(f"segserve build-repo: {exc}")
    print(f"{args.target} repository at {args.out}: {', '.join(names)}")
    graphs = json.loads((args.out / "repository.json").read_text()).get("graph_runtimes", {})
    if graphs:
        print("in-process graphs: " + ", ".join(f"{g} {c['runtime']} {c['precision']}" for g, c in graphs.items()))
    if args.cpu_standins:
        from segserve.repository.standins import replace_graphs_with_cpu_standins
        from segserve.runtime.fleet_image import standin_libraries

        replaced = replace_graphs_with_cpu_standins(args.out, standin_libraries(Path("build/fleet-cpu")))
        print(f"CPU stand-ins (not for a fleet): {', '.join(replaced)}; serve it with `segserve serve --fleet-python`")


def _wait_forever(stop_callbacks, failed: threading.Event | None = None) -> None:
    """Block until SIGINT (Ctrl-C) or SIGTERM (Kubernetes), or until `failed` is set, then run the
    stop callbacks; exit non-zero after `failed`."""
    event = threading.Event()
    # Installed explicitly: a process started in the background inherits SIGINT as ignored, and
    # SIGTERM would otherwise kill without stopping Triton.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: event.set())
    try:
        # Timed: the handler runs only when the main thread wakes, and the kernel may hand the
        # signal to another thread (gRPC's, ORT's).
        while not event.wait(0.5):
            if failed is not None and failed.is_set():
                break
    finally:
        for stop in stop_callbacks:
            stop()
    if failed is not None and failed.is_set():
        sys.exit("segserve: tritonserver could not be restarted; exiting so that the pod is restarted")


def cmd_triton(args) -> None:
    require("segserve triton", "server")
    from segserve.runtime.triton import EmbeddedTriton

    triton = EmbeddedTriton(args.repository, args.workspace, args.grpc_port, args.http_port, args.metrics_port).start()
    print(f"Triton ready: gRPC {triton.grpc_url}, metrics {triton.metrics_url} (Ctrl-C stops)", flush=True)
    _wait_forever([triton.stop])


def cmd_orchestrator(args) -> None:
    require("segserve orchestrator", "server")
    from segserve.orchestrator.server import serve_forever
    from segserve.orchestrator.settings import Settings

    serve_forever(Settings.from_env(triton_url=args.triton_url, grpc_port=args.port, metrics_port=args.metrics_port,
                                    host=args.host))


def cmd_serve(args) -> None:
    require("segserve serve", "server")
    import logging

    from segserve.orchestrator.settings import Settings
    from segserve.runtime.stack import start_stack
    from segserve.runtime.supervisor import RestartPolicy

    policy = RestartPolicy(max_failures=args.triton_max_restarts, initial_backoff_s=args.triton_restart_backoff_s)
    python = None
    if args.fleet_python:  # the fleet image's Python and packages (docker/triton.Dockerfile), built here
        from segserve.runtime.fleet_image import fleet_python

        python = fleet_python(Path("build/fleet-cpu"))
    stack = start_stack(args.repository, args.workspace, Settings.from_env(host=args.host), ports={
        "grpc": args.port, "metrics": args.metrics_port, "triton_grpc": args.triton_grpc_port,
        "triton_http": args.triton_http_port, "triton_metrics": args.triton_metrics_port}, restart=policy,
        python=python)
    print(f"segserve ready: gRPC {stack.address}, metrics :{args.metrics_port}, "
          f"Triton {stack.triton.grpc_url} (Ctrl-C stops)", flush=True)
    # From here on, the supervisor and the health watcher report Triton's deaths and restarts.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _wait_forever([stack.stop], stack.failed)


def cmd_segment(args) -> None:
    import grpc
    from PIL import Image

    from segserve.client import SegservClient
    from segserve.common.image import decode_image
    from segserve.common.overlay import overlay

    data = args.image.read_bytes()
    if args.text is not None:  # Grounding DINO + SAM 2: labelled objects
        from segserve.demo_text import cli_segment_text

        return cli_segment_text(args, data)
    if not args.point and not args.box:
        sys.exit("segment: give at least one --point, --box or --text")
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


def cmd_panoptic(args) -> None:
    import grpc
    from PIL import Image

    from segserve.client import SegservClient
    from segserve.common.image import decode_image
    from segserve.demo_panoptic import overlay_segmentation

    data = args.image.read_bytes()
    with SegservClient(args.server) as client:
        try:
            result = client.segment(data, task=args.task, threshold=args.threshold, mask_threshold=args.mask_threshold,
                                    overlap_mask_area_threshold=args.overlap_mask_area_threshold,
                                    label_ids_to_fuse=args.fuse)
        except grpc.RpcError as exc:
            sys.exit(f"panoptic failed: {exc.code().name}: {exc.details()}")
    if args.out:
        peak = int(result.segment_map.max()) if result.segment_map.size else 0
        Image.fromarray(result.segment_map.astype(np.uint8 if peak <= 255 else np.uint16)).save(args.out)
        print(f"segment map: {args.out}")
    if args.overlay:
        overlay_segmentation(decode_image(data), result).save(args.overlay)
        print(f"overlay: {args.overlay}")
    summary = [{"id": s.id, "label_id": s.label_id, "label": s.label_name, "score": round(s.score, 4),
                "area": s.area, "bbox": s.bbox} for s in result.segments]
    print(json.dumps({"task": result.task, "width": result.width, "height": result.height,
                      "random_weights": result.model.random_weights, "segments": summary}))


AUTOMASK_OPTIONS = (("points-per-side", int), ("points-per-batch", int), ("pred-iou-thresh", float),
                    ("stability-score-thresh", float), ("stability-score-offset", float), ("box-nms-thresh", float),
                    ("crop-n-layers", int), ("crop-nms-thresh", float), ("crop-overlap-ratio", float),
                    ("crop-n-points-downscale-factor", int), ("min-mask-region-area", int), ("mask-threshold", float))


def cmd_everything(args) -> None:
    import grpc

    from segserve.client import SegservClient
    from segserve.common.image import decode_image
    from segserve.demo_everything import overlay_masks

    data = args.image.read_bytes()
    parameters = {name.replace("-", "_"): getattr(args, name.replace("-", "_")) for name, _ in AUTOMASK_OPTIONS}
    with SegservClient(args.server) as client:
        try:
            result = client.generate_masks(image=data, max_masks=args.max_masks, **parameters)
        except grpc.RpcError as exc:
            sys.exit(f"everything failed: {exc.code().name}: {exc.details()}")
    if args.json:
        args.json.write_text(json.dumps(result.coco_json()))
        print(f"masks: {args.json}")
    if args.overlay:
        overlay_masks(decode_image(data), result).save(args.overlay)
        print(f"overlay: {args.overlay}")
    print(json.dumps({"width": result.width, "height": result.height, "masks": len(result.masks),
                      "decoder_calls": result.decoder_calls, "truncated": result.truncated,
                      "random_weights": result.model.random_weights}))


def _track_prompts(points: list[list[float]]) -> tuple[dict[int, dict], int]:
    """--point F,X,Y[,LABEL[,OBJECT]] -> ({object: {"points": [...]}}, frame)."""
    frames = {int(p[0]) for p in points}
    if len(frames) > 1:
        sys.exit("track: put every --point on the same frame")
    prompts: dict[int, dict] = {}
    for i, p in enumerate(points):
        label = int(p[3]) if len(p) > 3 else 1
        obj = int(p[4]) if len(p) > 4 else i + 1
        prompts.setdefault(obj, {"points": []})["points"].append((p[1], p[2], label))
    return prompts, frames.pop() if frames else 0


def cmd_track(args) -> None:
    import grpc

    from segserve.client import SegservClient
    from segserve.demo_video import save_overlays, track_frames, write_overlay_video
    from segserve.video_io import VideoError, frame_rate, read_frames

    if args.video and args.frames:
        sys.exit("track: give the video (or frame folder) once: as VIDEO or with --frames")
    source = args.video or args.frames
    fps = 10.0
    if source is not None:
        try:
            frames = np.stack(list(read_frames(source, args.stride, args.max_frames)))
        except VideoError as exc:
            sys.exit(f"track: {exc}")
        fps = frame_rate(source) / args.stride
    else:
        from segserve.common.synthetic_video import moving_shapes

        frames, centres = moving_shapes(args.synthetic_frames, 120, 160)
        if not args.point and args.text is None:
            args.point = [[0, *centres[1][0]], [0, *centres[2][0]]]
    if not args.point and args.text is None:
        sys.exit("track: give at least one --point F,X,Y[,LABEL[,OBJECT]] or --text")
    prompts, frame = _track_prompts(args.point)
    text = None
    if args.text is not None:
        text = {"text": args.text, "frame": args.text_frame, "box_threshold": args.box_threshold,
                "text_threshold": args.text_threshold, "max_objects": args.max_objects}
    with SegservClient(args.server) as client:
        try:
            summary, masks, timings = track_frames(client, frames, prompts, frame, reverse_too=True, text=text)
        except grpc.RpcError as exc:
            sys.exit(f"track failed: {exc.code().name}: {exc.details()}")
    names = {int(k): f"{k}: {v['phrase'] or '?'}" for k, v in summary["detections"].items()}
    if args.out:
        from PIL import Image

        args.out.mkdir(parents=True, exist_ok=True)
        for index, objects in sorted(masks.items()):
            for obj, mask in objects.items():
                Image.fromarray(mask.astype(np.uint8) * 255).save(args.out / f"frame{index:04d}_object{obj}.png")
        if args.overlay:
            save_overlays(frames, masks, args.out)
        print(f"masks: {args.out}")
    extra = {}
    if args.overlay_video:
        codec, count = write_overlay_video(args.overlay_video, frames, masks, fps, names)
        extra["overlay_video"] = {"path": str(args.overlay_video), "codec": codec, "frames": count}
        print(f"overlay video: {args.overlay_video} ({codec}, {count} frames)")
    objects = sorted({o for objs in masks.values() for o in objs})
    print(json.dumps({**summary, **timings, **extra, "objects": objects, "tracked_frames": len(masks)}))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="segserve", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="export ONNX graphs (parity-checked, cached by checkpoint hash)")
    p.add_argument("--families", default="sam2", help="comma-separated: sam2, mask2former")
    p.add_argument("--checkpoint", action="append", default=[], metavar="FAMILY=PATH|hf://ORG/NAME@COMMIT",
                   help="hf://ORG/NAME@COMMIT (Hugging Face Hub, pinned; HF_HUB_OFFLINE=1: the cache alone) or a "
                        "local checkpoint (HF directory; SAM 2 also an official .pt); else SEGSERVE_<FAMILY>_CHECKPOINT; "
                        "random weights if neither")
    p.add_argument("--allow-unpinned", action="store_true",
                   help="accept a Hub branch or tag instead of a commit (the resolved commit is still recorded)")
    p.add_argument("--out", type=Path, default=DEFAULT_ARTIFACTS)
    p.add_argument("--expect-sha256", action="append", default=[], metavar="FAMILY=SHA256",
                   help="refuse a checkpoint with another sha256")
    p.add_argument("--random-size", choices=("tiny", "real"), default="tiny",
                   help="random-weight model size when no checkpoint is given (real: published shapes)")
    p.add_argument("--force", action="store_true", help="re-export even when cached")
    p.add_argument("--measure-bf16", action="store_true",
                   help="measure every exported graph in bf16 (OpenVINO) against fp32 (ONNX Runtime) with its "
                        "family's agreement gate (masks IoU, matched detections, segments) and record it in the "
                        "manifest; a graph that fails is served in fp32. Skipped, with the reason recorded, on a "
                        "CPU without native bf16. Otherwise done at the first bf16 build-repo.")
    trt = p.add_argument_group(
        "TensorRT engines (fleet; needs an NVIDIA GPU and the `gpu` extra's TensorRT, the fleet image's version)",
        "--tensorrt turns every exported graph into a parity-gated engine <name>.plan next to <name>.onnx, on "
        "this GPU; grounding_dino and mask2former stay on ONNX Runtime (segserve.engines.policy). Without a GPU "
        "or TensorRT, build them with the chart's engine Job or `make gpu-check`.")
    trt.add_argument("--tensorrt", action="store_true", help="build TensorRT engines after the ONNX export")
    trt.add_argument("--trt-precision", choices=("fp16", "bf16", "fp32"), default="fp16",
                     help="fp16 (default); bf16 needs compute capability >= 8.0; fp32 always works")
    trt.add_argument("--trt-workspace-gib", type=float, default=4.0, help="TensorRT workspace limit (GiB)")
    trt.add_argument("--trt-timing-cache", type=Path, metavar="PATH",
                     help="timing cache file, loaded when present and saved after each build")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("fetch-weights", help="download hf:// checkpoints into the Hugging Face cache, verified "
                                              "(for air-gapped machines: then copy HF_HOME)")
    p.add_argument("--checkpoint", action="append", default=[], metavar="FAMILY=hf://ORG/NAME@COMMIT")
    p.add_argument("--allow-unpinned", action="store_true", help="accept a branch or tag instead of a commit")
    p.set_defaults(func=cmd_fetch_weights)

    p = sub.add_parser("build-repo", help="generate the Triton model repository")
    p.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS)
    p.add_argument("--out", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--target", choices=("embedded", "fleet"), default="embedded")
    p.add_argument("--graph-backend", choices=("onnxruntime", "onnxruntime-trt", "tensorrt", "openvino"),
                   default="onnxruntime",
                   help="fleet graphs: onnxruntime (CUDA), onnxruntime-trt (its TensorRT accelerator, engines "
                        "built at load and cached), tensorrt (prebuilt plans); grounding_dino and mask2former "
                        "stay on onnxruntime (segserve.engines.policy)); openvino (CPU nodes: Triton's OpenVINO "
                        "backend, bf16 unless --precision fp32)")
    p.add_argument("--trt-cache-path", default="/models/trt-cache",
                   help="onnxruntime-trt: engine and timing caches, <path>/<model> (a volume in Triton's pod)")
    p.add_argument("--trt-precision", type=str.upper, choices=("FP16", "FP32"), default="FP16",
                   help="onnxruntime-trt: precision_mode of the TensorRT accelerator")
    p.add_argument("--target-gpu", metavar="NAME",
                   help="tensorrt: the fleet's GPU as nvidia-smi names it (default: this machine's); engines "
                        "built for another GPU or TensorRT are refused")
    p.add_argument("--target-compute-capability", metavar="X.Y", help="tensorrt: the fleet GPU's compute capability")
    p.add_argument("--session-ttl-s", type=float, default=600.0)
    p.add_argument("--max-sessions", type=int, default=64)
    cpu = p.add_argument_group("embedded target: how the graphs run inside the Python models (the fleet's graphs "
                               "are Triton's own models)")
    cpu.add_argument("--cpu-runtime", choices=("auto", "onnxruntime", "openvino"), default="auto",
                     help="auto (default): OpenVINO bf16 where the CPU has native bf16 (AMX or AVX512-BF16), "
                          "else ONNX Runtime fp32")
    cpu.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                     help="default: bf16 for auto on a CPU with native bf16, else fp32; bf16 needs openvino (or "
                          "auto) and runs fp32, with a warning, on a CPU without native bf16")
    cpu.add_argument("--graph-threads", type=int, default=None, metavar="N",
                     help="threads per in-process graph runner (default: the cores shared equally by every "
                          "instance that runs graphs, so they never oversubscribe them)")
    cpu.add_argument("--graph-cache-dir", type=Path, default=None,
                     help="OpenVINO's compiled-model cache (default: openvino-cache beside the repository)")
    p.add_argument("--cpu-standins", action="store_true",
                   help="fleet only: replace the GPU graph models with CPU stand-ins of the same I/O, to try the "
                        "fleet repository on this machine (`segserve serve --fleet-python`)")
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
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1, or SEGSERVE_HOST; "
                                               "0.0.0.0 to accept other machines)")
    p.set_defaults(func=cmd_orchestrator)

    p = sub.add_parser("serve", help="run embedded Triton and the orchestrator together")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--workspace", type=Path, default=Path("build/triton"))
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--metrics-port", type=int, default=9464)
    p.add_argument("--triton-grpc-port", type=int, default=8001)
    p.add_argument("--triton-http-port", type=int, default=8000)
    p.add_argument("--triton-metrics-port", type=int, default=8002)
    p.add_argument("--host", default=None, help="address the orchestrator binds (default 127.0.0.1, or "
                                               "SEGSERVE_HOST); Triton always stays on loopback")
    p.add_argument("--fleet-python", action="store_true",
                   help="run the Python models on the fleet image's Python and packages (for a fleet repository "
                        "built with --cpu-standins)")
    p.add_argument("--triton-max-restarts", type=int, default=5,
                   help="exit non-zero after this many failed restarts of Triton in a row")
    p.add_argument("--triton-restart-backoff-s", type=float, default=0.5,
                   help="wait before restarting Triton, doubled after each failure (at most 30 s)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("segment", help="segment an image with point / box prompts")
    p.add_argument("image", type=Path)
    p.add_argument("--point", action="append", default=[], metavar="X,Y[,LABEL]",
                   type=lambda t: _floats(t, (2, 3), "--point"), help="label 1 = foreground (default), 0 = background")
    p.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1",
                   type=lambda t: _floats(t, (4,), "--box"))
    p.add_argument("--multimask", action="store_true", help="ask for three candidates, keep the best")
    p.add_argument("--text", help='text prompt, phrases separated by ".": "a cat. a remote control."')
    p.add_argument("--box-threshold", type=float, help="--text: minimum box score (default: the server's)")
    p.add_argument("--text-threshold", type=float, help="--text: minimum token score for a phrase")
    p.add_argument("--max-objects", type=int, default=0, help="--text: at most this many objects (0: default)")
    p.add_argument("--out", type=Path, help="binary mask PNG")
    p.add_argument("--overlay", type=Path, help="overlay PNG")
    p.add_argument("--server", default="127.0.0.1:50051")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("track", help="track objects through a video (file, frames folder or a synthetic clip)")
    p.add_argument("video", type=Path, nargs="?",
                   help="video file (any format FFmpeg reads, decoded with PyAV) or folder of frame images (sorted "
                        "by name); default: a synthetic clip")
    p.add_argument("--frames", type=Path, help="folder of frame images (the same as giving it as VIDEO)")
    p.add_argument("--stride", type=int, default=1, help="keep every N-th frame of the video")
    p.add_argument("--max-frames", type=int, help="keep at most this many frames")
    p.add_argument("--synthetic-frames", type=int, default=8, help="length of the synthetic clip")
    p.add_argument("--point", action="append", default=[], metavar="F,X,Y[,LABEL[,OBJECT]]",
                   type=lambda t: _floats(t, (3, 4, 5), "--point"),
                   help="a click on frame F (of the kept frames); several points without OBJECT are separate objects")
    p.add_argument("--text", help='text prompt on --text-frame (Grounding DINO): "a car. a person."; each detection '
                                  "becomes an object")
    p.add_argument("--text-frame", type=int, default=0, help="frame of the --text prompt (default 0)")
    p.add_argument("--box-threshold", type=float, help="--text: minimum box score (default: the server's)")
    p.add_argument("--text-threshold", type=float, help="--text: minimum token score for a phrase")
    p.add_argument("--max-objects", type=int, default=0, help="--text: at most this many objects (0: default)")
    p.add_argument("--out", type=Path, help="folder for per-frame, per-object mask PNGs")
    p.add_argument("--overlay", action="store_true", help="also write overlay PNGs into --out")
    p.add_argument("--overlay-video", type=Path, help="write the overlays as a video (e.g. out.mp4; libx264, else mpeg4)")
    p.add_argument("--server", default="127.0.0.1:50051")
    p.set_defaults(func=cmd_track)

    p = sub.add_parser("panoptic", help="whole-image panoptic / semantic / instance segmentation (Mask2Former)")
    p.add_argument("image", type=Path)
    p.add_argument("--task", choices=("panoptic", "semantic", "instance"), default="panoptic")
    p.add_argument("--threshold", type=float, help="minimum class probability / score (default: the model's)")
    p.add_argument("--mask-threshold", type=float)
    p.add_argument("--overlap-mask-area-threshold", type=float)
    p.add_argument("--fuse", type=int, action="append", default=[], metavar="LABEL_ID",
                   help="panoptic: merge all segments of this label into one (repeatable)")
    p.add_argument("--overlay", type=Path, help="coloured, labelled overlay PNG")
    p.add_argument("--out", type=Path, help="segment-id map PNG (0 = no segment)")
    p.add_argument("--server", default="127.0.0.1:50051")
    p.set_defaults(func=cmd_panoptic)

    p = sub.add_parser("everything", help="segment everything: SAM automatic masks (COCO-style JSON, overlay)")
    p.add_argument("image", type=Path)
    for name, kind in AUTOMASK_OPTIONS:
        p.add_argument(f"--{name}", type=kind, default=None, help="default: the server's")
    p.add_argument("--max-masks", type=int, default=0, help="keep the best N by predicted IoU (0 = all)")
    p.add_argument("--overlay", type=Path, help="overlay PNG")
    p.add_argument("--json", type=Path, help="COCO-style JSON of the masks (RLE segmentations)")
    p.add_argument("--server", default="127.0.0.1:50051")
    p.set_defaults(func=cmd_everything)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
