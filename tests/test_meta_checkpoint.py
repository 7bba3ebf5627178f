"""Official Meta SAM 2 `.pt` checkpoints -> transformers, checked against Meta's own `sam2` package.

The reference is an independent implementation: Meta's `sam2` (PyPI 1.1.0) builds a random-weight
SAM2Base from its bundled hydra configs, we save its state dict the way Meta releases checkpoints
(`{"model": state_dict}`), convert it with `segserve.export.meta_checkpoint` and require the
transformers model to reproduce the official modules' outputs on the same inputs.

Install the reference (torch stays untouched; its predictors need torchvision, which is not used here):
    SAM2_BUILD_CUDA=0 pip install --no-deps --no-build-isolation sam2==1.1.0
    pip install hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 iopath==0.1.10 \
        portalocker==4.4.2
"""
from __future__ import annotations

import pickle

import pytest
import torch

import sam2  # noqa: E402,F401  Meta's reference package, installed by `make setup`
from hydra import compose  # noqa: E402  (installed with sam2's light dependencies)
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from transformers import Sam2Model, Sam2VideoModel  # noqa: E402

from segserve.export.meta_checkpoint import (  # noqa: E402
    OFFICIAL_HIERA_ARCHITECTURES,
    HieraArchitecture,
    MetaCheckpointError,
    convert_meta_state_dict,
    infer_hiera_architecture,
    is_meta_checkpoint,
    load_meta_sam2,
    load_meta_sam2_video,
    meta_config_from_state_dict,
)

ATOL = 1e-4
# Every test that builds an official-architecture model (hiera-tiny is 39 M parameters at 1024x1024;
# small / base+ / large are bigger) is `slow`: `make test-all`, not CI's `make test`. What stays in
# `make test` is the refusal of files that are not SAM 2 checkpoints, which builds no model.
slow = pytest.mark.slow
TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"
OFFICIAL_CONFIGS = {
    f"{version}_{size}": f"configs/{version}/{version}_hiera_{short}.yaml"
    for version in ("sam2", "sam2.1")
    for size, short in (("tiny", "t"), ("small", "s"), ("base_plus", "b+"), ("large", "l"))
}


def build_official(config_name: str, seed: int = 0, perturb: bool = True) -> torch.nn.Module:
    """A SAM2Base from the package's own config, every tensor made distinct and non-trivial.

    Built from the hydra config directly (what `build_sam2` does, minus checkpoint loading), so nothing
    imports torchvision. Noise on every weight means zero-initialised parameters (positional
    embeddings, biases, no-memory tokens) still differ from one another, so a swapped mapping shows.
    """
    torch.manual_seed(seed)
    cfg = compose(config_name=config_name)
    OmegaConf.resolve(cfg)
    model = instantiate(cfg.model, _recursive_=True)
    with torch.no_grad():
        for tensor in model.state_dict().values() if perturb else ():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.02)
    return model.eval()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= ATOL, f"{what}: max abs error {err:.3g} > {ATOL} (reference magnitude {scale:.3g})"


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    model = build_official(TINY)
    path = tmp_path_factory.mktemp("meta") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return model, path


@pytest.fixture(scope="module")
def converted(official):
    return load_meta_sam2(official[1])


@pytest.fixture(scope="module")
def pixels():
    torch.manual_seed(1)
    return torch.randn(1, 3, 1024, 1024)


@pytest.fixture(scope="module")
def image_embeddings(official, converted, pixels):
    """(official, transformers) image embeddings of the same preprocessed image."""
    model = official[0]
    with torch.no_grad():
        backbone = model.forward_image(pixels)  # applies conv_s0 / conv_s1 to the high-res levels
        _, feats, _, sizes = model._prepare_backbone_features(backbone)
        feats[-1] = feats[-1] + model.no_mem_embed  # as SAM2ImagePredictor.set_image does
        reference = [f.permute(1, 2, 0).reshape(1, -1, h, w) for f, (h, w) in zip(feats, sizes)]
        ours = converted.get_image_embeddings(pixels)
    return reference, ours


@slow
def test_is_meta_checkpoint(official, tmp_path):
    assert is_meta_checkpoint(official[1])
    assert not is_meta_checkpoint(tmp_path)  # a directory (save_pretrained layout) is not
    assert not is_meta_checkpoint(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"model": {"backbone.conv.weight": torch.zeros(2, 2)}}, other)
    assert not is_meta_checkpoint(other)


@slow
def test_image_embeddings_match_official(image_embeddings):
    reference, ours = image_embeddings
    assert len(ours) == 3
    for level, (a, b) in enumerate(zip(ours, reference)):
        assert_close(a, b, f"image embedding level {level}")


