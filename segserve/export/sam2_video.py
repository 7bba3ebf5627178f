"""SAM 2 video (transformers `Sam2VideoModel`) -> five ONNX graphs for the video tracker.

The tracker (`segserve/triton_models/sam2_video_tracker.py`) keeps the memory bank in numpy and
runs these graphs, split where `Sam2VideoModel`'s own per-frame step splits:

- `sam2_video_image_encoder`: pixel_values [B,3,S,S] -> feat_s0, feat_s1 (already projected by the
  decoder's conv_s0/conv_s1), vision_feat (top level, raw), vision_feat_no_memory (plus the learnt
  "no memory" embedding, the input of an initial conditioning frame), vision_pos (its sine position
  encoding).
- `sam2_video_memory_attention`: the current frame's features conditioned on F spatial memories
  (each with its temporal-position index) and P object pointers (each with its normalised temporal
  offset): the memory bank assembly of `_prepare_memory_conditioned_features` after the selection,
  which stays in the tracker. F and P are dynamic, and so is the number of objects B (`objects`
  axis): B objects with F memories and P pointers each, on one frame's features ([1, ...],
  broadcast) or one per object (`images` axis).
- `sam2_video_decoder`: `_single_frame_forward` on given embeddings: prompt points -> the selected
  low-res mask, the high-res mask for memory, the object pointer and the object score, with the
  multimask / stability selection as a runtime flag; B objects with the same point count per call,
  each with its own features, points and flag, the high-res features broadcast or per object.
- `sam2_video_memory_encoder`: `_encode_new_memory` (mask for memory: binarised when it came from a
  click, else sigmoid; scale/bias; memory encoder; occlusion embedding) for B objects at once. The
  bfloat16 storage of the reference is applied by the tracker.
- `sam2_video_mask_prompt`: `_use_mask_as_output` for a mask prompt (the mask is the output; the
  object pointer comes from a decoder run with the mask as dense prompt).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Sam2VideoConfig, Sam2VideoModel
from transformers.models.sam2_video.modeling_sam2_video import get_1d_sine_pe

from .manifest import ArtifactRecord, Manifest, verify_checkpoint
from .onnx_export import (DEFAULT_OPSET, GraphSpec, Step, artifact_settings, export_artifact, family_parser, log,
                          random_checkpoint)

ENCODER = "sam2_video_image_encoder"
MEMORY_ATTENTION = "sam2_video_memory_attention"
DECODER = "sam2_video_decoder"
MEMORY_ENCODER = "sam2_video_memory_encoder"
MASK_PROMPT = "sam2_video_mask_prompt"
GRAPHS = (ENCODER, MEMORY_ATTENTION, DECODER, MEMORY_ENCODER, MASK_PROMPT)
RANDOM_CONFIGS = ("tiny", "hiera-tiny", "hiera-tiny-512")
NO_OBJ_SCORE = -1024.0


def random_config(size: str = "tiny") -> Sam2VideoConfig:
    """`hiera-tiny`: sam2.1-hiera-tiny video shapes (`hiera-tiny-512`: at 512x512). `tiny`: a small
    model at 256x256 for tests
    (memory dim stays 64, hidden size 128 > 64, so object pointers are split as in the real one)."""
    if size == "hiera-tiny":
        return Sam2VideoConfig()
    if size == "hiera-tiny-512":  # the same network at 512x512 (benchmarks on small machines)
        return Sam2VideoConfig(
            vision_config={"backbone_config": {"model_type": "sam2_hiera_det_model", "image_size": [512, 512]},
                           "backbone_feature_sizes": [[128, 128], [64, 64], [32, 32]]},
            prompt_encoder_config={"image_size": 512}, image_size=512, memory_attention_rope_feat_sizes=[32, 32])
    if size != "tiny":
        raise ValueError(f"unknown random SAM 2 video config {size!r}; choose one of {RANDOM_CONFIGS}")
    hidden, image = 128, 256
    config = Sam2VideoConfig(
        vision_config={
            "backbone_config": {
                "model_type": "sam2_hiera_det_model",
                "hidden_size": 16,
                "embed_dim_per_stage": [16, 32, 64, 128],
                "num_attention_heads_per_stage": [1, 1, 2, 2],
                "blocks_per_stage": [1, 1, 2, 1],
                "window_size_per_stage": [8, 4, 8, 4],
                "global_attention_blocks": [3],
                "image_size": [image, image],
            },
            "backbone_channel_list": [128, 64, 32, 16],
            "backbone_feature_sizes": [[64, 64], [32, 32], [16, 16]],
            "fpn_hidden_size": hidden,
        },
        prompt_encoder_config={"hidden_size": hidden, "image_size": image},
        mask_decoder_config={"hidden_size": hidden, "mlp_dim": 256, "num_attention_heads": 2,
                             "iou_head_hidden_dim": hidden},
        image_size=image,
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=2,
        memory_attention_feed_forward_hidden_size=256,
        memory_attention_rope_feat_sizes=[16, 16],
        memory_encoder_hidden_size=hidden,
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=256,
    )
    # The default 0.02 init gives near-zero logits; 0.15 gives logits of order 1 (see sam2.py).
    for sub in (config, config.vision_config, config.vision_config.backbone_config,
                config.prompt_encoder_config, config.mask_decoder_config):
        sub.initializer_range = 0.15
    return config


def init_video_parameters(model: Sam2VideoModel, seed: int = 0, object_score_bias: float = 6.0,
                          memory_init_std: float = 0.1) -> Sam2VideoModel:
    """`Sam2VideoModel` initialises its video-only parameters (no-memory / no-object embeddings,
    temporal encodings, occlusion embedding) to zeros; random ones make every term of the memory
    path matter in parity checks, as trained weights do."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("no_memory_embedding", "no_memory_positional_encoding", "memory_temporal_positional_encoding",
                     "no_object_pointer", "occlusion_spatial_embedding_parameter"):
            param = getattr(model, name, None)
            if param is not None:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
        # Random heads call every tracked frame "object absent" (masks all -1024); a positive bias
        # on the object-score head keeps objects present, so tracked masks are compared for real.
        model.mask_decoder.pred_obj_score_head.proj_out.bias.add_(object_score_bias)
        # At the 0.15 init of the rest, the memory path amplifies float rounding (and the flips of
        # bfloat16 storage) tenfold per frame: a chaotic tracker no implementation could match.
        # 0.1 keeps memory decisive (objects' masks differ) with errors bounded.
        for module in (model.memory_attention, model.memory_encoder):
            for layer in module.modules():
                if isinstance(layer, (nn.Linear, nn.Conv2d)):
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * memory_init_std)
                    if layer.bias is not None:
                        layer.bias.zero_()
    return model


