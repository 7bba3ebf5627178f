"""Official Meta SAM 2 / SAM 2.1 checkpoints (`.pt`) -> transformers `Sam2Model` / `Sam2VideoModel`.

facebookresearch/sam2 releases its weights as a `torch.save`d dict whose "model" entry is the state
dict of `SAM2Base` (hiera tiny / small / base_plus / large). This module reads such a file without
executing pickled code (`weights_only=True`), infers the architecture from tensor shapes, renames every
weight into the transformers layout and loads it strictly: an unknown source key, a missing target key
or a shape mismatch is an error that lists the offending keys, never a silently random weight.

What shapes cannot tell (attention heads, which Hiera blocks use global attention, window sizes) comes
from the table of official architectures, keyed by the shapes that do identify them (embed dim and
blocks per stage). A custom trunk can be described with an explicit `HieraArchitecture`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from transformers import Sam2Config, Sam2Model, Sam2VideoConfig, Sam2VideoModel

__all__ = [
    "HieraArchitecture",
    "MetaCheckpointError",
    "OFFICIAL_HIERA_ARCHITECTURES",
    "convert_meta_state_dict",
    "infer_hiera_architecture",
    "is_meta_checkpoint",
    "load_meta_sam2",
    "load_meta_sam2_video",
    "meta_config_from_state_dict",
    "read_meta_state_dict",
]

# Every official SAM 2 / 2.1 model works on 1024x1024 inputs with a stride-16 image embedding.
IMAGE_SIZE = 1024
PATCH_SIZE = 16
# Keys whose presence identifies a SAM2Base state dict.
_SAM2_MARKER_KEYS = (
    "image_encoder.trunk.patch_embed.proj.weight",
    "sam_mask_decoder.iou_token.weight",
    "sam_prompt_encoder.no_mask_embed.weight",
)
_MAX_LISTED_KEYS = 25


class MetaCheckpointError(ValueError):
    """The file is not a usable official SAM 2 checkpoint (or does not fit the target model)."""


@dataclass(frozen=True)
class HieraArchitecture:
    """Hiera trunk hyper-parameters that the weights alone do not determine."""

    name: str
    embed_dim: int
    blocks_per_stage: tuple[int, ...]
    num_heads: int  # heads of the first stage; doubled at each stage transition
    global_attention_blocks: tuple[int, ...]
    window_size_per_stage: tuple[int, ...]
    pos_embed_background_size: tuple[int, int]
    num_query_pool_stages: int = 3


# Values of the sam2 / sam2.1 configs shipped by facebookresearch/sam2 (the Hiera defaults fill in
# whatever a config leaves out). SAM 2 and SAM 2.1 share their trunks.
OFFICIAL_HIERA_ARCHITECTURES: tuple[HieraArchitecture, ...] = (
    HieraArchitecture("hiera_tiny", 96, (1, 2, 7, 2), 1, (5, 7, 9), (8, 4, 14, 7), (7, 7)),
    HieraArchitecture("hiera_small", 96, (1, 2, 11, 2), 1, (7, 10, 13), (8, 4, 14, 7), (7, 7)),
    HieraArchitecture("hiera_base_plus", 112, (2, 3, 16, 3), 2, (12, 16, 20), (8, 4, 14, 7), (14, 14)),
    HieraArchitecture("hiera_large", 144, (2, 6, 36, 4), 2, (23, 33, 43), (8, 4, 16, 8), (7, 7)),
)


# --------------------------------------------------------------------------------------------------
# Reading the file


def _torch_load(path: Path) -> object:
    try:
        # mmap keeps a large checkpoint out of RAM until tensors are actually copied.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        # Legacy (non-zip) serialization cannot be memory-mapped; a real error repeats below.
        return torch.load(path, map_location="cpu", weights_only=True)


def _extract_state_dict(obj: object) -> dict[str, torch.Tensor] | None:
    """The SAM2Base state dict inside a loaded checkpoint object, or None if there is none."""
    if not isinstance(obj, Mapping):
        return None
    candidate = obj["model"] if "model" in obj else obj
    if not isinstance(candidate, Mapping) or not candidate:
        return None
    if not all(isinstance(k, str) for k in candidate):
        return None
    state = dict(candidate)
    # Checkpoints written from a DistributedDataParallel wrapper carry a "module." prefix.
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if not all(k in state for k in _SAM2_MARKER_KEYS):
        return None
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None
    return state


def _describe_foreign(obj: object) -> str:
    if not isinstance(obj, Mapping):
        return f"it holds a {type(obj).__name__}, not a dict"
    inner = obj.get("model") if isinstance(obj.get("model"), Mapping) else obj
    keys = [str(k) for k in inner.keys()]
    hint = ""
    if any(k.startswith("image_encoder.blocks.") or k == "image_encoder.patch_embed.proj.weight" for k in keys):
        hint = " It looks like an original SAM (ViT) checkpoint, not SAM 2."
    elif any(k.startswith("vision_encoder.backbone.") for k in keys):
        hint = (" It looks like weights already in the transformers layout: pass the save_pretrained "
                "directory instead.")
    shown = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
    return (f"it has no SAM 2 weights (expected keys such as {_SAM2_MARKER_KEYS[0]!r}); "
            f"found {len(keys)} keys: {shown}.{hint}")


def read_meta_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The SAM2Base state dict of an official checkpoint file; `MetaCheckpointError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        obj = _torch_load(path)
    except Exception as exc:  # pickle errors, not a torch file, weights_only refusals, ...
        raise MetaCheckpointError(
            f"{path} cannot be read as an official SAM 2 checkpoint (torch.load with weights_only=True "
            f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    state = _extract_state_dict(obj)
    if state is None:
        raise MetaCheckpointError(f"{path} is not an official SAM 2 checkpoint: {_describe_foreign(obj)}")
    return state


def is_meta_checkpoint(path: Path) -> bool:
    """True when `path` is a file holding an official SAM 2 / 2.1 state dict (loaded memory-mapped)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        return _extract_state_dict(_torch_load(path)) is not None
    except Exception:
        return False


