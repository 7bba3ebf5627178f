"""SAM 2 image encoder and prompt decoder -> ONNX.

Two graphs, split where the work splits at serving time: the encoder runs once per image, the
decoder once per prompt on cached embeddings.

- `sam2_image_encoder`: pixel_values [B,3,1024,1024] -> high_res_feats_0, high_res_feats_1,
  image_embeddings (the three levels `Sam2Model.get_image_embeddings` returns).
- `sam2_prompt_decoder`: one image's embeddings plus P prompts of N points each -> multimask and
  single-mask low-res logits, IoU predictions, object score. Boxes are the corner points labelled
  2 and 3; every prompt ends with one padding point labelled -1, which is exactly the token set
  transformers builds for points, boxes, points+box and mask-only prompts.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Sam2Config, Sam2Model

from .manifest import ArtifactRecord, Manifest, verify_checkpoint
from .onnx_export import DEFAULT_OPSET, GraphSpec, Step, artifact_settings, export_artifact, log, random_checkpoint

ENCODER = "sam2_image_encoder"
DECODER = "sam2_prompt_decoder"
# The dynamo exporter gives a faster encoder graph; the decoder exports faster with the legacy one.
USE_DYNAMO = {ENCODER: True, DECODER: False}
# Opset 20 lets the encoder keep GELU as one op (about 6% faster on CPU ORT than opset 18, same
# accuracy); opset 20 is within what ORT >= 1.17 and TensorRT 10 parse.
OPSETS = {ENCODER: 20, DECODER: DEFAULT_OPSET}
RANDOM_CONFIGS = ("tiny", "hiera-tiny")


def random_config(size: str = "tiny") -> Sam2Config:
    """`hiera-tiny`: sam2.1-hiera-tiny shapes (31M params). `tiny`: a few-layer model for tests."""
    if size == "hiera-tiny":
        return Sam2Config()
    if size != "tiny":
        raise ValueError(f"unknown random SAM 2 config {size!r}; choose one of {RANDOM_CONFIGS}")
    hidden = 64
    config = Sam2Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam2_hiera_det_model",
                "hidden_size": 16,
                "embed_dim_per_stage": [16, 32, 64, 128],
                "num_attention_heads_per_stage": [1, 1, 2, 2],
                "blocks_per_stage": [1, 1, 2, 1],
                "window_size_per_stage": [8, 4, 14, 7],
                "global_attention_blocks": [3],
            },
            "backbone_channel_list": [128, 64, 32, 16],
            "fpn_hidden_size": hidden,
        },
        prompt_encoder_config={"hidden_size": hidden},
        mask_decoder_config={"hidden_size": hidden, "mlp_dim": 128, "num_attention_heads": 2,
                             "iou_head_hidden_dim": hidden},
    )
    # The default 0.02 init gives logits of ~1e-4, too small for parity checks to mean anything;
    # 0.15 gives logits of order 1 and masks that are neither empty nor full.
    for sub in (config, config.vision_config, config.vision_config.backbone_config,
                config.prompt_encoder_config, config.mask_decoder_config):
        sub.initializer_range = 0.15
    return config


def load_sam2(checkpoint: Path) -> Sam2Model:
    """A `save_pretrained` directory or an official Meta `.pt` file."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_file():
        from .meta_checkpoint import load_meta_sam2

        model = load_meta_sam2(checkpoint)
    elif (checkpoint / "config.json").is_file():
        model = Sam2Model.from_pretrained(checkpoint)
    else:
        raise FileNotFoundError(f"{checkpoint} is neither a Hugging Face checkpoint directory nor a .pt file")
    return model.eval()


class EncoderGraph(nn.Module):
    def __init__(self, model: Sam2Model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor):
        feats = self.model.get_image_embeddings(pixel_values)
        return feats[0], feats[1], feats[2]


