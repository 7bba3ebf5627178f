"""SAM 2 image encoder and prompt decoder -> ONNX.

Two graphs, split where the work splits at serving time: the encoder runs once per image, the
decoder once per prompt on cached embeddings.

- `sam2_image_encoder`: pixel_values [B,3,1024,1024] -> high_res_feats_0, high_res_feats_1,
  image_embeddings (the three levels `Sam2Model.get_image_embeddings` returns).
- `sam2_prompt_decoder`: P prompts of N points each -> multimask and single-mask low-res logits,
  IoU predictions, object score. Boxes are the corner points labelled 2 and 3; every prompt ends
  with one padding point labelled -1, which is exactly the token set transformers builds for
  points, boxes, points+box and mask-only prompts. The embeddings, `mask_input` and
  `has_mask_input` come either once (R = 1: every prompt is on that image, as transformers does it)
  or once per prompt (R = P: prompts of different images and mask inputs in one call, the batch the
  image session builds from several sessions' requests). Prompts of different lengths are padded
  to a common N with points labelled `ABSENT_LABEL`, which are left out of every attention (a key
  mask), so a padded prompt gives the result it gives alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Sam2Config, Sam2Model

from segserve.common.sam2_transforms import ABSENT_LABEL

from .manifest import ArtifactRecord, Manifest, verify_checkpoint
from .onnx_export import (DEFAULT_OPSET, GraphSpec, Step, artifact_settings, export_artifact, family_parser, log,
                          random_checkpoint)

ENCODER = "sam2_image_encoder"
DECODER = "sam2_prompt_decoder"
# The dynamo exporter gives a faster encoder graph; the decoder exports faster with the legacy one.
USE_DYNAMO = {ENCODER: True, DECODER: False}
# Opset 20 lets the encoder keep GELU as one op (about 6% faster on CPU ORT than opset 18, same
# accuracy); opset 20 is within what ORT >= 1.17 and TensorRT 10 parse.
OPSETS = {ENCODER: 20, DECODER: DEFAULT_OPSET}
RANDOM_CONFIGS = ("tiny", "hiera-tiny")
# Graphs whose signature or semantics changed: an artifact cached before is exported again.
# batch-v1: the decoder takes one image per prompt (R = P) and absent (padding) points.
GRAPH_VERSIONS = {DECODER: "batch-v1"}


def _graph_settings(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    return {**settings, "graph": GRAPH_VERSIONS[name]} if name in GRAPH_VERSIONS else settings


# The attention logit of a masked key: exp() of it is exactly 0 in fp32, and it is finite in fp16.
_MASKED = -1.0e4


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
    """Prompt encoder + mask decoder for P prompts, both output modes at once. Embeddings, mask
    input and has-mask flag have R = 1 (one image for every prompt) or R = P rows (one per prompt)."""

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
        dense = torch.where(has_mask_input.reshape(-1, 1, 1, 1) > 0, encoder.mask_embed(mask_input), no_mask)
        # Additive key mask of the tokens: 4 + num_mask_tokens output tokens, then the points.
        absent = point_labels == ABSENT_LABEL
        fixed = torch.zeros_like(absent[:, :1]).expand(-1, 2 + self.decoder.num_mask_tokens)
        key_mask = torch.where(torch.cat([fixed, absent], dim=1), _MASKED, 0.0)[:, None, None, :]
        masks, iou, object_score = self._all_masks(image_embeddings, sparse, dense, high_res_feats_0, high_res_feats_1,
                                                   key_mask)
        if self.decoder.dynamic_multimask_via_stability:
            single_mask, single_iou = self.decoder._dynamic_multimask_via_stability(masks, iou)
        else:
            single_mask, single_iou = masks[:, :, 0:1], iou[:, :, 0:1]
        return masks[0, :, 1:], iou[0, :, 1:], single_mask[0], single_iou[0], object_score[0]

    def _all_masks(self, image_embeddings, sparse, dense, feat_s0, feat_s1, key_mask):
        # Sam2MaskDecoder.forward up to its output selection, so one pass yields all four tokens.
        dec = self.decoder
        _, channels, height, width = image_embeddings.shape
        prompts = sparse.shape[1]
        tokens = torch.cat([dec.obj_score_token.weight, dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat((tokens.repeat(1, prompts, 1, 1), sparse), dim=2)
        # R = 1 rows broadcast to every prompt, R = P rows are one per prompt (expand: no copy).
        image = (image_embeddings + dense).expand(prompts, -1, -1, -1)
        image_pe = self.image_pe.expand(prompts, -1, -1, -1)
        tokens, image = _two_way_transformer(dec.transformer, tokens, image, image_pe, key_mask)
        iou_token = tokens[:, :, 1, :]
        mask_tokens = tokens[:, :, 2:2 + dec.num_mask_tokens, :]
        image = image.transpose(2, 3).reshape(prompts, channels, height, width)
        up = dec.upscale_conv1(image) + feat_s1.expand(prompts, -1, -1, -1)
        up = dec.activation(dec.upscale_layer_norm(up))
        up = dec.activation(dec.upscale_conv2(up) + feat_s0.expand(prompts, -1, -1, -1))
        hyper = torch.stack([mlp(mask_tokens[:, :, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=2)
        _, up_channels, up_h, up_w = up.shape
        masks = (hyper @ up.reshape(1, prompts, up_channels, up_h * up_w)).reshape(1, prompts, -1, up_h, up_w)
        return masks, dec.iou_prediction_head(iou_token), dec.pred_obj_score_head(tokens[:, :, 0, :])


def _attend(attn, query, key, value, key_mask=None):
    """`Sam2Attention.forward` (eager) with an additive key mask [P, 1, 1, keys] where keys are tokens."""
    batch, point_batch = query.shape[:2]
    shape = (batch * point_batch, -1, attn.num_attention_heads, attn.head_dim)
    q = attn.q_proj(query).view(*shape).transpose(1, 2)
    k = attn.k_proj(key).view(*shape).transpose(1, 2)
    v = attn.v_proj(value).view(*shape).transpose(1, 2)
    weights = torch.matmul(q, k.transpose(2, 3)) * attn.scaling
    if key_mask is not None:
        weights = weights + key_mask
    out = torch.matmul(torch.softmax(weights, dim=-1), v).transpose(1, 2)
    return attn.o_proj(out.reshape(batch, point_batch, -1, attn.num_attention_heads * attn.head_dim))


def _two_way_transformer(transformer, point_embeddings, image, image_pe, key_mask):
    """`Sam2TwoWayTransformer.forward` where absent point tokens are never attended to: keys of the
    token self-attention and of the image-to-token attention are masked (queries of absent tokens
    are computed and never read)."""
    keys = image.flatten(2).transpose(1, 2).unsqueeze(1)
    key_pe = image_pe.flatten(2).transpose(1, 2).unsqueeze(1)
    queries = point_embeddings
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = _attend(layer.self_attn, queries, queries, queries, key_mask)
        else:
            query = queries + point_embeddings
            queries = queries + _attend(layer.self_attn, query, query, queries, key_mask)
        queries = layer.layer_norm1(queries)
        queries = layer.layer_norm2(queries + _attend(layer.cross_attn_token_to_image, queries + point_embeddings,
                                                      keys + key_pe, keys))
        queries = layer.layer_norm3(queries + layer.mlp(queries))
        keys = layer.layer_norm4(keys + _attend(layer.cross_attn_image_to_token, keys + key_pe,
                                                queries + point_embeddings, queries, key_mask))
    query = queries + point_embeddings
    queries = queries + _attend(transformer.final_attn_token_to_image, query, keys + key_pe, keys)
    return transformer.layer_norm_final_attn(queries), keys


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


def _batched_case(model: Sam2Model, seed: int) -> dict[str, torch.Tensor]:
    """Three prompts of three images (R = P), 1 to 4 points padded with absent points, one with a mask."""
    gen = torch.Generator().manual_seed(seed)
    size = model.config.prompt_encoder_config.image_size
    low_res = 4 * size // model.config.prompt_encoder_config.patch_size
    feats = {k: v.repeat(3, *[1] * (v.ndim - 1)) * torch.tensor([1.0, -0.5, 2.0]).reshape(3, *[1] * (v.ndim - 1))
             for k, v in _example_embeddings(model).items()}
    labels = torch.tensor([[1, -1, ABSENT_LABEL, ABSENT_LABEL], [1, 0, 2, 3], [2, 3, -1, ABSENT_LABEL]], dtype=torch.int32)
    return {**feats, "point_coords": torch.rand(3, 4, 2, generator=gen) * size, "point_labels": labels,
            "mask_input": torch.randn(3, 1, low_res, low_res, generator=gen) * 4,
            "has_mask_input": torch.tensor([0.0, 1.0, 0.0])}


def check_batched_decoder(model: Sam2Model, atol: float = 1e-5) -> float:
    """A batch of prompts of different images, point counts and mask inputs (R = P, absent points)
    must give each prompt what it gives alone (R = 1, no padding)."""
    graph = DecoderGraph(model).eval()
    case = _batched_case(model, seed=7)
    names = ("image_embeddings", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels",
             "mask_input", "has_mask_input")
    with torch.no_grad():
        batched = graph(*[case[n] for n in names])
        worst = 0.0
        for p in range(case["point_labels"].shape[0]):
            keep = case["point_labels"][p] != ABSENT_LABEL
            solo = graph(*[case[n][p:p + 1] for n in names[:3]], case["point_coords"][p:p + 1, keep],
                         case["point_labels"][p:p + 1, keep], case["mask_input"][p:p + 1], case["has_mask_input"][p:p + 1])
            worst = max(worst, *(float((b[p:p + 1] - s).abs().max()) for b, s in zip(batched, solo)))
    if worst > atol:
        raise RuntimeError(f"batched decoder differs from one prompt at a time by {worst:.3g} (> {atol})")
    return worst


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
                      **{n: {0: "images"} for n in ("image_embeddings", "high_res_feats_0", "high_res_feats_1",
                                                    "mask_input", "has_mask_input")},
                      "multi_masks": {0: "prompts"}, "multi_iou": {0: "prompts"}, "single_mask": {0: "prompts"},
                      "single_iou": {0: "prompts"}, "object_score_logits": {0: "prompts"}},
        parity_inputs=[_decoder_case(model, 1, 1, True, 3), _decoder_case(model, 5, 6, True, 4),
                       _decoder_case(model, 1, 4, False, 5), _batched_case(model, 6)],
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
    if not force and all(manifest.reusable(n, checkpoint_sha, artifact_settings(_graph_settings(n, settings), OPSETS[n],
                                                                                USE_DYNAMO[n]))
                         for n in names):
        log("SAM 2 graphs are up to date (cached by checkpoint hash and settings)")
        return {n: manifest.records[n] for n in names}
    with Step(f"loading SAM 2 from {checkpoint}"):
        model = load_sam2(checkpoint)
    with Step("checking the decoder wrapper against Sam2Model.forward"):
        err = check_decoder_against_reference(model)
    log(f"decoder wrapper vs Sam2Model.forward: max abs error {err:.2e}")
    with Step("checking the batched decoder against one prompt at a time"):
        err = check_batched_decoder(model)
    log(f"batched decoder vs one prompt at a time: max abs error {err:.2e}")
    config = sam2_model_config(model, str(checkpoint), random_weights)
    records = {}
    for spec in graph_specs(model):
        records[spec.name] = export_artifact(spec, manifest, str(checkpoint), checkpoint_sha, random_weights,
                                             _graph_settings(spec.name, settings), model_config=config, force=force)
    return records


def main(argv: list[str] | None = None) -> None:
    args = family_parser("Export SAM 2 image encoder and prompt decoder to ONNX", RANDOM_CONFIGS).parse_args(argv)
    export_sam2(args.checkpoint, args.out, args.expect_sha256, args.random_size, args.force)


if __name__ == "__main__":
    main()
