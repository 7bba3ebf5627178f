"""Grounding DINO (text-prompted box detector) -> ONNX.

One graph, `grounding_dino`, at a fixed square image size S (the graph is only valid at the size it
was traced with, so images are letterboxed to S x S and the padding is described by `pixel_mask`):

    inputs   pixel_values   float32 [B, 3, S, S]   letterboxed, ImageNet-normalised
             pixel_mask     int64   [B, S, S]      1 = image, 0 = padding (bottom/right)
             input_ids      int64   [B, T]         BERT WordPiece ids, T <= 256
             attention_mask int64   [B, T]
             token_type_ids int64   [B, T]
    outputs  logits         float32 [B, num_queries, 256]  token logits; masked/padded tokens = -1e4
             pred_boxes     float32 [B, num_queries, 4]    cx, cy, w, h normalised to the unpadded image

`segserve.common.grounding` does the matching pre- and post-processing without torch.

Export patches (applied only while tracing and checking parity, restored afterwards, and checked
against the unpatched PyTorch model on every parity input before the graph is written):

- `generate_masks_with_special_tokens_and_transfer_map` builds the phrase-block attention mask and
  the per-phrase position ids with `torch.isin`, `cummax` and `cummin`, which have no ONNX
  equivalent in the legacy exporter. The replacement finds, for every token, the last delimiter
  strictly before it and the first delimiter at or after it with masked max/min reductions over a
  [T, T] comparison (T <= 256), which is the same result in plain ONNX ops.
- The graph's logits carry -1e4 instead of -inf for masked and padded text positions. This is not
  a patch of the model but a clamp in the wrapper: -inf would turn the parity error into NaN and
  hide real differences, and sigmoid(-1e4) is exactly 0 in float32, as sigmoid(-inf) is.

Parity. The two-stage query selection is a TopK over thousands of encoder scores, and rank i is
paired with learned query i: two scores within float error of each other swap between PyTorch and
ONNX Runtime often enough at 800 px (measured: 1-2 swapped pairs per image with random weights),
and a swap changes both queries' outputs completely. So the element-wise parity of
`export_artifact` runs on inputs chosen to have no near-ties (see `strict_parity_cases`), and full
letterboxes are then compared query by query, allowing differences only at TopK near-ties
(`check_letterbox_parity`, recorded under `parity.letterbox` in the manifest).

The other known Grounding DINO export fix, reference points from `arange + 0.5` instead of
`linspace` (float64 GridSample grids), is not needed here: with a fixed image size the legacy
exporter folds those grids to float32 constants (checked on the tiny and the full-size config,
torch 2.13 / opset 17); ONNX Runtime would refuse to load the graph during the parity check if that
ever changed.
"""
from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")

import contextlib  # noqa: E402
import shutil  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Iterator  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import AutoTokenizer, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection  # noqa: E402
from transformers.models.grounding_dino import modeling_grounding_dino as _gd  # noqa: E402

from .manifest import ArtifactRecord, Manifest, verify_checkpoint  # noqa: E402
from .onnx_export import (GraphSpec, ParityError, Step, artifact_settings, export_artifact, family_parser, log,  # noqa: E402
                          ort_session, random_checkpoint)

NAME = "grounding_dino"
TOKENIZER_DIR = "grounding_dino_tokenizer"  # next to the artifact, relative to the manifest directory
RANDOM_CONFIGS = ("tiny", "swin-tiny")
TINY_IMAGE_SIZE = 256
DEFAULT_IMAGE_SIZE = 800
MAX_TEXT_TOKENS = 256
MASKED_LOGIT = -1.0e4
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
INPUT_NAMES = ("pixel_values", "pixel_mask", "input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAMES = ("logits", "pred_boxes")
# Bump when the wrapper or a patch changes, so cached graphs are rebuilt.
GRAPH_VERSION = 1

# Where the real (bert-base-uncased) vocabulary puts the tokens the model treats as phrase
# delimiters; the tiny vocabulary reproduces these positions so the unmodified model works with it.
_FIXED_TOKENS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1010: ",", 1012: ".", 1029: "?"}
_TINY_WORDS = (
    "a an the of and on in with at near dog cat red blue green yellow black white ball car person man "
    "woman child bird horse tree house bike bus truck cup bottle chair table sky grass road small big "
    "left right remote control phone ##s ##es ##ing"
).split()