def _official_decode(model, feats, points=None, labels=None, boxes=None, mask=None):
    with torch.no_grad():
        sparse, dense = model.sam_prompt_encoder(
            points=None if points is None else (points, labels), boxes=boxes, masks=mask
        )
        masks, iou, _, object_score = model.sam_mask_decoder(
            image_embeddings=feats[-1],
            image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            repeat_image=False,
            high_res_features=feats[:2],
        )
    return masks, iou, object_score


def _ours_decode(model, feats, points=None, labels=None, boxes=None, mask=None):
    with torch.no_grad():
        out = model(
            image_embeddings=feats,
            input_points=None if points is None else points[:, None],
            input_labels=None if labels is None else labels[:, None],
            input_boxes=boxes,
            input_masks=mask,
            multimask_output=True,
        )
    return out.pred_masks[:, 0], out.iou_scores[:, 0], out.object_score_logits[:, 0]


POINTS = torch.tensor([[[412.0, 300.0], [700.0, 655.0]]])
BOX = torch.tensor([[120.0, 180.0, 830.0, 760.0]])


@pytest.mark.parametrize(
    "prompt",
    ["point", "points_pos_neg", "box", "box_as_corner_points", "point_and_mask"],
)
@slow
def test_decoder_matches_official(official, converted, image_embeddings, prompt):
    """Same prompt tokens on both sides. Points: both prompt encoders append a label -1 padding point
    when no box is given. Box: transformers' `input_boxes` embeds [top-left (2), bottom-right (3),
    padding (-1)], which is what SAM2ImagePredictor sends the official encoder (the box as two points
    labelled 2 and 3, boxes=None, hence padded); the official `boxes=` argument would add no padding
    token, so it is not the comparable call."""
    reference_feats, feats = image_embeddings
    ref_kw: dict = {}
    our_kw: dict = {}
    if prompt == "point":
        ref_kw = our_kw = {"points": POINTS[:, :1], "labels": torch.tensor([[1]])}
    elif prompt == "points_pos_neg":
        ref_kw = our_kw = {"points": POINTS, "labels": torch.tensor([[1, 0]])}
    elif prompt == "box":
        ref_kw = {"points": BOX.reshape(1, 2, 2), "labels": torch.tensor([[2, 3]])}
        our_kw = {"boxes": BOX[:, None]}
    elif prompt == "box_as_corner_points":
        ref_kw = our_kw = {"points": BOX.reshape(1, 2, 2), "labels": torch.tensor([[2, 3]])}
    elif prompt == "point_and_mask":
        torch.manual_seed(2)
        mask = torch.randn(1, 1, 256, 256) * 4
        ref_kw = {"points": POINTS[:, :1], "labels": torch.tensor([[1]]), "mask": mask}
        our_kw = dict(ref_kw)
    ref_masks, ref_iou, ref_obj = _official_decode(official[0], reference_feats, **ref_kw)
    masks, iou, obj = _ours_decode(converted, feats, **our_kw)
    assert masks.shape == (1, 3, 256, 256)
    assert_close(masks, ref_masks, f"{prompt}: low-res masks")
    assert_close(iou, ref_iou, f"{prompt}: IoU predictions")
    assert_close(obj, ref_obj, f"{prompt}: object score")


@slow
def test_video_weights_map_and_memory_modules_match(official):
    model, path = official
    video = load_meta_sam2_video(path)
    ours = video.state_dict()
    # Every official tensor lands, unchanged, at its transformers name.
    mapped = convert_meta_state_dict(model.state_dict(), video=True)
    assert set(mapped) == set(ours)
    for key, value in mapped.items():
        assert torch.equal(ours[key], value), key
    torch.manual_seed(3)
    with torch.no_grad():
        # Memory encoder: image features + a mask (logits already squashed) -> 64-channel memory.
        pix = torch.randn(1, 256, 64, 64)
        mask = torch.rand(1, 1, 1024, 1024)
        reference = model.memory_encoder(pix, mask, skip_mask_sigmoid=True)
        features, pos = video.memory_encoder(pix, mask)
        assert_close(features, reference["vision_features"], "memory encoder features")
        assert_close(pos, reference["vision_pos_enc"][0], "memory encoder positions")
        # Memory attention: one memory frame plus 4 object-pointer tokens (excluded from RoPE).
        curr = torch.randn(4096, 1, 256)
        curr_pos = torch.randn(4096, 1, 256)
        memory = torch.randn(4096 + 4, 1, 64)
        memory_pos = torch.randn(4096 + 4, 1, 64)
        reference = model.memory_attention(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=4)
        conditioned = video.memory_attention(curr, memory, curr_pos, memory_pos, num_object_pointer_tokens=4)
        # transformers returns (1, batch, HW, C) (its caller squeezes dim 1); the official (HW, batch, C).
        assert_close(conditioned[0], reference.transpose(0, 1), "memory attention")
        # Object-pointer projection and its temporal-encoding projection.
        tokens = torch.randn(2, 256)
        assert_close(video.object_pointer_proj(tokens), model.obj_ptr_proj(tokens), "object pointer MLP")
        assert_close(
            video.temporal_positional_encoding_projection_layer(tokens), model.obj_ptr_tpos_proj(tokens),
            "temporal encoding projection",
        )
        low_res = torch.randn(1, 1, 256, 256)
        assert_close(video.mask_downsample(low_res), model.mask_downsample(low_res), "mask downsample")


