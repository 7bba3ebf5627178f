"""Mask2Former (universal segmentation) -> ONNX.

One graph, `mask2former`: pixel_values [B,3,S,S] -> class_queries_logits [B,Q,C+1] and
masks_queries_logits [B,Q,S/4,S/4]. The batch is dynamic; the image size S is fixed at export
(the Swin window padding and the deformable-attention level shapes are baked in), so every image is
resized to exactly S x S before inference (see `segserve.common.mask2former_post.preprocess`) and
the post-processing maps results back to the original size. Panoptic / semantic / instance
post-processing runs outside the graph, in numpy (`segserve.common.mask2former_post`).

Export patch (applied only while tracing, so the parity check compares ONNX Runtime with the
unpatched transformers code): the pixel decoder's deformable-attention reference points are built
from a float32 `arange + 0.5` instead of `torch.linspace`. The legacy exporter emits `linspace` as a
float64 computation (measured: without constant folding the unpatched graph holds ~80 float64
tensors in the pixel decoder's reference points, the patched one none there), and a float64
GridSample grid is rejected by ONNX Runtime. With this model's static level shapes the default
constant folding happens to remove them today; the patch keeps the graph float32 either way. The
values are identical (integers plus 0.5 are exact in float32). After a fresh export the graph is
checked to hold no float64 tensor and no op outside the standard ONNX domain.
"""
from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any, Iterator

import onnx
import torch
from torch import nn
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

from .manifest import ArtifactRecord, Manifest, verify_checkpoint
from .onnx_export import GraphSpec, Step, artifact_settings, export_artifact, family_parser, log, random_checkpoint

GRAPH = "mask2former"
FAMILY = "mask2former"
RANDOM_CONFIGS = ("tiny", "swin-tiny")
# Export size when none is asked for: small for the tiny random model, 512 for real-size models.
DEFAULT_IMAGE_SIZE = {"tiny": 384, "swin-tiny": 512, "checkpoint": 512}
SIZE_DIVISOR = 32  # the image processor's size_divisor; Swin's four stages need S/32 integral
# `Mask2FormerImageProcessor.post_process_*` first upsample mask logits to 384 x 384, whatever the
# input size, then to the target size; our numpy post-processing does the same by default.
HF_POSTPROCESS_MASK_SIZE = 384
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
TINY_LABELS = ("sky", "ground", "wall", "person", "car", "animal")
# The tiny random model is shaped so its outputs are not degenerate: with default initialisation all
# queries predict nearly the same flat mask, and every post-processing result would be empty or one
# class. Seed, init scale and the few rescaled layers below were picked (by looking at the outputs on
# synthetic scenes) so that semantic maps hold several classes and panoptic / instance results hold
# several segments. The weights stay random; real checkpoints are never touched by this.
TINY_SEED = 1
TINY_INIT_STD = 0.3
TINY_SHARPEN = 4.0  # scales the mask projection and the class head: sharper masks, confident classes
TINY_DEFORMABLE_STD = 0.1  # data-dependent sampling offsets, so the export exercises real GridSample grids
PIL_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


class GraphCheckError(RuntimeError):
    pass


def random_config(size: str = "tiny") -> Mask2FormerConfig:
    """`swin-tiny`: mask2former-swin-tiny-coco-panoptic shapes (47.4M params, 133 labels).
    `tiny`: a one-layer-per-stage model with six labels for tests (about 0.4M params)."""
    if size == "swin-tiny":
        backbone = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                              drop_path_rate=0.3, out_features=["stage1", "stage2", "stage3", "stage4"])
        id2label = {i: f"class_{i}" for i in range(133)}
        return Mask2FormerConfig(backbone_config=backbone, num_labels=133, id2label=id2label)
    if size != "tiny":
        raise ValueError(f"unknown random Mask2Former config {size!r}; choose one of {RANDOM_CONFIGS}")
    backbone = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=7,
                          drop_path_rate=0.0, out_features=["stage1", "stage2", "stage3", "stage4"])
    return Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=32, mask_feature_size=32, hidden_dim=32,  # GroupNorm(32, .) needs multiples of 32
        encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1, decoder_layers=2,
        num_attention_heads=2, num_queries=16, init_std=TINY_INIT_STD,
        num_labels=len(TINY_LABELS), id2label=dict(enumerate(TINY_LABELS)),
    )


def build_random_model(size: str = "tiny") -> Mask2FormerForUniversalSegmentation:
    """A random-weight model for `size` (call after seeding torch)."""
    model = Mask2FormerForUniversalSegmentation(random_config(size))
    if size == "tiny":
        with torch.no_grad():
            projection = model.model.pixel_level_module.decoder.mask_projection
            projection.weight.mul_(TINY_SHARPEN)
            projection.bias.zero_()
            model.class_predictor.weight.mul_(TINY_SHARPEN)
            for layer in model.model.pixel_level_module.decoder.encoder.layers:
                layer.self_attn.sampling_offsets.weight.normal_(0.0, TINY_DEFORMABLE_STD)
                layer.self_attn.attention_weights.weight.normal_(0.0, TINY_DEFORMABLE_STD)
    return model.eval()