# --------------------------------------------------------------------------- random checkpoint


def tiny_vocab() -> dict[str, int]:
    """A small WordPiece vocabulary whose special and delimiter tokens sit at the real BERT ids."""
    size = max(_FIXED_TOKENS) + 1
    tokens = [_FIXED_TOKENS.get(i, f"[unused{i}]") for i in range(size)] + list(_TINY_WORDS)
    return {token: index for index, token in enumerate(tokens)}


def build_tiny_tokenizer() -> BertTokenizer:
    # `vocab=` (a dict), not `vocab_file=`: the latter silently maps everything to [UNK] in transformers 5.
    return BertTokenizer(vocab=tiny_vocab(), do_lower_case=True, clean_up_tokenization_spaces=True)


def random_config(size: str = "tiny") -> GroundingDinoConfig:
    """`swin-tiny`: grounding-dino-tiny shapes (172M params). `tiny`: a ~0.5M-param model for tests."""
    if size == "swin-tiny":
        return GroundingDinoConfig()
    if size != "tiny":
        raise ValueError(f"unknown random Grounding DINO config {size!r}; choose one of {RANDOM_CONFIGS}")
    return GroundingDinoConfig(
        backbone_config={"model_type": "swin", "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4],
                         "window_size": 7, "out_indices": [2, 3, 4], "image_size": TINY_IMAGE_SIZE},
        text_config={"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "intermediate_size": 64, "vocab_size": len(tiny_vocab()), "max_position_embeddings": 512},
        d_model=32,  # GroupNorm(32, d_model) in the input projections needs a multiple of 32
        encoder_layers=1,
        decoder_layers=2,  # one decoder layer breaks the box-refinement path
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=2,
        decoder_n_points=2,
        num_queries=900,
        max_text_len=MAX_TEXT_TOKENS,
    )


def build_random_model(size: str = "tiny") -> GroundingDinoForObjectDetection:
    """Random weights, with the decoder's output LayerNorm scaled by 2/sqrt(d_model).

    Token logits are dot products of two LayerNorm-ed d_model vectors; at random init they have a
    standard deviation near sqrt(d_model) and sigmoid saturates to 0 or 1 almost everywhere, which
    makes threshold tests meaningless. The scale brings them to about 2, like a trained model's.
    """
    model = GroundingDinoForObjectDetection(random_config(size))
    with torch.no_grad():
        model.model.decoder.layer_norm.weight.mul_(2.0 / model.config.d_model ** 0.5)
    return model


def random_grounding_checkpoint(directory: Path, size: str = "tiny") -> Path:
    """Seeded random weights plus the tiny tokenizer, saved once with `save_pretrained`."""
    directory = Path(directory)
    random_checkpoint(directory, lambda: build_random_model(size))
    if not (directory / "tokenizer.json").is_file():
        build_tiny_tokenizer().save_pretrained(directory)
    return directory


# --------------------------------------------------------------------------- loading


def special_token_ids(tokenizer) -> dict[str, int]:
    """Ids of [CLS], [SEP], '.', '?' and [PAD] according to the tokenizer."""
    ids = {
        "cls": tokenizer.cls_token_id,
        "sep": tokenizer.sep_token_id,
        "period": tokenizer.convert_tokens_to_ids("."),
        "question": tokenizer.convert_tokens_to_ids("?"),
        "pad": tokenizer.pad_token_id,
    }
    if tokenizer.unk_token_id in (ids["period"], ids["question"]):
        raise ValueError("the tokenizer has no '.' or '?' token; Grounding DINO needs both as phrase delimiters")
    return ids


def load_grounding_dino(checkpoint: Path) -> tuple[GroundingDinoForObjectDetection, Any]:
    """Model and tokenizer from one local `save_pretrained` directory (tokenizer files included)."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a Hugging Face checkpoint directory (no config.json)")
    model = GroundingDinoForObjectDetection.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = special_token_ids(tokenizer)
    delimiters = [ids["cls"], ids["sep"], ids["period"], ids["question"]]
    if sorted(delimiters) != sorted(model.model.special_tokens.tolist()):
        # The model hard-codes its delimiter ids (bert-base-uncased positions); a tokenizer that puts
        # them elsewhere would silently break the phrase masks.
        raise ValueError(f"tokenizer delimiter ids {delimiters} differ from the model's "
                         f"{model.model.special_tokens.tolist()}")
    return model, tokenizer


# --------------------------------------------------------------------------- export patches


def text_masks_without_isin(input_ids: torch.Tensor, special_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Phrase-block self-attention mask [B,T,T] and position ids [B,T], in ONNX-exportable ops.

    A phrase block is the run of tokens that ends at the same delimiter; blocks closed by the first
    or the last token (or by none) count as invalid and see only themselves, with position 0.
    """
    length = input_ids.shape[1]
    special = (input_ids[:, :, None] == special_tokens.to(input_ids.device)[None, None, :]).any(-1)
    pos = torch.arange(length, device=input_ids.device)
    row, col = pos[:, None], pos[None, :]
    delimiter_at_col = special[:, None, :]  # [B, 1, T]: token j is a delimiter
    # last delimiter strictly before token i (-1 if none), first delimiter at or after i (T if none)
    before = torch.where(delimiter_at_col & (col < row), col, -1).amax(-1)
    closing = torch.where(delimiter_at_col & (col >= row), col, length).amin(-1)
    valid = (closing != 0) & (closing != length - 1) & (closing != length)
    attention = ((closing[:, :, None] == closing[:, None, :]) & valid[:, None, :]) | (row == col)[None]
    position_ids = torch.where(valid, pos[None, :] - before - 1, 0).clamp(min=0).to(torch.long)
    return attention, position_ids


PATCHES = {
    "generate_masks_with_special_tokens_and_transfer_map": text_masks_without_isin,
}
# transformers' own functions, kept for the equality checks
ORIGINALS = {name: getattr(_gd, name) for name in PATCHES}


@contextlib.contextmanager
def export_patches() -> Iterator[None]:
    """Swap the exportable replacements into transformers' Grounding DINO module, then restore."""
    saved = {name: getattr(_gd, name) for name in PATCHES}
    try:
        for name, replacement in PATCHES.items():
            setattr(_gd, name, replacement)
        yield
    finally:
        for name, original in saved.items():
            setattr(_gd, name, original)


# --------------------------------------------------------------------------- graph


class GroundingDinoGraph(nn.Module):
    """`GroundingDinoForObjectDetection` with positional inputs and two outputs."""

    def __init__(self, model: GroundingDinoForObjectDetection):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, pixel_mask, input_ids, attention_mask, token_type_ids):
        out = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask, input_ids=input_ids,
                         attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=True)
        return out.logits.clamp(min=MASKED_LOGIT), out.pred_boxes


