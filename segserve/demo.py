"""`make demo`: export, build the repository, start embedded Triton + orchestrator, segment a real
photo with point and box prompts (SDK and CLI), write overlays and a JSON summary, stop."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


# Demo steps after the SAM 2 prompts: (title, model family it needs, module, whether it takes the photo).
STEPS = [
    ("segment everything", "sam2", "segserve.demo_everything", True),
    ("text to mask", "grounding_dino", "segserve.demo_text", True),
    ("panoptic", "mask2former", "segserve.demo_panoptic", True),
    ("video tracking", "sam2_video", "segserve.demo_video", False),
]


# The families' public checkpoints, used when the Hub is reachable (or already in the cache).
PUBLIC_CHECKPOINTS = {
    "sam2": "facebook/sam2.1-hiera-tiny",
    "sam2_video": "facebook/sam2.1-hiera-tiny",
    "grounding_dino": "IDEA-Research/grounding-dino-tiny",
    "mask2former": "facebook/mask2former-swin-tiny-coco-panoptic",
}
HUB_TIMEOUT_S = 3.0


def _families() -> list[str]:
    return list(dict.fromkeys(["sam2", *(family for _, family, _, _ in STEPS)]))


def hub_checkpoints(families: list[str]) -> tuple[dict[str, str], str]:
    """`hf://ORG/NAME@COMMIT` for each family without a SEGSERVE_<FAMILY>_CHECKPOINT: `main` resolved
    on the Hub when it answers within HUB_TIMEOUT_S, else the commit `main` had when the public
    checkpoint was cached. The second value says why families are missing (then: random weights)."""
    from huggingface_hub import try_to_load_from_cache

    from segserve.export import hub
    from segserve.export.families import FAMILIES

    wanted = {f: PUBLIC_CHECKPOINTS[f] for f in families if f in PUBLIC_CHECKPOINTS and not os.environ.get(FAMILIES[f].env)}
    up, why = hub.reachable(HUB_TIMEOUT_S)
    checkpoints, notes = {}, []
    for family, repo_id in wanted.items():
        commit = None
        if up:
            try:
                commit = hub.resolve_revision(repo_id, "main")
            except Exception as exc:  # a demo falls back rather than stops; the reason is shown
                notes.append(f"{repo_id}: {type(exc).__name__}: {exc}")
        else:
            cached = try_to_load_from_cache(repo_id, "config.json", revision="main", cache_dir=hub.cache_dir())
            commit = Path(cached).parent.name if isinstance(cached, str) else None
        if commit:
            checkpoints[family] = f"hf://{repo_id}@{commit}"
    if not up and len(checkpoints) < len(wanted):
        notes.insert(0, why)
    return checkpoints, "; ".join(notes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--repository", type=Path, default=Path("build/model_repository/embedded"))
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--random-size", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--no-hub", dest="hub", action="store_false",
                        help="do not look for the public checkpoints on the Hugging Face Hub (random weights)")
    args = parser.parse_args(argv)
    from segserve.extras import require

    require("python -m segserve.demo", "export", "server")  # it exports, builds and serves
    from skimage import data

    from segserve.client import SegservClient
    from segserve.common.overlay import overlay
    from segserve.export.families import FAMILIES, export_families
    from segserve.export.manifest import Manifest
    from segserve.repository.builder import build_repository
    from segserve.runtime.stack import start_stack

    args.out.mkdir(parents=True, exist_ok=True)
    families = _families()
    checkpoints, hub_note = hub_checkpoints(families) if args.hub else ({}, "--no-hub")
    for family, uri in checkpoints.items():
        print(f"[demo] {family}: public checkpoint {uri}", flush=True)
    if checkpoints:
        try:
            export_families(families, args.artifacts, checkpoints, size=args.random_size)
        except Exception as exc:  # e.g. the connection dropped mid-download: the demo still runs
            print(f"[demo] the Hub checkpoints could not be used ({type(exc).__name__}: {exc}); "
                  "falling back to random weights", flush=True)
            checkpoints = {}
    random = [f for f in families if f not in checkpoints and not os.environ.get(FAMILIES[f].env)]
    if random and hub_note:
        print(f"[demo] no public checkpoints from the Hugging Face Hub for {', '.join(random)}: {hub_note}", flush=True)
    if "sam2" in random:
        print("[demo] SEGSERVE_SAM2_CHECKPOINT is not set: exporting a RANDOM-WEIGHT SAM 2 "
              f"({args.random_size} config). The pipeline is real, the masks are not meaningful.", flush=True)
    elif random:
        print(f"[demo] RANDOM weights for {', '.join(random)}: those masks are not meaningful.", flush=True)
    if not checkpoints:
        export_families(families, args.artifacts, size=args.random_size)
    # OpenVINO bf16 where the CPU has native bf16 (AMX), else ONNX Runtime fp32: as `segserve build-repo`.
    build_repository(args.artifacts, args.repository, "embedded", cpu_runtime="auto")
    print(f"[demo] repository built at {args.repository} ({', '.join(families)})", flush=True)

    photo = np.ascontiguousarray(data.astronaut())  # a real photo shipped with scikit-image
    input_path = args.out / "input.png"
    Image.fromarray(photo).save(input_path)
    point, box = (240, 120, 1), (130, 20, 350, 260)
    summary: dict = {"image": str(input_path), "size": list(photo.shape[:2])}
    started = time.perf_counter()
    with start_stack(args.repository, Path("build/demo-triton")) as stack, SegservClient(stack.address) as client:
        print(f"[demo] stack up in {time.perf_counter() - started:.1f} s: orchestrator {stack.address}, "
              f"Triton {stack.triton.grpc_url}", flush=True)
        opened = client.open_image(photo)
        for name, prompt in (("point", dict(points=[point])), ("box", dict(boxes=[box])),
                             ("point_and_box", dict(points=[point], boxes=[box]))):
            t0 = time.perf_counter()
            result = client.mask_from_prompt(image_id=opened.image_id, multimask=True, **prompt)
            latency_ms = (time.perf_counter() - t0) * 1000
            best = result.objects[0].best
            path = args.out / f"overlay_{name}.png"
            overlay(photo, [best.mask], [f"{name} {best.score:.2f}"], prompt.get("points", ()), prompt.get("boxes", ())).save(path)
            summary[name] = {"overlay": str(path), "score": best.score, "area": best.area, "bbox": best.bbox,
                             "latency_ms": round(latency_ms, 1)}
        client.close_image(opened.image_id)
        cli_overlay = args.out / "cli_overlay.png"
        subprocess.run([sys.executable, "-m", "segserve.cli", "segment", str(input_path), "--point", "240,120,1",
                        "--box", "130,20,350,260", "--out", str(args.out / "cli_mask.png"), "--overlay",
                        str(cli_overlay), "--server", stack.address], check=True)
        summary["cli_overlay"] = str(cli_overlay)
        for title, _, module, takes_photo in STEPS:
            t0 = time.perf_counter()
            step = importlib.import_module(module)
            summary[title] = step.run(client, photo, args.out) if takes_photo else step.run(client, args.out)
            print(f"[demo] {title}: done in {time.perf_counter() - t0:.1f} s", flush=True)
        summary["model"] = {"random_weights": result.model.random_weights, "checkpoint": result.model.checkpoint}
    summary["checkpoints"] = Manifest(args.artifacts).checkpoints  # Hub repo, resolved commit, file hashes
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"[demo] results written under {args.out.resolve()}:")
    for path in sorted(args.out.glob("*")):
        print(f"  {path}")
    print("[demo] stack stopped.")


if __name__ == "__main__":
    main()