def load_mask2former(checkpoint: Path) -> Mask2FormerForUniversalSegmentation:
    """A `save_pretrained` directory (config.json + weights). Needs scipy (the loss is built in __init__)."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a Hugging Face checkpoint directory (no config.json)")
    return Mask2FormerForUniversalSegmentation.from_pretrained(checkpoint).eval()


def _reference_points_float32(spatial_shapes_list, valid_ratios, device):
    """`Mask2FormerPixelDecoderEncoderOnly.get_reference_points` with `arange + 0.5` (float32)."""
    points = []
    for level, (height, width) in enumerate(spatial_shapes_list):
        ys = torch.arange(height, dtype=torch.float32, device=device) + 0.5
        xs = torch.arange(width, dtype=torch.float32, device=device) + 0.5
        ref_y, ref_x = torch.meshgrid(ys.to(valid_ratios.dtype), xs.to(valid_ratios.dtype), indexing="ij")
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
        points.append(torch.stack((ref_x, ref_y), -1))
    return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]


@contextlib.contextmanager
def export_patches(model: Mask2FormerForUniversalSegmentation) -> Iterator[None]:
    """Swap in the export-friendly pieces on this model instance only; restore them afterwards."""
    encoder = model.model.pixel_level_module.decoder.encoder
    encoder.get_reference_points = _reference_points_float32  # instance attribute: no self binding
    try:
        yield
    finally:
        del encoder.get_reference_points


class Mask2FormerGraph(nn.Module):
    """pixel_values -> (class_queries_logits, masks_queries_logits) of the last decoder layer."""

    def __init__(self, model: Mask2FormerForUniversalSegmentation):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor):
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        with export_patches(self.model) if exporting else contextlib.nullcontext():
            out = self.model(pixel_values=pixel_values, output_auxiliary_logits=False)
        return out.class_queries_logits, out.masks_queries_logits


def check_patches(model: Mask2FormerForUniversalSegmentation, image_size: int) -> float:
    """Max abs difference between the patched and the unpatched model (expected: 0)."""
    pixel_values = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        reference = model(pixel_values=pixel_values)
        with export_patches(model):
            patched = model(pixel_values=pixel_values)
    return max(float((reference.class_queries_logits - patched.class_queries_logits).abs().max()),
               float((reference.masks_queries_logits - patched.masks_queries_logits).abs().max()))


def check_graph(path: Path) -> dict[str, Any]:
    """Facts about an exported graph; raise when it holds float64 tensors or non-standard ops."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    graph = model.graph
    values = [*graph.value_info, *graph.input, *graph.output]
    doubles = [v.name for v in values if v.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE]
    doubles += [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.DOUBLE]
    for node in graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.DOUBLE for a in node.attribute):
            doubles.append(node.output[0])
    domains = sorted({node.domain for node in graph.node if node.domain not in ("", "ai.onnx")})
    ops: dict[str, int] = {}
    for node in graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    facts = {"float64_tensors": doubles, "custom_domains": domains, "grid_sample_nodes": ops.get("GridSample", 0),
             "nodes": len(graph.node)}
    if doubles or domains:
        raise GraphCheckError(f"{path}: float64 tensors {doubles[:5]} / custom op domains {domains}")
    return facts


def preprocess_config(checkpoint: Path | None, image_size: int) -> dict[str, Any]:
    """Normalisation from the checkpoint's preprocessor_config.json (ImageNet defaults without one);
    the resize rule is always 'exactly image_size x image_size' because the graph's size is fixed."""
    settings: dict[str, Any] = {}
    path = Path(checkpoint) / "preprocessor_config.json" if checkpoint is not None else None
    if path is not None and path.is_file():
        settings = json.loads(path.read_text())
    do_rescale = settings.get("do_rescale", True)
    do_normalize = settings.get("do_normalize", True)
    resample = int(settings.get("resample", 2))
    return {
        "resize": {"height": image_size, "width": image_size, "rule": "exact",
                   "resample": PIL_RESAMPLE_NAMES.get(resample, "bilinear"),
                   "note": "resize to exactly SxS (aspect not kept), like Mask2FormerImageProcessor with "
                           "size={'height': S, 'width': S}; results are resized back to the original size"},
        "rescale_factor": float(settings.get("rescale_factor", 1 / 255)) if do_rescale else 1.0,
        "image_mean": [float(v) for v in settings.get("image_mean", IMAGENET_MEAN)] if do_normalize else [0.0] * 3,
        "image_std": [float(v) for v in settings.get("image_std", IMAGENET_STD)] if do_normalize else [1.0] * 3,
        "source": str(path) if path is not None and path.is_file() else "defaults (ImageNet mean/std, 1/255)",
    }