def _case(tokenizer, texts: list[str], image_size: int, valid_hw: list[tuple[int, int]], seed: int,
          max_length: int | None = None) -> dict[str, torch.Tensor]:
    """A letterbox-shaped input: random pixels inside the valid region, zeros in the padding."""
    gen = torch.Generator().manual_seed(seed)
    batch = len(texts)
    pixels = torch.zeros(batch, 3, image_size, image_size)
    mask = torch.zeros(batch, image_size, image_size, dtype=torch.long)
    for i, (h, w) in enumerate(valid_hw):
        pixels[i, :, :h, :w] = torch.randn(3, h, w, generator=gen)
        mask[i, :h, :w] = 1
    text = tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=True,
                     truncation=max_length is not None, max_length=max_length)
    return {
        "pixel_values": pixels,
        "pixel_mask": mask,
        "input_ids": text["input_ids"].to(torch.long),
        "attention_mask": text["attention_mask"].to(torch.long),
        "token_type_ids": text["token_type_ids"].to(torch.long),
    }


_TEXTS = (["a red dog. a cat. person."], ["a ball.", "the blue car. a man with a phone? a tree."])
_LONG_TEXT = " ".join(["a red dog. a small cat on the grass."] * 40)  # > 256 tokens, truncated to 256
TIE_MARGIN = 1e-4  # strict cases: smallest gap between distinct top-k encoder scores
TIE_EPS = 1e-3  # letterbox cases: a rank whose score is this close to a neighbour's may swap