# SAM 2 and 2.1 share their trunks and differ only in (size-independent) video flags, so SAM 2.0 is
# represented by tiny; its other sizes take the same code path.
@slow
@pytest.mark.parametrize("name", [n for n in sorted(OFFICIAL_CONFIGS) if n.startswith("sam2.1") or n == "sam2_tiny"])
def test_every_official_architecture_is_recognised(name):
    """For sam2.1 tiny/small/base_plus/large (and sam2 tiny): the inferred config reproduces the official
    trunk block by block (width, heads, window, pooling) and every key maps with matching shapes."""
    model = build_official(OFFICIAL_CONFIGS[name], perturb=False)  # only names and shapes matter here
    state = model.state_dict()
    arch, _ = infer_hiera_architecture(state)
    assert arch.name == "hiera_" + name.split("_", 1)[1]
    for video in (False, True):
        config = meta_config_from_state_dict(state, video=video)
        with torch.device("meta"):
            target = (Sam2VideoModel if video else Sam2Model)(config)
        expected = {k: tuple(v.shape) for k, v in target.state_dict().items()}
        mapped = {k: tuple(v.shape) for k, v in convert_meta_state_dict(state, video=video).items()}
        assert mapped == expected, (video, sorted(set(mapped) ^ set(expected))[:10])
        blocks = target.vision_encoder.backbone.blocks
        assert len(blocks) == len(model.image_encoder.trunk.blocks)
        for i, (ours, theirs) in enumerate(zip(blocks, model.image_encoder.trunk.blocks)):
            assert (ours.dim, ours.dim_out) == (theirs.dim, theirs.dim_out), i
            assert ours.window_size == theirs.window_size, (i, ours.window_size, theirs.window_size)
            assert ours.attn.num_attention_heads == theirs.attn.num_heads, i
            assert (ours.query_stride is not None) == (theirs.pool is not None), i
    if name.startswith("sam2.1"):
        assert config.enable_occlusion_spatial_embedding and config.enable_temporal_pos_encoding_for_object_pointers
    else:
        assert not config.enable_occlusion_spatial_embedding
        assert not config.enable_temporal_pos_encoding_for_object_pointers