def mask2former_model_config(model: Mask2FormerForUniversalSegmentation, checkpoint: str, random_weights: bool,
                             image_size: int) -> dict[str, Any]:
    config = model.config
    return {
        "family": FAMILY,
        "checkpoint": checkpoint,
        "random_weights": random_weights,
        "image_size": image_size,
        "mask_logits_size": image_size // 4,
        "num_queries": config.num_queries,
        "num_labels": config.num_labels,
        "null_class_index": config.num_labels,
        "id2label": {str(k): v for k, v in sorted(config.id2label.items(), key=lambda kv: int(kv[0]))},
        "preprocess": preprocess_config(None if random_weights else Path(checkpoint), image_size),
        "postprocess": {"mask_size": HF_POSTPROCESS_MASK_SIZE, "threshold": 0.5, "mask_threshold": 0.5,
                        "overlap_mask_area_threshold": 0.8},
        # Parity (in the manifest record) is measured against the unpatched transformers forward.
        "export_patches": ["pixel decoder reference points: float32 arange + 0.5 instead of linspace"],
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def graph_spec(model: Mask2FormerForUniversalSegmentation, image_size: int) -> GraphSpec:
    gen = torch.Generator().manual_seed(0)
    return GraphSpec(
        name=GRAPH,
        module=Mask2FormerGraph(model),
        example_inputs={"pixel_values": torch.randn(1, 3, image_size, image_size, generator=gen)},
        output_names=["class_queries_logits", "masks_queries_logits"],
        dynamic_axes={"pixel_values": {0: "batch"}, "class_queries_logits": {0: "batch"},
                      "masks_queries_logits": {0: "batch"}},
        parity_inputs=[{"pixel_values": torch.randn(2, 3, image_size, image_size, generator=gen) * 1.5}],
        atol=1e-4, rtol=1e-3,
    )


def export_mask2former(
    checkpoint: Path | None,
    out_dir: Path,
    image_size: int | None = None,
    expect_sha256: str | None = None,
    force: bool = False,
    random_size: str = "tiny",
) -> ArtifactRecord:
    """Export the Mask2Former graph at a fixed image size; reuse a cached one built from the same
    checkpoint and settings. Without a checkpoint a seeded random-weight model is used."""
    out_dir = Path(out_dir)
    random_weights = checkpoint is None
    if image_size is None:
        image_size = DEFAULT_IMAGE_SIZE[random_size if random_weights else "checkpoint"]
    if image_size <= 0 or image_size % SIZE_DIVISOR:
        raise ValueError(f"image_size must be a positive multiple of {SIZE_DIVISOR}, got {image_size}")
    if random_weights:
        if random_size not in RANDOM_CONFIGS:
            raise ValueError(f"unknown random Mask2Former config {random_size!r}; choose one of {RANDOM_CONFIGS}")
        checkpoint = random_checkpoint(out_dir / "checkpoints" / f"mask2former-random-{random_size}",
                                       lambda: build_random_model(random_size),
                                       seed=TINY_SEED if random_size == "tiny" else 0)
        log(f"no Mask2Former checkpoint given: using RANDOM weights ({random_size} config) at {checkpoint}")
    checkpoint = Path(checkpoint)
    with Step(f"hashing checkpoint {checkpoint}"):
        checkpoint_sha = verify_checkpoint(checkpoint, expect_sha256)
    manifest = Manifest(out_dir)
    settings = {"family": FAMILY, "image_size": image_size, "random_size": random_size if random_weights else None}
    if not force and (cached := manifest.reusable(GRAPH, checkpoint_sha, artifact_settings(settings))):
        log(f"{GRAPH}: up to date (cached by checkpoint hash and settings): {cached.file}")
        return cached
    with Step(f"loading Mask2Former from {checkpoint}"):
        model = load_mask2former(checkpoint)
    config = mask2former_model_config(model, str(checkpoint), random_weights, image_size)
    with warnings.catch_warnings():
        # Shape-dependent Python branches (Swin padding, attention shape checks) are traced as
        # constants; expected, since the image size is fixed, and parity below covers it.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        record = export_artifact(graph_spec(model, image_size), manifest, str(checkpoint), checkpoint_sha,
                                 random_weights, settings, model_config=config, force=True)
    path = manifest.directory / record.file
    try:
        facts = check_graph(path)
    except GraphCheckError:
        manifest.records.pop(GRAPH, None)
        manifest.save()
        path.unlink(missing_ok=True)
        raise
    log(f"{GRAPH}: {facts['nodes']} nodes, {facts['grid_sample_nodes']} GridSample, no float64, standard ops only")
    return record


def main(argv: list[str] | None = None) -> None:
    args = family_parser("Export Mask2Former (universal segmentation) to ONNX", RANDOM_CONFIGS,
                         "fixed export size S (multiple of 32); default 384 for the tiny random model, 512 otherwise"
                         ).parse_args(argv)
    record = export_mask2former(args.checkpoint, args.out, args.image_size, args.expect_sha256, args.force,
                                args.random_size)
    print(json.dumps({"name": record.name, "file": str(Path(args.out) / record.file), "sha256": record.sha256,
                      "parity": record.parity}, indent=2))


if __name__ == "__main__":
    main()