# --------------------------------------------------------------------------------------------------
# Architecture inference


def _indices(state: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    """Sorted distinct integers N of keys starting with `prefix` + "N."."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in state if (m := pattern.match(k))})


def _need(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    try:
        return state[key]
    except KeyError:
        raise MetaCheckpointError(f"checkpoint lacks {key!r}, which every SAM 2 model has") from None


def infer_hiera_architecture(
    state: Mapping[str, torch.Tensor], architecture: HieraArchitecture | None = None
) -> tuple[HieraArchitecture, list[int]]:
    """The trunk's architecture and its per-stage widths.

    Embed dim, blocks per stage, per-stage widths and the positional-embedding sizes come from shapes;
    heads, global-attention blocks and windows from `architecture` or the official table.
    """
    prefix = "image_encoder.trunk.blocks."
    blocks = _indices(state, prefix)
    if not blocks or blocks != list(range(len(blocks))):
        raise MetaCheckpointError(f"Hiera blocks are missing or not numbered 0..N-1: {blocks[:10]}...")
    embed_dim = int(_need(state, "image_encoder.trunk.patch_embed.proj.weight").shape[0])
    stage_starts = [0]
    widths = [embed_dim]
    current = embed_dim
    for i in blocks:
        dim_in = int(_need(state, f"{prefix}{i}.norm1.weight").shape[0])
        dim_out = int(_need(state, f"{prefix}{i}.norm2.weight").shape[0])
        if dim_in != current:
            raise MetaCheckpointError(f"Hiera block {i} expects width {dim_in} but receives {current}")
        if dim_out != dim_in:
            if f"{prefix}{i}.proj.weight" not in state:
                raise MetaCheckpointError(f"Hiera block {i} changes width without a projection")
            if i != 0:
                stage_starts.append(i)
                widths.append(dim_out)
            else:
                widths[0] = dim_out
        current = dim_out
    blocks_per_stage = tuple(
        end - start for start, end in zip(stage_starts, stage_starts[1:] + [len(blocks)])
    )
    pos_embed = _need(state, "image_encoder.trunk.pos_embed")
    pos_window = _need(state, "image_encoder.trunk.pos_embed_window")
    bkg = (int(pos_embed.shape[-2]), int(pos_embed.shape[-1]))

    if architecture is None:
        for candidate in OFFICIAL_HIERA_ARCHITECTURES:
            if candidate.embed_dim == embed_dim and candidate.blocks_per_stage == blocks_per_stage:
                architecture = candidate
                break
        else:
            known = "; ".join(
                f"{a.name}: embed_dim={a.embed_dim}, blocks_per_stage={list(a.blocks_per_stage)}"
                for a in OFFICIAL_HIERA_ARCHITECTURES
            )
            raise MetaCheckpointError(
                f"unknown Hiera trunk (embed_dim={embed_dim}, blocks_per_stage={list(blocks_per_stage)}); "
                f"official ones are {known}. Pass a HieraArchitecture describing it."
            )
    else:
        if architecture.embed_dim != embed_dim or tuple(architecture.blocks_per_stage) != blocks_per_stage:
            raise MetaCheckpointError(
                f"given architecture {architecture.name} (embed_dim={architecture.embed_dim}, "
                f"blocks_per_stage={list(architecture.blocks_per_stage)}) does not match the weights "
                f"(embed_dim={embed_dim}, blocks_per_stage={list(blocks_per_stage)})"
            )
    if len(architecture.window_size_per_stage) != len(blocks_per_stage):
        raise MetaCheckpointError("window_size_per_stage needs one entry per Hiera stage")
    if int(pos_window.shape[-1]) != architecture.window_size_per_stage[0]:
        raise MetaCheckpointError(
            f"pos_embed_window is {tuple(pos_window.shape[-2:])} but {architecture.name} uses first-stage "
            f"windows of {architecture.window_size_per_stage[0]}"
        )
    if bkg != tuple(architecture.pos_embed_background_size):
        raise MetaCheckpointError(
            f"pos_embed is {bkg} but {architecture.name} uses {tuple(architecture.pos_embed_background_size)}"
        )
    return architecture, widths


def _mlp_depth(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    layers = _indices(state, prefix + "layers.")
    if not layers:
        raise MetaCheckpointError(f"checkpoint lacks the MLP {prefix.rstrip('.')!r}")
    return len(layers)


def _vision_and_heads(
    state: Mapping[str, torch.Tensor], architecture: HieraArchitecture | None
) -> tuple[dict, dict, dict]:
    arch, widths = infer_hiera_architecture(state, architecture)
    first_block_mlp = _need(state, "image_encoder.trunk.blocks.0.mlp.layers.0.weight")
    mlp_ratio = first_block_mlp.shape[0] / _need(state, "image_encoder.trunk.blocks.0.norm2.weight").shape[0]
    patch = _need(state, "image_encoder.trunk.patch_embed.proj.weight")
    num_stages = len(arch.blocks_per_stage)

    neck_levels = _indices(state, "image_encoder.neck.convs.")
    channel_list = [int(_need(state, f"image_encoder.neck.convs.{i}.conv.weight").shape[1]) for i in neck_levels]
    if channel_list != widths[::-1]:
        raise MetaCheckpointError(f"FPN neck inputs {channel_list} do not match Hiera stage widths {widths}")
    fpn_hidden = int(_need(state, "image_encoder.neck.convs.0.conv.weight").shape[0])
    stride = IMAGE_SIZE // 4  # patch embedding stride 4
    backbone_config = {
        "model_type": "sam2_hiera_det_model",
        "hidden_size": widths[0],
        "num_attention_heads": arch.num_heads,
        "image_size": [IMAGE_SIZE, IMAGE_SIZE],
        "patch_kernel_size": [int(patch.shape[-2]), int(patch.shape[-1])],
        "window_positional_embedding_background_size": list(arch.pos_embed_background_size),
        "num_query_pool_stages": arch.num_query_pool_stages,
        "blocks_per_stage": list(arch.blocks_per_stage),
        "embed_dim_per_stage": widths,
        "num_attention_heads_per_stage": [arch.num_heads * 2**i for i in range(num_stages)],
        "window_size_per_stage": list(arch.window_size_per_stage),
        "global_attention_blocks": list(arch.global_attention_blocks),
        "mlp_ratio": float(mlp_ratio),
    }
    vision_config = {
        "backbone_config": backbone_config,
        "backbone_channel_list": channel_list,
        "backbone_feature_sizes": [[stride >> i, stride >> i] for i in range(3)],
        "fpn_hidden_size": fpn_hidden,
        # Official configs: scalp 1 (three levels), top-down fusion into the two coarsest levels.
        "fpn_top_down_levels": [2, 3],
        "num_feature_levels": 3,
    }

    prompt_hidden = int(_need(state, "sam_prompt_encoder.no_mask_embed.weight").shape[1])
    prompt_encoder_config = {
        "hidden_size": prompt_hidden,
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
        "mask_input_channels": int(_need(state, "sam_prompt_encoder.mask_downscaling.3.weight").shape[0]),
        "num_point_embeddings": len(_indices(state, "sam_prompt_encoder.point_embeddings.")),
    }

    dec = "sam_mask_decoder."
    hidden = int(_need(state, dec + "iou_token.weight").shape[1])
    internal = int(_need(state, dec + "transformer.layers.0.cross_attn_token_to_image.q_proj.weight").shape[0])
    mask_decoder_config = {
        "hidden_size": hidden,
        "mlp_dim": int(_need(state, dec + "transformer.layers.0.mlp.layers.0.weight").shape[0]),
        "num_hidden_layers": len(_indices(state, dec + "transformer.layers.")),
        "num_attention_heads": 8,  # every official SAM 2 mask decoder
        "attention_downsample_rate": hidden // internal,
        "num_multimask_outputs": int(_need(state, dec + "mask_tokens.weight").shape[0]) - 1,
        "iou_head_depth": _mlp_depth(state, dec + "iou_prediction_head."),
        "iou_head_hidden_dim": int(_need(state, dec + "iou_prediction_head.layers.0.weight").shape[0]),
        # build_sam2's default post-processing (also transformers' defaults).
        "dynamic_multimask_via_stability": True,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    }
    return vision_config, prompt_encoder_config, mask_decoder_config


def meta_config_from_state_dict(
    state: Mapping[str, torch.Tensor], *, video: bool, architecture: HieraArchitecture | None = None
) -> Sam2Config | Sam2VideoConfig:
    """The transformers config of the model the official state dict describes."""
    vision, prompt, decoder = _vision_and_heads(state, architecture)
    if not video:
        return Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)

    if not any(k.startswith("memory_attention.") for k in state) or "maskmem_tpos_enc" not in state:
        raise MetaCheckpointError(
            "checkpoint has no memory attention / memory encoder weights: it can serve images "
            "(load_meta_sam2) but not video"
        )
    attn = "memory_attention."
    enc = "memory_encoder."
    downsampler = _indices(state, enc + "mask_downsampler.encoder.")
    # Sequential of (conv, LayerNorm2d, activation) x N followed by a 1x1 conv.
    n_down = (max(downsampler) // 3) if downsampler else 0
    down_conv = _need(state, enc + "mask_downsampler.encoder.0.weight")
    dwconv = _need(state, enc + "fuser.layers.0.dwconv.weight")
    feat = int(_need(state, attn + "norm.weight").shape[0])
    video_extra = {
        "num_maskmem": int(_need(state, "maskmem_tpos_enc").shape[0]),
        "enable_occlusion_spatial_embedding": "no_obj_embed_spatial" in state,
        # SAM 2.1 projects temporal encodings of object pointers; SAM 2.0 adds none.
        "enable_temporal_pos_encoding_for_object_pointers": "obj_ptr_tpos_proj.weight" in state,
        "memory_attention_hidden_size": feat,
        "memory_attention_num_layers": len(_indices(state, attn + "layers.")),
        "memory_attention_num_attention_heads": 1,  # every official config
        "memory_attention_feed_forward_hidden_size": int(_need(state, attn + "layers.0.linear1.weight").shape[0]),
        "memory_attention_rope_feat_sizes": [IMAGE_SIZE // PATCH_SIZE, IMAGE_SIZE // PATCH_SIZE],
        "memory_encoder_hidden_size": int(_need(state, enc + "pix_feat_proj.weight").shape[0]),
        "memory_encoder_output_channels": int(_need(state, enc + "out_proj.weight").shape[0]),
        "mask_downsampler_embed_dim": int(
            _need(state, enc + f"mask_downsampler.encoder.{3 * n_down}.weight").shape[0]
        ),
        "mask_downsampler_kernel_size": int(down_conv.shape[-1]),
        "mask_downsampler_stride": 2,
        "mask_downsampler_padding": int(down_conv.shape[-1]) // 2,
        "mask_downsampler_total_stride": 2**n_down,
        "memory_fuser_num_layers": len(_indices(state, enc + "fuser.layers.")),
        "memory_fuser_embed_dim": int(dwconv.shape[0]),
        "memory_fuser_intermediate_dim": int(_need(state, enc + "fuser.layers.0.pwconv1.weight").shape[0]),
        "memory_fuser_kernel_size": int(dwconv.shape[-1]),
        "memory_fuser_padding": int(dwconv.shape[-1]) // 2,
    }
    return Sam2VideoConfig(
        vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder, **video_extra
    )


# --------------------------------------------------------------------------------------------------
# Key mapping

# A rule turns a regex match on an official key into target keys, given the MLP depths of the dict.
_Target = Callable[[re.Match, Mapping[str, int]], list[str]]


def _to(template: str) -> _Target:
    return lambda m, _depths: [m.expand(template)]


def _mlp(target_prefix: str) -> _Target:
    """Official MLP(layers.0..N-1) -> transformers (proj_in, layers.0..N-3, proj_out)."""

    def rename(m: re.Match, depths: Mapping[str, int]) -> list[str]:
        depth = depths[m.group("mlp")]
        index = int(m.group("i"))
        if index == 0:
            part = "proj_in"
        elif index == depth - 1:
            part = "proj_out"
        else:
            part = f"layers.{index - 1}"
        return [f"{m.expand(target_prefix)}.{part}.{m.group('p')}"]

    return rename


_WB = r"(?P<p>weight|bias)"
_PROMPT_MASK_EMBED = {"0": "conv1", "1": "layer_norm1", "3": "conv2", "4": "layer_norm2", "6": "conv3"}
_UPSCALING = {"0": "upscale_conv1", "1": "upscale_layer_norm", "3": "upscale_conv2"}
_FUSER = {"dwconv": "depthwise_conv", "norm": "layer_norm", "pwconv1": "pointwise_conv1",
          "pwconv2": "pointwise_conv2"}
_POINT_EMBED = "prompt_encoder.point_embed.weight"


def _table(template: str, group: str, table: Mapping[str, str]) -> _Target:
    def rename(m: re.Match, _depths: Mapping[str, int]) -> list[str]:
        part = table.get(m.group(group))
        return [] if part is None else [m.expand(template).replace("{}", part)]

    return rename


def _mask_downsampler(m: re.Match, depths: Mapping[str, int]) -> list[str]:
    index = int(m.group("i"))
    final = depths["memory_encoder.mask_downsampler.encoder"]
    if index == final:
        return [f"memory_encoder.mask_downsampler.final_conv.{m.group('p')}"]
    layer, slot = divmod(index, 3)
    part = {0: "conv", 1: "layer_norm"}.get(slot)
    return [] if part is None else [f"memory_encoder.mask_downsampler.layers.{layer}.{part}.{m.group('p')}"]


# (pattern, target, video_only). Patterns match whole keys; the first matching rule wins.
_RULES: list[tuple[re.Pattern, _Target, bool]] = [
    (re.compile(p), t, v)
    for p, t, v in [
        # Top-level parameters.
        (r"no_mem_embed", _to("no_memory_embedding"), False),
        (r"no_mem_pos_enc", _to("no_memory_positional_encoding"), True),
        (r"maskmem_tpos_enc", _to("memory_temporal_positional_encoding"), True),
        (r"no_obj_ptr", _to("no_object_pointer"), True),
        (r"no_obj_embed_spatial", _to("occlusion_spatial_embedding_parameter"), True),
        (rf"mask_downsample\.{_WB}", _to(r"mask_downsample.\g<p>"), True),
        (rf"obj_ptr_tpos_proj\.{_WB}", _to(r"temporal_positional_encoding_projection_layer.\g<p>"), True),
        (rf"(?P<mlp>obj_ptr_proj)\.layers\.(?P<i>\d+)\.{_WB}", _mlp("object_pointer_proj"), True),
        # Hiera trunk and FPN neck.
        (rf"image_encoder\.trunk\.patch_embed\.proj\.{_WB}",
         _to(r"vision_encoder.backbone.patch_embed.projection.\g<p>"), False),
        (r"image_encoder\.trunk\.(?P<n>pos_embed|pos_embed_window)", _to(r"vision_encoder.backbone.\g<n>"), False),
        (rf"image_encoder\.trunk\.blocks\.(?P<b>\d+)\.norm(?P<n>[12])\.{_WB}",
         _to(r"vision_encoder.backbone.blocks.\g<b>.layer_norm\g<n>.\g<p>"), False),
        (rf"image_encoder\.trunk\.blocks\.(?P<b>\d+)\.(?P<n>attn\.qkv|attn\.proj|proj)\.{_WB}",
         _to(r"vision_encoder.backbone.blocks.\g<b>.\g<n>.\g<p>"), False),
        (rf"(?P<mlp>image_encoder\.trunk\.blocks\.(?P<b>\d+)\.mlp)\.layers\.(?P<i>\d+)\.{_WB}",
         _mlp(r"vision_encoder.backbone.blocks.\g<b>.mlp"), False),
        (rf"image_encoder\.neck\.convs\.(?P<c>\d+)\.conv\.{_WB}",
         _to(r"vision_encoder.neck.convs.\g<c>.\g<p>"), False),
        # Prompt encoder. The random Fourier matrix feeds both the prompt encoder and the image-wide PE.
        (r"sam_prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix",
         lambda m, d: ["prompt_encoder.shared_embedding.positional_embedding",
                       "shared_image_embedding.positional_embedding"], False),
        (r"sam_prompt_encoder\.point_embeddings\.(?P<i>\d+)\.weight", lambda m, d: [_POINT_EMBED], False),
        (r"sam_prompt_encoder\.(?P<n>not_a_point_embed|no_mask_embed)\.weight",
         _to(r"prompt_encoder.\g<n>.weight"), False),
        (rf"sam_prompt_encoder\.mask_downscaling\.(?P<i>\d+)\.{_WB}",
         _table(r"prompt_encoder.mask_embed.{}.\g<p>", "i", _PROMPT_MASK_EMBED), False),
        # Mask decoder.
        (rf"sam_mask_decoder\.transformer\.layers\.(?P<l>\d+)\."
         rf"(?P<a>self_attn|cross_attn_token_to_image|cross_attn_image_to_token)\.(?P<q>[qkv])_proj\.{_WB}",
         _to(r"mask_decoder.transformer.layers.\g<l>.\g<a>.\g<q>_proj.\g<p>"), False),
        (rf"sam_mask_decoder\.transformer\.layers\.(?P<l>\d+)\."
         rf"(?P<a>self_attn|cross_attn_token_to_image|cross_attn_image_to_token)\.out_proj\.{_WB}",
         _to(r"mask_decoder.transformer.layers.\g<l>.\g<a>.o_proj.\g<p>"), False),
        (rf"sam_mask_decoder\.transformer\.layers\.(?P<l>\d+)\.norm(?P<n>[1-4])\.{_WB}",
         _to(r"mask_decoder.transformer.layers.\g<l>.layer_norm\g<n>.\g<p>"), False),
        (rf"(?P<mlp>sam_mask_decoder\.transformer\.layers\.(?P<l>\d+)\.mlp)\.layers\.(?P<i>\d+)\.{_WB}",
         _mlp(r"mask_decoder.transformer.layers.\g<l>.mlp"), False),
        (rf"sam_mask_decoder\.transformer\.final_attn_token_to_image\.(?P<q>[qkv])_proj\.{_WB}",
         _to(r"mask_decoder.transformer.final_attn_token_to_image.\g<q>_proj.\g<p>"), False),
        (rf"sam_mask_decoder\.transformer\.final_attn_token_to_image\.out_proj\.{_WB}",
         _to(r"mask_decoder.transformer.final_attn_token_to_image.o_proj.\g<p>"), False),
        (rf"sam_mask_decoder\.transformer\.norm_final_attn\.{_WB}",
         _to(r"mask_decoder.transformer.layer_norm_final_attn.\g<p>"), False),
        (r"sam_mask_decoder\.(?P<n>iou_token|mask_tokens|obj_score_token)\.weight",
         _to(r"mask_decoder.\g<n>.weight"), False),
        (rf"sam_mask_decoder\.(?P<n>conv_s0|conv_s1)\.{_WB}", _to(r"mask_decoder.\g<n>.\g<p>"), False),
        (rf"sam_mask_decoder\.output_upscaling\.(?P<i>\d+)\.{_WB}",
         _table(r"mask_decoder.{}.\g<p>", "i", _UPSCALING), False),
        (rf"(?P<mlp>sam_mask_decoder\.(?P<h>output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head))"
         rf"\.layers\.(?P<i>\d+)\.{_WB}", _mlp(r"mask_decoder.\g<h>"), False),
        # Memory attention.
        (rf"memory_attention\.layers\.(?P<l>\d+)\.(?P<a>self_attn|cross_attn_image)\.(?P<q>[qkv])_proj\.{_WB}",
         _to(r"memory_attention.layers.\g<l>.\g<a>.\g<q>_proj.\g<p>"), True),
        (rf"memory_attention\.layers\.(?P<l>\d+)\.(?P<a>self_attn|cross_attn_image)\.out_proj\.{_WB}",
         _to(r"memory_attention.layers.\g<l>.\g<a>.o_proj.\g<p>"), True),
        (rf"memory_attention\.layers\.(?P<l>\d+)\.(?P<n>linear1|linear2)\.{_WB}",
         _to(r"memory_attention.layers.\g<l>.\g<n>.\g<p>"), True),
        (rf"memory_attention\.layers\.(?P<l>\d+)\.norm(?P<n>[123])\.{_WB}",
         _to(r"memory_attention.layers.\g<l>.layer_norm\g<n>.\g<p>"), True),
        (rf"memory_attention\.norm\.{_WB}", _to(r"memory_attention.layer_norm.\g<p>"), True),
        # Memory encoder.
        (rf"memory_encoder\.mask_downsampler\.encoder\.(?P<i>\d+)\.{_WB}", _mask_downsampler, True),
        (rf"memory_encoder\.pix_feat_proj\.{_WB}", _to(r"memory_encoder.feature_projection.\g<p>"), True),
        (r"memory_encoder\.fuser\.layers\.(?P<l>\d+)\.gamma",
         _to(r"memory_encoder.memory_fuser.layers.\g<l>.scale"), True),
        (rf"memory_encoder\.fuser\.layers\.(?P<l>\d+)\.(?P<n>dwconv|norm|pwconv1|pwconv2)\.{_WB}",
         _table(r"memory_encoder.memory_fuser.layers.\g<l>.{}.\g<p>", "n", _FUSER), True),
        (rf"memory_encoder\.out_proj\.{_WB}", _to(r"memory_encoder.projection.\g<p>"), True),
    ]
]


def _mlp_depths(state: Iterable[str]) -> dict[str, int]:
    """Layer count of every official `...layers.N.` MLP (and the mask downsampler's final index)."""
    depths: dict[str, int] = {}
    for key in state:
        m = re.fullmatch(r"(?P<mlp>.+)\.layers\.(?P<i>\d+)\.(weight|bias)", key)
        if m:
            depths[m.group("mlp")] = max(depths.get(m.group("mlp"), 0), int(m.group("i")) + 1)
        m = re.fullmatch(r"memory_encoder\.mask_downsampler\.encoder\.(?P<i>\d+)\.(weight|bias)", key)
        if m:
            name = "memory_encoder.mask_downsampler.encoder"
            depths[name] = max(depths.get(name, 0), int(m.group("i")))
    return depths


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = "\n  ".join(keys[:_MAX_LISTED_KEYS])
    more = f"\n  ... and {len(keys) - _MAX_LISTED_KEYS} more" if len(keys) > _MAX_LISTED_KEYS else ""
    return f"\n  {shown}{more}"


def convert_meta_state_dict(state: Mapping[str, torch.Tensor], *, video: bool) -> dict[str, torch.Tensor]:
    """Official SAM2Base keys -> transformers `Sam2VideoModel` (video) or `Sam2Model` keys.

    Every source key must be claimed by a rule; for the image model the memory / object-pointer weights
    are claimed and deliberately dropped. Raises `MetaCheckpointError` listing unclaimed keys.
    """
    depths = _mlp_depths(state)
    out: dict[str, torch.Tensor] = {}
    point_rows: dict[int, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        for pattern, target, video_only in _RULES:
            m = pattern.fullmatch(key)
            if m is None:
                continue
            names = target(m, depths)
            if not names:
                unmapped.append(key)
            elif video_only and not video:
                pass  # the image model has no memory path
            elif names == [_POINT_EMBED]:
                point_rows[int(m.group("i"))] = value.reshape(-1)
            else:
                for name in names:
                    if name in out:
                        raise MetaCheckpointError(f"two checkpoint keys map to {name!r}")
                    out[name] = value
            break
        else:
            unmapped.append(key)
    if unmapped:
        raise MetaCheckpointError(
            f"{len(unmapped)} checkpoint keys have no place in the transformers SAM 2 model "
            f"(not an official SAM 2 / 2.1 layout?):{_listing(unmapped)}"
        )
    if point_rows:
        if sorted(point_rows) != list(range(len(point_rows))):
            raise MetaCheckpointError(f"point embeddings are not numbered 0..N-1: {sorted(point_rows)}")
        # One embedding row per point label (0 negative, 1 positive, 2/3 box corners).
        out[_POINT_EMBED] = torch.stack([point_rows[i] for i in range(len(point_rows))])
    return out


# --------------------------------------------------------------------------------------------------
# Loading


def _load_strict(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], source: Path) -> None:
    expected = model.state_dict()
    missing = set(expected) - set(weights)
    unexpected = set(weights) - set(expected)
    mismatched = [
        f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(weights) & set(expected))
        if tuple(weights[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} model weights have no source in the checkpoint:{_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} converted weights are unknown to the model:{_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shapes differ:{_listing(mismatched)}")
    if problems:
        raise MetaCheckpointError(
            f"{source} does not fit {type(model).__name__}:\n" + "\n".join(problems)
        )
    model.load_state_dict(dict(weights), strict=True)


def _load(path: Path, video: bool, architecture: HieraArchitecture | None) -> torch.nn.Module:
    path = Path(path)
    state = read_meta_state_dict(path)
    try:
        config = meta_config_from_state_dict(state, video=video, architecture=architecture)
        weights = convert_meta_state_dict(state, video=video)
    except MetaCheckpointError as exc:
        raise MetaCheckpointError(f"{path}: {exc}") from None
    model = (Sam2VideoModel if video else Sam2Model)(config)
    _load_strict(model, weights, path)
    return model.eval()


def load_meta_sam2(path: Path, *, architecture: HieraArchitecture | None = None) -> Sam2Model:
    """A transformers `Sam2Model` (image encoder, prompt encoder, mask decoder) from an official `.pt`.

    The memory-path weights of the checkpoint are recognised and left out (the image model has none).
    Raises `MetaCheckpointError` for a file that is not a SAM 2 checkpoint or does not map completely.
    """
    return _load(path, False, architecture)


def load_meta_sam2_video(path: Path, *, architecture: HieraArchitecture | None = None) -> Sam2VideoModel:
    """A transformers `Sam2VideoModel` (with memory attention / memory encoder) from an official `.pt`."""
    return _load(path, True, architecture)