def encoder_topk_scores(model: GroundingDinoForObjectDetection, case: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, num_queries + 1] encoder proposal scores in the order the two-stage TopK ranks them."""
    with torch.no_grad():
        out = model(**case, return_dict=True)
    scores = out.enc_outputs_class.max(-1).values
    return torch.topk(scores, min(model.config.num_queries + 1, scores.shape[1]), dim=1).values


def _smallest_gap(scores: torch.Tensor) -> float:
    gaps = scores[:, :-1] - scores[:, 1:]
    gaps = gaps[gaps > 0]
    return float(gaps.min()) if gaps.numel() else float("inf")


def strict_parity_cases(model, tokenizer, image_size: int) -> list[dict[str, torch.Tensor]]:
    """Cases whose query selection cannot differ between runtimes (export example first).

    Grounding DINO picks its queries with a TopK over ~1.3k (256 px) to ~13k (800 px) encoder
    scores and pairs rank i with learned query embedding i. Two scores within float error of each
    other (routine among 900 ranks) can swap between PyTorch and ONNX Runtime, which changes those
    two queries' outputs entirely, so an element-wise comparison needs inputs without near-ties:
    a small image region (few distinct proposals; the padded positions all score the same and are
    identical, so their order cannot matter), with the seed chosen so distinct scores differ by at
    least TIE_MARGIN. Full-size letterboxes are compared tie-aware by `check_letterbox_parity`.
    """
    s = image_size
    r = max(s // 16, 32)
    layouts = [(list(_TEXTS[0]), [(r, 2 * r)], None), (list(_TEXTS[1]), [(2 * r, r), (r, r)], None),
               ([_LONG_TEXT], [(r, 2 * r)], MAX_TEXT_TOKENS)]
    cases = []
    for index, (texts, regions, max_length) in enumerate(layouts):
        best, best_gap = None, -1.0
        for attempt in range(6):
            case = _case(tokenizer, texts, s, regions, seed=100 * index + attempt, max_length=max_length)
            gap = _smallest_gap(encoder_topk_scores(model, case))
            if gap > best_gap:
                best, best_gap = case, gap
            if gap >= TIE_MARGIN:
                break
        else:
            log(f"parity case {index}: smallest encoder score gap {best_gap:.2g} < {TIE_MARGIN:g}")
        cases.append(best)
    return cases


def letterbox_parity_cases(tokenizer, image_size: int) -> list[dict[str, torch.Tensor]]:
    """Realistic letterboxes: a landscape image, and a padded text batch of portrait + square."""
    s = image_size
    return [_case(tokenizer, list(_TEXTS[0]), s, [(s * 3 // 4, s)], seed=0),
            _case(tokenizer, list(_TEXTS[1]), s, [(s, s * 2 // 3), (s, s)], seed=1)]


def graph_spec(model: GroundingDinoForObjectDetection, tokenizer, image_size: int, atol: float) -> GraphSpec:
    cases = strict_parity_cases(model, tokenizer, image_size)
    text_axes = {0: "batch", 1: "text_len"}
    return GraphSpec(
        name=NAME,
        module=GroundingDinoGraph(model).eval(),
        example_inputs=cases[0],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={"pixel_values": {0: "batch"}, "pixel_mask": {0: "batch"}, "input_ids": text_axes,
                      "attention_mask": text_axes, "token_type_ids": text_axes,
                      "logits": {0: "batch"}, "pred_boxes": {0: "batch"}},
        parity_inputs=cases[1:],
        atol=atol,
        rtol=1e-3,
    )


def check_letterbox_parity(spec: GraphSpec, path: Path, cases: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """ORT vs PyTorch on full letterboxes, query by query.

    A query may differ only where its TopK rank has a neighbour whose encoder score is within
    TIE_EPS (a swap, see `strict_parity_cases`), and at most 2% of them; every other query must
    match within the spec's tolerances. Raises ParityError otherwise.
    """
    session = ort_session(path)
    model = spec.module.model
    worst, compared, swapped = 0.0, 0, 0
    for case in cases:
        with torch.no_grad(), export_patches():
            expected = [t.numpy() for t in spec.module(*case.values())]
        actual = session.run(list(OUTPUT_NAMES), {k: v.numpy() for k, v in case.items()})
        scores = encoder_topk_scores(model, case)
        gaps = (scores[:, :-1] - scores[:, 1:]).numpy()
        near_tie = np.pad(gaps < TIE_EPS, ((0, 0), (1, 0))) | np.pad(gaps < TIE_EPS, ((0, 0), (0, 1)))
        near_tie = near_tie[:, : expected[0].shape[1]]
        ok = np.ones(expected[0].shape[:2], dtype=bool)
        for exp, act in zip(expected, actual):
            err = np.abs(exp.astype(np.float64) - act)
            ok &= (err <= spec.atol + spec.rtol * np.abs(exp)).all(-1)
        if np.any(~ok & ~near_tie) or (~ok).mean() > 0.02:
            raise ParityError(f"{spec.name}: {(~ok).sum()} of {ok.size} queries differ from PyTorch on a "
                              f"letterboxed image, {(~ok & ~near_tie).sum()} of them not explained by TopK near-ties")
        for exp, act in zip(expected, actual):
            worst = max(worst, float(np.abs(exp[ok].astype(np.float64) - act[ok]).max(initial=0.0)))
        compared += ok.size
        swapped += int((~ok).sum())
    return {"cases": len(cases), "queries": compared, "queries_swapped_by_topk_near_ties": swapped,
            "max_abs_error_other_queries": worst, "tie_eps": TIE_EPS}


def check_patches_against_reference(spec: GraphSpec) -> float:
    """The patches must not change what the model computes.

    Every parity input: the replacement function must give exactly the original's mask and position
    ids. The export example: the whole patched wrapper must reproduce the unpatched one (one pair of
    forward passes; at full size each takes seconds). Returns the whole-model max abs difference.
    """
    cases = [spec.example_inputs, *spec.parity_inputs]
    specials = spec.module.model.model.special_tokens
    original = ORIGINALS["generate_masks_with_special_tokens_and_transfer_map"]
    for case in cases:
        want = original(case["input_ids"], specials)
        got = text_masks_without_isin(case["input_ids"], specials)
        if not all(torch.equal(a, b) for a, b in zip(want, got)):
            raise RuntimeError("text_masks_without_isin differs from transformers' text mask function")
    worst = 0.0
    with torch.no_grad():
        reference = spec.module(*cases[0].values())
        with export_patches():
            patched = spec.module(*cases[0].values())
    for ref, got in zip(reference, patched):
        worst = max(worst, float((ref - got).abs().max()))
    if worst > 1e-6:
        raise RuntimeError(f"export patches change the Grounding DINO outputs by {worst:.3g}")
    return worst


def grounding_dino_model_config(model: GroundingDinoForObjectDetection, tokenizer, checkpoint: str,
                                random_weights: bool, image_size: int, patch_error: float | None) -> dict[str, Any]:
    config = model.config
    return {
        "family": "grounding_dino",
        "checkpoint": checkpoint,
        "random_weights": random_weights,
        "image_size": image_size,
        "image_mean": list(IMAGE_MEAN),
        "image_std": list(IMAGE_STD),
        "rescale_factor": 1.0 / 255.0,
        "resample": "bilinear",
        "letterbox": "resize (aspect kept, longer side to image_size), pad bottom/right with 0 after "
                     "normalisation; pixel_mask 1 = image",
        "box_format": "cxcywh normalised to the unpadded image",
        "max_text_len": config.max_text_len,
        "num_queries": config.num_queries,
        "masked_logit": MASKED_LOGIT,
        "tokenizer_dir": TOKENIZER_DIR,
        "special_token_ids": special_token_ids(tokenizer),
        "export_patches": {"replaced": sorted(PATCHES), "max_abs_error_vs_unpatched": patch_error},
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def copy_tokenizer(checkpoint: Path, out_dir: Path) -> Path:
    """Save the checkpoint's tokenizer (tokenizer.json included) next to the artifact."""
    target = Path(out_dir) / TOKENIZER_DIR
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    AutoTokenizer.from_pretrained(checkpoint).save_pretrained(staging)
    for extra in ("vocab.txt", "special_tokens_map.json"):
        if (Path(checkpoint) / extra).is_file():
            shutil.copy2(Path(checkpoint) / extra, staging / extra)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def export_grounding_dino(
    checkpoint: Path | None,
    out_dir: Path,
    image_size: int | None = None,
    expect_sha256: str | None = None,
    force: bool = False,
    random_size: str = "tiny",
) -> ArtifactRecord:
    """Export Grounding DINO at a fixed square image size; reuse a cached graph from the same checkpoint.

    `checkpoint=None` builds seeded random weights (`random_size`: "tiny" for tests, "swin-tiny" for
    real-size benchmarks) under `<out_dir>/checkpoints/`. `image_size` defaults to 256 for the tiny
    random model and 800 otherwise. The tokenizer is written to `<out_dir>/grounding_dino_tokenizer`.
    """
    out_dir = Path(out_dir)
    random_weights = checkpoint is None
    if random_weights:
        checkpoint = random_grounding_checkpoint(out_dir / "checkpoints" / f"grounding-dino-random-{random_size}",
                                                 random_size)
        log(f"no Grounding DINO checkpoint given: using RANDOM weights ({random_size} config) at {checkpoint}")
    checkpoint = Path(checkpoint)
    tiny = random_weights and random_size == "tiny"
    if image_size is None:
        image_size = TINY_IMAGE_SIZE if tiny else DEFAULT_IMAGE_SIZE
    if image_size < 32 or image_size % 32:
        raise ValueError(f"image_size must be a positive multiple of 32, got {image_size}")
    with Step(f"hashing checkpoint {checkpoint}"):
        checkpoint_sha = verify_checkpoint(checkpoint, expect_sha256)
    manifest = Manifest(out_dir)
    settings = {"family": "grounding_dino", "image_size": image_size, "graph": GRAPH_VERSION,
                "random_size": random_size if random_weights else None}
    if not force and (cached := manifest.reusable(NAME, checkpoint_sha, artifact_settings(settings))):
        if not (out_dir / cached.model_config.get("tokenizer_dir", TOKENIZER_DIR) / "tokenizer.json").is_file():
            copy_tokenizer(checkpoint, out_dir)
        log(f"{NAME}: up to date (cached by checkpoint hash and settings)")
        return cached
    with Step(f"loading Grounding DINO from {checkpoint}"):
        model, tokenizer = load_grounding_dino(checkpoint)
    spec = graph_spec(model, tokenizer, image_size, atol=1e-4 if tiny else 1e-3)
    with Step("checking the export patches against the unpatched model"):
        patch_error = check_patches_against_reference(spec)
    log(f"patched vs unpatched PyTorch: max abs error {patch_error:.2e}")
    copy_tokenizer(checkpoint, out_dir)
    config = grounding_dino_model_config(model, tokenizer, str(checkpoint), random_weights, image_size, patch_error)
    with export_patches(), warnings.catch_warnings():
        # the trace is specialised to the fixed image size on purpose; the tracer warns about every
        # shape it turns into a constant
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        record = export_artifact(spec, manifest, str(checkpoint), checkpoint_sha, random_weights, settings,
                                 model_config=config, force=force)
    with Step(f"{NAME}: tie-aware parity on full letterboxes"):
        try:
            letterbox = check_letterbox_parity(spec, out_dir / record.file, letterbox_parity_cases(tokenizer, image_size))
        except ParityError:
            manifest.records.pop(NAME, None)
            manifest.save()
            (out_dir / record.file).unlink(missing_ok=True)
            raise
    log(f"{NAME}: letterboxes: {letterbox['queries_swapped_by_topk_near_ties']} of {letterbox['queries']} queries "
        f"swapped by TopK near-ties, others within {letterbox['max_abs_error_other_queries']:.2e}")
    record.parity["letterbox"] = letterbox
    manifest.put(record)
    return record


def main(argv: list[str] | None = None) -> None:
    args = family_parser("Export Grounding DINO to ONNX at a fixed (letterbox) image size", RANDOM_CONFIGS,
                         "square export size (default 256 tiny random, else 800)").parse_args(argv)
    record = export_grounding_dino(args.checkpoint, args.out, args.image_size, args.expect_sha256, args.force,
                                   args.random_size)
    log(f"{record.name}: {args.out / record.file} sha256 {record.sha256[:12]} parity {record.parity['max_abs_error']:.2e}")


if __name__ == "__main__":
    main()