def build_random_model(size: str) -> Sam2VideoModel:
    return init_video_parameters(Sam2VideoModel(random_config(size)))


def load_sam2_video(checkpoint: Path) -> Sam2VideoModel:
    checkpoint = Path(checkpoint)
    if checkpoint.is_file():
        from .meta_checkpoint import load_meta_sam2_video

        model = load_meta_sam2_video(checkpoint)
    elif (checkpoint / "config.json").is_file():
        model = Sam2VideoModel.from_pretrained(checkpoint)
    else:
        raise FileNotFoundError(f"{checkpoint} is neither a Hugging Face checkpoint directory nor a .pt file")
    return model.eval()


class EncoderGraph(nn.Module):
    def __init__(self, model: Sam2VideoModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        model = self.model
        batch = pixel_values.shape[0]
        out = model.get_image_features(pixel_values, return_dict=True)
        sizes = model.backbone_feature_sizes
        feats = [f.permute(1, 2, 0).reshape(batch, -1, *s) for f, s in zip(out.fpn_hidden_states, sizes)]
        pos = out.fpn_position_encoding[-1].permute(1, 2, 0).reshape(batch, -1, *sizes[-1])
        no_memory = feats[2] + model.no_memory_embedding.reshape(1, -1, 1, 1)
        return feats[0], feats[1], feats[2], no_memory, pos


class MemoryAttentionGraph(nn.Module):
    """Memory attention for B objects at once (`objects` axis), each with F memories and P pointers
    of its own: `maskmem_*` [B, F, ...], `maskmem_tpos` [B, F], `object_pointers` [B, P, C],
    `pointer_tpos` [B, P]. `vision_feat` / `vision_pos` are [1, ...] (one frame, broadcast to every
    object) or [B, ...]. Objects with other F or P go in another call (the tracker groups them)."""

    def __init__(self, model: Sam2VideoModel):
        super().__init__()
        self.model = model
        self.mem_dim = model.mem_dim
        self.hidden = model.hidden_dim

    def forward(self, vision_feat, vision_pos, maskmem_features, maskmem_pos, maskmem_tpos, object_pointers,
                pointer_tpos):
        model = self.model
        mem_dim = self.mem_dim
        batch = maskmem_features.shape[0]
        _, channels, height, width = vision_feat.shape
        vision_feat = vision_feat.expand(batch, -1, -1, -1)
        vision_pos = vision_pos.expand(batch, -1, -1, -1)
        current = vision_feat.flatten(2).permute(2, 0, 1)  # HW x B x C
        current_pos = vision_pos.flatten(2).permute(2, 0, 1)
        tpos = model.memory_temporal_positional_encoding.reshape(-1, mem_dim)[maskmem_tpos]  # B x F x mem
        # (frame, y, x) major, objects on the batch axis: HW*F x B x mem
        memory = maskmem_features.permute(1, 3, 4, 0, 2).reshape(-1, batch, mem_dim)
        memory_pos = (maskmem_pos + tpos[:, :, :, None, None]).permute(1, 3, 4, 0, 2).reshape(-1, batch, mem_dim)
        if model.config.enable_temporal_pos_encoding_for_object_pointers:
            sine = get_1d_sine_pe(pointer_tpos, dim=self.hidden)  # B x P x hidden
            pointer_pos = model.temporal_positional_encoding_projection_layer(sine)
        else:
            pointer_pos = torch.zeros(*pointer_tpos.shape, mem_dim, dtype=object_pointers.dtype)
        pointer_pos = pointer_pos.permute(1, 0, 2)  # P x B x mem
        splits = self.hidden // mem_dim
        if splits > 1:
            # each pointer split into `splits` tokens of mem_dim, in order, its position repeated
            pointers = object_pointers.reshape(batch, -1, splits, mem_dim).permute(1, 2, 0, 3).reshape(-1, batch, mem_dim)
            pointer_pos = pointer_pos.repeat_interleave(splits, dim=0)
        else:
            pointers = object_pointers.permute(1, 0, 2)
        conditioned = model.memory_attention(
            current_vision_features=current,
            current_vision_position_embeddings=current_pos,
            memory=torch.cat([memory, pointers], dim=0),
            memory_posision_embeddings=torch.cat([memory_pos, pointer_pos], dim=0),
            num_object_pointer_tokens=pointers.shape[0],
        )
        # [1, B, HW, C] (the layers keep a head axis, moved to the front on the way out)
        return conditioned[0].transpose(1, 2).reshape(batch, channels, height, width)


class DecoderGraph(nn.Module):
    """`_single_frame_forward` on precomputed embeddings, for B objects at once (`objects` axis):
    `pix_feat` [B, C, h, w], `point_coords` [B, N, 2] / `point_labels` [B, N] (every object with the
    same N: padding would add tokens and change the result, so the tracker groups objects by point
    count), `multimask` [B]; `feat_s0` / `feat_s1` [1, ...] (one frame, broadcast) or [B, ...].
    The points already end with the padding point(s) the prompt encoder would add; `multimask` > 0
    selects the best of the three multimask outputs, else the single output (stability-selected)."""

    def __init__(self, model: Sam2VideoModel):
        super().__init__()
        self.model = model
        self.register_buffer("image_pe", model.get_image_wide_positional_embeddings().detach(), persistent=False)

    def forward(self, pix_feat, feat_s0, feat_s1, point_coords, point_labels, multimask):
        dense = self.model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand_as(pix_feat)
        return self.decode(pix_feat, feat_s0, feat_s1, point_coords, point_labels, multimask, dense)

    def decode(self, pix_feat, feat_s0, feat_s1, point_coords, point_labels, multimask, dense):
        model = self.model
        dec = model.mask_decoder
        batch, channels, height, width = pix_feat.shape
        sparse = model.prompt_encoder._embed_points(point_coords.unsqueeze(1), point_labels.unsqueeze(1), pad=False)
        tokens = torch.cat([dec.obj_score_token.weight, dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat((tokens.reshape(1, 1, -1, channels).expand(batch, -1, -1, -1), sparse), dim=2)
        tokens, image = dec.transformer(point_embeddings=tokens, image_embeddings=pix_feat + dense,
                                        image_positional_embeddings=self.image_pe, attention_similarity=None)
        iou_token = tokens[:, :, 1, :]
        mask_tokens = tokens[:, :, 2:2 + dec.num_mask_tokens, :]  # B x 1 x 4 x C
        image = image.transpose(2, 3).reshape(batch, channels, height, width)
        up = dec.upscale_conv1(image) + feat_s1
        up = dec.activation(dec.upscale_layer_norm(up))
        up = dec.activation(dec.upscale_conv2(up) + feat_s0)
        hyper = torch.stack([mlp(mask_tokens[:, :, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=2)
        _, up_channels, up_h, up_w = up.shape
        masks = (hyper @ up.reshape(batch, 1, up_channels, up_h * up_w)).reshape(batch, 1, -1, up_h, up_w)
        iou = dec.iou_prediction_head(iou_token)  # B x 1 x 4
        object_score = dec.pred_obj_score_head(tokens[:, :, 0, :])  # B x 1 x 1
        # multimask: the best of tokens 1..3 by predicted IoU; its token makes the pointer.
        best = (torch.argmax(iou[:, 0, 1:], dim=-1) + 1).reshape(batch, 1)  # B x 1
        multi_mask = torch.gather(masks[:, 0], 1, best[:, :, None, None].expand(-1, -1, up_h, up_w))  # B x 1 x h x w
        multi_token = torch.gather(mask_tokens[:, 0], 1, best[:, :, None].expand(-1, -1, channels))  # B x 1 x C
        if dec.dynamic_multimask_via_stability:
            single_mask, _ = dec._dynamic_multimask_via_stability(masks, iou)
            single_mask = single_mask[:, 0]
        else:
            single_mask = masks[:, 0, 0:1]
        use_multi = multimask.reshape(batch, 1, 1, 1) > 0
        low_res = torch.where(use_multi, multi_mask, single_mask)  # B x 1 x h x w
        token = torch.where(use_multi.reshape(batch, 1, 1), multi_token, mask_tokens[:, 0, 0:1]).reshape(batch, channels)
        appearing = object_score.reshape(batch, 1) > 0
        low_res = torch.where(appearing.reshape(batch, 1, 1, 1), low_res, torch.full_like(low_res, NO_OBJ_SCORE))
        high_res = F.interpolate(low_res, size=(model.image_size, model.image_size), mode="bilinear",
                                 align_corners=False)
        pointer = model.object_pointer_proj(token)
        weight = appearing.to(pointer.dtype)
        pointer = weight * pointer + (1 - weight) * model.no_object_pointer
        return low_res, high_res, pointer, object_score.reshape(batch, 1)


class MaskPromptGraph(nn.Module):
    """`_use_mask_as_output`: a mask prompt is taken as the frame's output (logits -10 / +10), and
    the object pointer comes from a decoder run on the raw frame features (no memory) with the mask
    as the dense prompt (`mask_downsample` then the prompt encoder's `mask_embed`) and one padding
    point, multimask. Presence (score +/-10, pointer vs `no_object_pointer`) follows the mask.
    `mask` is the {0, 1} mask at image_size x image_size, as `Sam2VideoProcessor` stores it."""

    def __init__(self, model: Sam2VideoModel):
        super().__init__()
        self.decoder = DecoderGraph(model)
        self.model = model
        size, low = model.image_size, model.prompt_encoder.mask_input_size[0]
        # Antialiased bilinear downsampling has no ONNX op at opset 17: use the same resampling
        # as a fixed matrix (torch's own weights, taken by resampling the identity).
        eye = torch.eye(size).reshape(1, 1, size, size)
        resample = F.interpolate(eye, size=(size, low), mode="bilinear", align_corners=False, antialias=True)[0, 0]
        self.register_buffer("resample", resample.detach().clone(), persistent=False)  # [size, low]

    def forward(self, vision_feat, mask):
        model = self.model
        high_res = mask * 20.0 - 10.0
        if torch.onnx.is_in_onnx_export():
            low_res = (self.resample.T @ high_res[0, 0] @ self.resample)[None, None]
        else:  # the reference arithmetic, for the parity check
            low_res = F.interpolate(high_res, size=model.prompt_encoder.mask_input_size, mode="bilinear",
                                    align_corners=False, antialias=True)
        dense = model.prompt_encoder.mask_embed(model.mask_downsample(mask))
        coords = torch.zeros(1, 2, 2, dtype=vision_feat.dtype)
        labels = torch.full((1, 2), -1, dtype=torch.int64)
        # The pointer comes from the decoder's tokens alone: the high-resolution features only shape
        # the (unused) decoder masks, so zeros stand in for them and the exporter drops that branch.
        shapes = _feature_shapes(model)
        feat_s0, feat_s1 = torch.zeros(shapes["feat_s0"]), torch.zeros(shapes["feat_s1"])
        _, _, pointer, _ = self.decoder.decode(vision_feat, feat_s0, feat_s1, coords, labels,
                                               torch.ones(1, dtype=vision_feat.dtype), dense)
        appearing = (mask.flatten(1) > 0).any(dim=1, keepdim=True).to(vision_feat.dtype)  # 1 x 1
        pointer = appearing * pointer + (1 - appearing) * model.no_object_pointer
        return low_res, high_res, pointer, appearing * 20.0 - 10.0


class MemoryEncoderGraph(nn.Module):
    def __init__(self, model: Sam2VideoModel):
        super().__init__()
        self.model = model

    def forward(self, vision_feat, high_res_masks, object_score_logits, binarize):
        model = self.model
        size = model.prompt_encoder.mask_input_size[0] * 4
        masks = high_res_masks
        if masks.shape[-1] != size:
            masks = F.interpolate(masks, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        mask_for_mem = torch.where(binarize.reshape(()) > 0, (masks > 0).to(masks.dtype), torch.sigmoid(masks))
        mask_for_mem = mask_for_mem * model.config.sigmoid_scale_for_mem_enc + model.config.sigmoid_bias_for_mem_enc
        features, pos = model.memory_encoder(vision_feat, mask_for_mem)
        if model.occlusion_spatial_embedding_parameter is not None:
            absent = 1 - (object_score_logits > 0).to(features.dtype)  # B x 1
            features = features + absent[:, :, None, None] * model.occlusion_spatial_embedding_parameter[..., None, None]
        return features, pos.expand(features.shape[0], -1, -1, -1)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _feature_shapes(model: Sam2VideoModel) -> dict[str, tuple[int, ...]]:
    channels = model.hidden_dim
    sizes = model.backbone_feature_sizes
    return {"feat_s0": (1, channels // 8, *sizes[0]), "feat_s1": (1, channels // 4, *sizes[1]),
            "top": (1, channels, *sizes[2])}


def _memory_attention_case(model: Sam2VideoModel, frames: int, pointers: int, seed: int, objects: int = 1,
                           images: int = 1) -> dict[str, torch.Tensor]:
    """`objects` objects with different memories and pointers; `images` 1: one frame for all of them."""
    gen = _gen(seed)
    shape = _feature_shapes(model)["top"]
    mem = (model.mem_dim, *shape[2:])
    return {
        "vision_feat": torch.randn(images, *shape[1:], generator=gen),
        "vision_pos": torch.randn(images, *shape[1:], generator=gen),
        "maskmem_features": torch.randn(objects, frames, *mem, generator=gen),
        "maskmem_pos": torch.randn(objects, frames, *mem, generator=gen),
        "maskmem_tpos": torch.randint(0, model.num_maskmem, (objects, frames), generator=gen),
        "object_pointers": torch.randn(objects, pointers, model.hidden_dim, generator=gen),
        "pointer_tpos": torch.rand(objects, pointers, generator=gen),
    }


def _decoder_case(model: Sam2VideoModel, points: int, multimask: bool | list[bool], seed: int,
                  images: int = 1) -> dict[str, torch.Tensor]:
    """One object per `multimask` entry, each with its own features and points."""
    gen = _gen(seed)
    shapes = _feature_shapes(model)
    flags = [multimask] if isinstance(multimask, bool) else multimask
    objects = len(flags)
    labels = torch.randint(0, 4, (objects, points), generator=gen, dtype=torch.int32)
    labels[:, -1] = -1
    coords = torch.rand(objects, points, 2, generator=gen) * model.image_size
    coords[:, -1] = 0.0
    return {
        "pix_feat": torch.randn(objects, *shapes["top"][1:], generator=gen),
        "feat_s0": torch.randn(images, *shapes["feat_s0"][1:], generator=gen),
        "feat_s1": torch.randn(images, *shapes["feat_s1"][1:], generator=gen),
        "point_coords": coords,
        "point_labels": labels,
        "multimask": torch.tensor([1.0 if m else 0.0 for m in flags]),
    }


def _memory_encoder_case(model: Sam2VideoModel, batch: int, binarize: bool, seed: int) -> dict[str, torch.Tensor]:
    gen = _gen(seed)
    size = model.image_size
    scores = torch.randn(batch, 1, generator=gen)
    scores[0] = -abs(scores[0]) - 0.1  # one absent object, so the occlusion term is exercised
    return {
        "vision_feat": torch.randn(batch, *_feature_shapes(model)["top"][1:], generator=gen),
        "high_res_masks": torch.randn(batch, 1, size, size, generator=gen) * 8,
        "object_score_logits": scores,
        "binarize": torch.tensor([1.0 if binarize else 0.0]),
    }


def _mask_prompt_case(model: Sam2VideoModel, seed: int, empty: bool = False) -> dict[str, torch.Tensor]:
    gen = _gen(seed)
    shapes = _feature_shapes(model)
    size = model.image_size
    mask = torch.zeros(1, 1, size, size)
    if not empty:  # a random rectangle: edges anywhere relative to the 4x4 low-res cells
        y0, x0 = (int(v) for v in torch.randint(0, size // 2, (2,), generator=gen))
        y1, x1 = (int(v) for v in torch.randint(size // 2 + 1, size, (2,), generator=gen))
        mask[..., y0:y1, x0:x1] = 1.0
    return {
        "vision_feat": torch.randn(shapes["top"], generator=gen),
        "mask": mask,
    }


# The image encoder, as for images, is faster from the dynamo exporter at opset 20 (~25% at 512²
# on CPU ORT, faster than eager); the small graphs keep the legacy exporter's dynamic shapes.
EXPORTERS = {ENCODER: {"dynamo": True, "opset": 20}}


def _exporter(name: str) -> dict[str, Any]:
    return EXPORTERS.get(name, {"dynamo": False, "opset": DEFAULT_OPSET})


# Graphs whose signature changed: an artifact cached before the change is exported again.
# objects-v1: the decoder and memory attention take every object of a frame in one call.
GRAPH_VERSIONS = {DECODER: "objects-v1", MEMORY_ATTENTION: "objects-v1"}


def _graph_settings(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    return {**settings, "graph": GRAPH_VERSIONS[name]} if name in GRAPH_VERSIONS else settings


def graph_specs(model: Sam2VideoModel) -> list[GraphSpec]:
    size = model.image_size
    encoder = GraphSpec(
        name=ENCODER, module=EncoderGraph(model),
        example_inputs={"pixel_values": torch.randn(2, 3, size, size, generator=_gen(0))},
        output_names=["feat_s0", "feat_s1", "vision_feat", "vision_feat_no_memory", "vision_pos"],
        dynamic_axes={n: {0: "batch"} for n in ("pixel_values", "feat_s0", "feat_s1", "vision_feat",
                                                  "vision_feat_no_memory", "vision_pos")},
        parity_inputs=[{"pixel_values": torch.randn(1, 3, size, size, generator=_gen(1))}],
        **_exporter(ENCODER),
    )
    # Memory attention and the decoder take B objects of one frame per call (`objects` axis); the
    # frame's features are given once ([1, ...], `images` axis) and broadcast, or one per object.
    attention = GraphSpec(
        name=MEMORY_ATTENTION, module=MemoryAttentionGraph(model),
        example_inputs=_memory_attention_case(model, 3, 4, seed=2, objects=2, images=2),
        output_names=["pix_feat"],
        dynamic_axes={"vision_feat": {0: "images"}, "vision_pos": {0: "images"},
                      "maskmem_features": {0: "objects", 1: "frames"}, "maskmem_pos": {0: "objects", 1: "frames"},
                      "maskmem_tpos": {0: "objects", 1: "frames"},
                      "object_pointers": {0: "objects", 1: "pointers"}, "pointer_tpos": {0: "objects", 1: "pointers"},
                      "pix_feat": {0: "objects"}},
        parity_inputs=[_memory_attention_case(model, 1, 1, 3), _memory_attention_case(model, 7, 16, 4),
                       _memory_attention_case(model, 5, 2, 5),
                       _memory_attention_case(model, 2, 0, 13),  # no pointer (start before any prompt)
                       _memory_attention_case(model, 7, 9, 17, objects=3),  # three objects, one frame
                       _memory_attention_case(model, 4, 3, 18, objects=2, images=2)],
    )
    decoder = GraphSpec(
        name=DECODER, module=DecoderGraph(model),
        example_inputs=_decoder_case(model, 3, [True, False], seed=6, images=2),
        output_names=["low_res_mask", "high_res_mask", "object_pointer", "object_score_logits"],
        dynamic_axes={"pix_feat": {0: "objects"}, "feat_s0": {0: "images"}, "feat_s1": {0: "images"},
                      "point_coords": {0: "objects", 1: "points"}, "point_labels": {0: "objects", 1: "points"},
                      "multimask": {0: "objects"},
                      **{n: {0: "objects"} for n in ("low_res_mask", "high_res_mask", "object_pointer",
                                                     "object_score_logits")}},
        parity_inputs=[_decoder_case(model, 2, True, 7), _decoder_case(model, 4, False, 8),
                       _decoder_case(model, 1, False, 9),
                       _decoder_case(model, 2, [True, False, True, False], 19),  # four objects, one frame
                       _decoder_case(model, 3, [False, True, True], 20, images=3)],
    )
    memory_encoder = GraphSpec(
        name=MEMORY_ENCODER, module=MemoryEncoderGraph(model),
        example_inputs=_memory_encoder_case(model, 2, False, seed=10),
        output_names=["maskmem_features", "maskmem_pos"],
        dynamic_axes={"vision_feat": {0: "objects"}, "high_res_masks": {0: "objects"},
                      "object_score_logits": {0: "objects"}, "maskmem_features": {0: "objects"},
                      "maskmem_pos": {0: "objects"}},
        parity_inputs=[_memory_encoder_case(model, 1, True, 11), _memory_encoder_case(model, 3, True, 12)],
    )
    mask_prompt = GraphSpec(
        name=MASK_PROMPT, module=MaskPromptGraph(model),
        example_inputs=_mask_prompt_case(model, seed=14),
        output_names=["low_res_mask", "high_res_mask", "object_pointer", "object_score_logits"],
        parity_inputs=[_mask_prompt_case(model, seed=15), _mask_prompt_case(model, seed=16, empty=True)],
    )
    return [encoder, attention, decoder, memory_encoder, mask_prompt]


def video_model_config(model: Sam2VideoModel, checkpoint: str, random_weights: bool) -> dict[str, Any]:
    config = model.config
    return {
        "family": "sam2_video",
        "checkpoint": checkpoint,
        "random_weights": random_weights,
        "image_size": model.image_size,
        "low_res_mask_size": model.prompt_encoder.mask_input_size[0],
        "hidden_dim": model.hidden_dim,
        "mem_dim": model.mem_dim,
        "feature_sizes": [list(s) for s in model.backbone_feature_sizes],
        "num_maskmem": config.num_maskmem,
        "max_object_pointers_in_encoder": config.max_object_pointers_in_encoder,
        "max_cond_frame_num": config.max_cond_frame_num,
        "multimask_output_in_sam": config.multimask_output_in_sam,
        "multimask_output_for_tracking": config.multimask_output_for_tracking,
        "multimask_min_pt_num": config.multimask_min_pt_num,
        "multimask_max_pt_num": config.multimask_max_pt_num,
        "mask_threshold": 0.0,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def export_sam2_video(checkpoint: Path | None, out_dir: Path, expect_sha256: str | None = None,
                      random_size: str = "tiny", force: bool = False) -> dict[str, ArtifactRecord]:
    out_dir = Path(out_dir)
    random_weights = checkpoint is None
    if random_weights:
        checkpoint = random_checkpoint(out_dir / "checkpoints" / f"sam2-video-random-{random_size}",
                                       lambda: build_random_model(random_size),
                                       fingerprint=random_config(random_size).to_json_string() + "video-params-v3")
        log(f"no SAM 2 video checkpoint given: using RANDOM weights ({random_size} config) at {checkpoint}")
    checkpoint = Path(checkpoint)
    with Step(f"hashing checkpoint {checkpoint}"):
        checkpoint_sha = verify_checkpoint(checkpoint, expect_sha256)
    manifest = Manifest(out_dir)
    settings = {"family": "sam2_video", "random_size": random_size if random_weights else None}
    if not force and all(manifest.reusable(n, checkpoint_sha, artifact_settings(_graph_settings(n, settings),
                                                                                 _exporter(n)["opset"], _exporter(n)["dynamo"]))
                         for n in GRAPHS):
        log("SAM 2 video graphs are up to date (cached by checkpoint hash and settings)")
        return {n: manifest.records[n] for n in GRAPHS}
    with Step(f"loading SAM 2 video from {checkpoint}"):
        model = load_sam2_video(checkpoint)
    config = video_model_config(model, str(checkpoint), random_weights)
    records = {}
    for spec in graph_specs(model):
        records[spec.name] = export_artifact(spec, manifest, str(checkpoint), checkpoint_sha, random_weights,
                                             _graph_settings(spec.name, settings), model_config=config, force=force)
    return records


def main(argv: list[str] | None = None) -> None:
    args = family_parser("Export the SAM 2 video tracking graphs to ONNX", RANDOM_CONFIGS).parse_args(argv)
    export_sam2_video(args.checkpoint, args.out, args.expect_sha256, args.random_size, args.force)


if __name__ == "__main__":
    main()