class _Arbitrary:
    """A pickled object that torch.load(weights_only=True) refuses to rebuild."""


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_rejects_non_sam2_files(tmp_path):
    cases = {
        "resnet.pt": {"model": {"conv1.weight": torch.zeros(4, 3, 7, 7), "fc.bias": torch.zeros(10)}},
        "plain_tensor.pt": torch.zeros(3),
        "sam1.pth": {"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16),
                     "image_encoder.blocks.0.norm1.weight": torch.zeros(768)},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
    (tmp_path / "notes.pt").write_text("not a checkpoint")

    with open(tmp_path / "pickled.pt", "wb") as f:
        pickle.dump({"model": _Arbitrary()}, f)

    for name in ("resnet.pt", "plain_tensor.pt", "sam1.pth", "notes.pt", "pickled.pt"):
        with pytest.raises(MetaCheckpointError, match="SAM 2") as info:
            load_meta_sam2(tmp_path / name)
        assert name in str(info.value)
    with pytest.raises(MetaCheckpointError, match="original SAM"):
        load_meta_sam2(tmp_path / "sam1.pth")
    with pytest.raises(FileNotFoundError):
        load_meta_sam2(tmp_path / "absent.pt")


@slow
def test_unmapped_and_missing_keys_are_listed(official, tmp_path):
    state = dict(official[0].state_dict())
    state["sam_mask_decoder.extra_head.weight"] = torch.zeros(3)
    torch.save({"model": state}, tmp_path / "extra.pt")
    with pytest.raises(MetaCheckpointError, match=r"sam_mask_decoder\.extra_head\.weight"):
        load_meta_sam2(tmp_path / "extra.pt")

    state = dict(official[0].state_dict())
    del state["sam_mask_decoder.conv_s1.bias"]
    torch.save({"model": state}, tmp_path / "missing.pt")
    with pytest.raises(MetaCheckpointError, match=r"mask_decoder\.conv_s1\.bias"):
        load_meta_sam2(tmp_path / "missing.pt")

    # An image-only checkpoint (memory path stripped) still serves images but not video.
    state = {k: v for k, v in official[0].state_dict().items()
             if not k.startswith(("memory_attention.", "memory_encoder."))}
    torch.save({"model": state}, tmp_path / "image_only.pt")
    load_meta_sam2(tmp_path / "image_only.pt")
    with pytest.raises(MetaCheckpointError, match="not video"):
        load_meta_sam2_video(tmp_path / "image_only.pt")


@slow
def test_unknown_trunk_needs_an_explicit_architecture(tmp_path):
    """A non-official trunk is refused by name, and accepted when described."""
    torch.manual_seed(4)
    cfg = compose(
        config_name=TINY,
        overrides=[
            "++model.image_encoder.trunk.stages=[1,1,2,1]",
            "++model.image_encoder.trunk.global_att_blocks=[3]",
            "++model.image_encoder.trunk.num_heads=2",
        ],
    )
    OmegaConf.resolve(cfg)
    state = instantiate(cfg.model, _recursive_=True).state_dict()
    with pytest.raises(MetaCheckpointError, match="unknown Hiera trunk"):
        infer_hiera_architecture(state)
    custom = HieraArchitecture("custom", 96, (1, 1, 2, 1), 2, (3,), (8, 4, 14, 7), (7, 7))
    config = meta_config_from_state_dict(state, video=False, architecture=custom)
    assert config.vision_config.backbone_config.num_attention_heads_per_stage == [2, 4, 8, 16]
    assert {a.name for a in OFFICIAL_HIERA_ARCHITECTURES} == {
        "hiera_tiny", "hiera_small", "hiera_base_plus", "hiera_large"}


@slow
@pytest.mark.parametrize("size", ["small", "base_plus", "large"])
def test_larger_trunks_match_official_numerically(size, tmp_path):
    """Heads / global-attention blocks / windows of the bigger official trunks, checked on features
    (512x512 input to keep it affordable; the trunk and neck are resolution-agnostic)."""
    model = build_official(OFFICIAL_CONFIGS[f"sam2.1_{size}"])
    path = tmp_path / f"{size}.pt"
    torch.save({"model": model.state_dict()}, path)
    ours = load_meta_sam2(path)
    torch.manual_seed(5)
    pixels = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        reference = model.image_encoder(pixels)["backbone_fpn"]
        features = ours.vision_encoder(pixels).fpn_hidden_states
    for level, (a, b) in enumerate(zip(features, reference)):
        assert_close(a, b, f"{size} FPN level {level}")


@slow
def test_pt_and_hf_checkpoints_export_the_same_graphs(official, converted, tmp_path):
    """The two loading paths of `segserve export` end in graphs that compute the same thing."""
    import numpy as np

    from segserve.export.onnx_export import ort_session
    from segserve.export.sam2 import DECODER, ENCODER, _decoder_case, export_sam2

    hf_dir = tmp_path / "hf"
    converted.save_pretrained(hf_dir)
    from_pt = export_sam2(official[1], tmp_path / "from_pt")
    from_hf = export_sam2(hf_dir, tmp_path / "from_hf")
    assert from_pt[ENCODER].random_weights is False and from_pt[ENCODER].checkpoint.endswith(".pt")
    pixels = np.random.default_rng(0).normal(size=(1, 3, 1024, 1024)).astype(np.float32)
    feats = [ort_session(tmp_path / d / records[ENCODER].file).run(None, {"pixel_values": pixels})
             for d, records in (("from_pt", from_pt), ("from_hf", from_hf))]
    for a, b in zip(*feats):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    case = {k: v.numpy() for k, v in _decoder_case(converted, prompts=2, points=3, with_mask=True, seed=7).items()}
    case.update(dict(zip(("high_res_feats_0", "high_res_feats_1", "image_embeddings"), feats[0])))
    masks = [ort_session(tmp_path / d / records[DECODER].file).run(None, case)
             for d, records in (("from_pt", from_pt), ("from_hf", from_hf))]
    for a, b in zip(*masks):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