class DecoderGraph(nn.Module):
    """Prompt encoder + mask decoder for P prompts on one image, both output modes at once."""

    def __init__(self, model: Sam2Model):
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.decoder = model.mask_decoder
        self.register_buffer("image_pe", model.get_image_wide_positional_embeddings().detach(), persistent=False)

    def forward(self, image_embeddings, high_res_feats_0, high_res_feats_1, point_coords, point_labels,
                mask_input, has_mask_input):
        encoder = self.prompt_encoder
        sparse = encoder._embed_points(point_coords.unsqueeze(0), point_labels.unsqueeze(0), pad=False)
        no_mask = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand_as(image_embeddings)
        dense = torch.where(has_mask_input.reshape(1, 1, 1, 1) > 0, encoder.mask_embed(mask_input), no_mask)
        masks, iou, object_score = self._all_masks(image_embeddings, sparse, dense, high_res_feats_0, high_res_feats_1)
        if self.decoder.dynamic_multimask_via_stability:
            single_mask, single_iou = self.decoder._dynamic_multimask_via_stability(masks, iou)
        else:
            single_mask, single_iou = masks[:, :, 0:1], iou[:, :, 0:1]
        return masks[0, :, 1:], iou[0, :, 1:], single_mask[0], single_iou[0], object_score[0]

    def _all_masks(self, image_embeddings, sparse, dense, feat_s0, feat_s1):
        # Sam2MaskDecoder.forward up to its output selection, so one pass yields all four tokens.
        dec = self.decoder
        _, channels, height, width = image_embeddings.shape
        prompts = sparse.shape[1]
        tokens = torch.cat([dec.obj_score_token.weight, dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat((tokens.repeat(1, prompts, 1, 1), sparse), dim=2)
        image = (image_embeddings + dense).repeat_interleave(prompts, dim=0)
        image_pe = self.image_pe.repeat_interleave(prompts, dim=0)
        tokens, image = dec.transformer(point_embeddings=tokens, image_embeddings=image,
                                        image_positional_embeddings=image_pe, attention_similarity=None)
        iou_token = tokens[:, :, 1, :]
        mask_tokens = tokens[:, :, 2:2 + dec.num_mask_tokens, :]
        image = image.transpose(2, 3).reshape(prompts, channels, height, width)
        up = dec.upscale_conv1(image) + feat_s1.repeat_interleave(prompts, dim=0)
        up = dec.activation(dec.upscale_layer_norm(up))
        up = dec.activation(dec.upscale_conv2(up) + feat_s0.repeat_interleave(prompts, dim=0))
        hyper = torch.stack([mlp(mask_tokens[:, :, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=2)
        _, up_channels, up_h, up_w = up.shape
        masks = (hyper @ up.reshape(1, prompts, up_channels, up_h * up_w)).reshape(1, prompts, -1, up_h, up_w)
        return masks, dec.iou_prediction_head(iou_token), dec.pred_obj_score_head(tokens[:, :, 0, :])


def _example_embeddings(model: Sam2Model, batch: int = 1) -> dict[str, torch.Tensor]:
    cfg = model.config.vision_config
    channels = cfg.fpn_hidden_size
    sizes = cfg.backbone_feature_sizes
    gen = torch.Generator().manual_seed(1)
    return {
        "image_embeddings": torch.randn(batch, channels, *sizes[2], generator=gen),
        "high_res_feats_0": torch.randn(batch, channels // 8, *sizes[0], generator=gen),
        "high_res_feats_1": torch.randn(batch, channels // 4, *sizes[1], generator=gen),
    }


def _decoder_case(model: Sam2Model, prompts: int, points: int, with_mask: bool, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    size = model.config.prompt_encoder_config.image_size
    low_res = 4 * size // model.config.prompt_encoder_config.patch_size
    labels = torch.randint(0, 4, (prompts, points), generator=gen, dtype=torch.int32)
    labels[:, -1] = -1  # the padding point every prompt ends with
    coords = torch.rand(prompts, points, 2, generator=gen) * size
    coords[:, -1] = 0.0
    return {
        **_example_embeddings(model),
        "point_coords": coords,
        "point_labels": labels,
        "mask_input": torch.randn(1, 1, low_res, low_res, generator=gen) * 4,
        "has_mask_input": torch.tensor([1.0 if with_mask else 0.0]),
    }


def check_decoder_against_reference(model: Sam2Model, atol: float = 1e-4) -> float:
    """The decoder wrapper must reproduce `Sam2Model.forward` (points, box, mask; both output modes)."""
    graph = DecoderGraph(model).eval()
    feats = _example_embeddings(model)
    embeds = [feats["high_res_feats_0"], feats["high_res_feats_1"], feats["image_embeddings"]]
    worst = 0.0
    cases = [
        dict(input_points=torch.tensor([[[[300.0, 200.0], [500.0, 700.0]]]]), input_labels=torch.tensor([[[1, 0]]])),
        dict(input_boxes=torch.tensor([[[100.0, 150.0, 600.0, 800.0]]])),
        dict(input_points=torch.tensor([[[[320.0, 410.0]]]]), input_labels=torch.tensor([[[1]]]),
             input_boxes=torch.tensor([[[100.0, 150.0, 600.0, 800.0]]])),
    ]
    for case in cases:
        coords, labels = [], []
        if "input_points" in case:
            coords.append(case["input_points"][0, 0])
            labels.append(case["input_labels"][0, 0].to(torch.int32))
        if "input_boxes" in case:
            coords.append(case["input_boxes"][0, 0].reshape(2, 2))
            labels.append(torch.tensor([2, 3], dtype=torch.int32))
        coords.append(torch.zeros(1, 2))
        labels.append(torch.tensor([-1], dtype=torch.int32))
        mask = torch.randn(1, 1, 256, 256)
        for with_mask in (False, True):
            with torch.no_grad():
                got = graph(*[feats[k] for k in ("image_embeddings", "high_res_feats_0", "high_res_feats_1")],
                            torch.cat(coords)[None], torch.cat(labels)[None], mask,
                            torch.tensor([1.0 if with_mask else 0.0]))
                for multimask, (m, s) in ((True, got[0:2]), (False, got[2:4])):
                    ref = model(image_embeddings=embeds, multimask_output=multimask,
                                input_masks=mask if with_mask else None, **case)
                    worst = max(worst, float((ref.pred_masks[0] - m).abs().max()), float((ref.iou_scores[0] - s).abs().max()))
    if worst > atol:
        raise RuntimeError(f"decoder wrapper differs from Sam2Model.forward by {worst:.3g} (> {atol})")
    return worst


def graph_specs(model: Sam2Model) -> list[GraphSpec]:
    size = model.config.prompt_encoder_config.image_size
    gen = torch.Generator().manual_seed(0)
    encoder = GraphSpec(
        name=ENCODER,
        module=EncoderGraph(model),
        example_inputs={"pixel_values": torch.randn(2, 3, size, size, generator=gen)},
        output_names=["high_res_feats_0", "high_res_feats_1", "image_embeddings"],
        dynamic_axes={"pixel_values": {0: "batch"}, "high_res_feats_0": {0: "batch"},
                      "high_res_feats_1": {0: "batch"}, "image_embeddings": {0: "batch"}},
        parity_inputs=[{"pixel_values": torch.randn(1, 3, size, size, generator=gen)}],
        atol=1e-4, rtol=1e-3,
        dynamo=USE_DYNAMO[ENCODER],
        opset=OPSETS[ENCODER],
    )
    decoder = GraphSpec(
        name=DECODER,
        module=DecoderGraph(model),
        example_inputs=_decoder_case(model, prompts=2, points=3, with_mask=False, seed=2),
        output_names=["multi_masks", "multi_iou", "single_mask", "single_iou", "object_score_logits"],
        dynamic_axes={"point_coords": {0: "prompts", 1: "points"}, "point_labels": {0: "prompts", 1: "points"},
                      "multi_masks": {0: "prompts"}, "multi_iou": {0: "prompts"}, "single_mask": {0: "prompts"},
                      "single_iou": {0: "prompts"}, "object_score_logits": {0: "prompts"}},
        parity_inputs=[_decoder_case(model, 1, 1, True, 3), _decoder_case(model, 5, 6, True, 4),
                       _decoder_case(model, 1, 4, False, 5)],
        atol=1e-4, rtol=1e-3,
    )
    return [encoder, decoder]


def sam2_model_config(model: Sam2Model, checkpoint: str, random_weights: bool) -> dict[str, Any]:
    prompt = model.config.prompt_encoder_config
    return {
        "family": "sam2",
        "checkpoint": checkpoint,
        "random_weights": random_weights,
        "image_size": prompt.image_size,
        "low_res_mask_size": 4 * prompt.image_size // prompt.patch_size,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "mask_threshold": 0.0,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def export_sam2(
    checkpoint: Path | None,
    out_dir: Path,
    expect_sha256: str | None = None,
    random_size: str = "tiny",
    force: bool = False,
) -> dict[str, ArtifactRecord]:
    """Export both SAM 2 image graphs; reuse cached ones built from the same checkpoint."""
    out_dir = Path(out_dir)
    random_weights = checkpoint is None
    if random_weights:
        checkpoint = random_checkpoint(out_dir / "checkpoints" / f"sam2-random-{random_size}",
                                       lambda: Sam2Model(random_config(random_size)),
                                       fingerprint=random_config(random_size).to_json_string())
        log(f"no SAM 2 checkpoint given: using RANDOM weights ({random_size} config) at {checkpoint}")
    checkpoint = Path(checkpoint)
    with Step(f"hashing checkpoint {checkpoint}"):
        checkpoint_sha = verify_checkpoint(checkpoint, expect_sha256)
    manifest = Manifest(out_dir)
    settings = {"family": "sam2", "random_size": random_size if random_weights else None}
    names = (ENCODER, DECODER)
    if not force and all(manifest.reusable(n, checkpoint_sha, artifact_settings(settings, OPSETS[n], USE_DYNAMO[n]))
                         for n in names):
        log("SAM 2 graphs are up to date (cached by checkpoint hash and settings)")
        return {n: manifest.records[n] for n in names}
    with Step(f"loading SAM 2 from {checkpoint}"):
        model = load_sam2(checkpoint)
    with Step("checking the decoder wrapper against Sam2Model.forward"):
        err = check_decoder_against_reference(model)
    log(f"decoder wrapper vs Sam2Model.forward: max abs error {err:.2e}")
    config = sam2_model_config(model, str(checkpoint), random_weights)
    records = {}
    for spec in graph_specs(model):
        records[spec.name] = export_artifact(spec, manifest, str(checkpoint), checkpoint_sha, random_weights,
                                             settings, model_config=config, force=force)
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export SAM 2 image encoder and prompt decoder to ONNX")
    parser.add_argument("--checkpoint", type=Path, help="HF directory or official .pt; random weights if omitted")
    parser.add_argument("--out", type=Path, default=Path("artifacts"))
    parser.add_argument("--expect-sha256")
    parser.add_argument("--random-size", choices=RANDOM_CONFIGS, default="tiny")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    export_sam2(args.checkpoint, args.out, args.expect_sha256, args.random_size, args.force)


if __name__ == "__main__":
    main()
