"""segserve.common.grounding (numpy) against transformers' Grounding DINO processor on a tiny model."""
from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (AutoTokenizer, GroundingDinoForObjectDetection, GroundingDinoImageProcessorPil,  # noqa: E402
                          GroundingDinoProcessor)
from transformers.image_utils import get_image_size_for_max_height_width  # noqa: E402

from segserve.common import grounding as g  # noqa: E402
from segserve.export.grounding_dino import TINY_IMAGE_SIZE, random_grounding_checkpoint  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


SIZE = TINY_IMAGE_SIZE


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_grounding_checkpoint(tmp_path_factory.mktemp("gd_ckpt") / "tiny")


@pytest.fixture(scope="module")
def processor(checkpoint):
    return GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil(),
                                  tokenizer=AutoTokenizer.from_pretrained(checkpoint))


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    return g.CaptionTokenizer(checkpoint)


@pytest.fixture(scope="module")
def outputs(checkpoint, tokenizer):
    """The tiny PyTorch model on two letterboxed images with captions of different lengths."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (180, 240, 3), dtype=np.uint8), rng.integers(0, 256, (333, 200, 3), dtype=np.uint8)]
    pixels = g.letterbox_batch(images, SIZE)
    text = tokenizer.encode_batch([["a cat", "a red dog", "person"], "the blue cars. a ball on the grass."])
    model = GroundingDinoForObjectDetection.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(pixels["pixel_values"]),
                    pixel_mask=torch.from_numpy(pixels["pixel_mask"]),
                    **{k: torch.from_numpy(v) for k, v in text.items()})
    return out, text, pixels["original_sizes"]


# ----------------------------------------------------------------------------- text


@pytest.mark.parametrize("text, caption", [
    ("A Cat. a DOG", "a cat. a dog."),
    ("  red   ball .. car.", "red ball. car."),
    (["A cat", " remote control "], "a cat. remote control."),
    (b"person", "person."),
    ("is it a dog?", "is it a dog?."),
    (np.array([b"Red car"], dtype=object), "red car."),
])
def test_normalize_caption(text, caption):
    assert g.normalize_caption(text) == caption


@pytest.mark.parametrize("text, field", [
    ("", "text"), ("   \n\t", "text"), ("...", "text"), ([], "text"), (["cat", " "], "text[1]"),
    (b"\xff\xfecat", "text"), ("cat\ud800", "text"), (None, "text"), (42, "text"),
])
def test_invalid_text_raises_naming_the_field(tokenizer, text, field):
    with pytest.raises(g.GroundingInputError) as err:
        tokenizer.encode(text)
    assert isinstance(err.value, ValueError) and err.value.field == field and str(err.value).startswith(field)


def test_too_many_tokens(tokenizer):
    tokenizer.encode("dog. " * 127)  # 254 + [CLS] + [SEP] = 256 tokens: allowed
    with pytest.raises(g.GroundingInputError, match="257 tokens") as err:
        tokenizer.encode("dog. " * 126 + "dog cat")
    assert err.value.field == "text"


@pytest.mark.parametrize("labels", [["a cat", "a red dog", "person"], ["remote control", "cups", "Big Trucks"],
                                    ["a horse?", "zebra"]])
def test_tokenisation_equals_processor(processor, tokenizer, labels):
    ours = tokenizer.encode(labels)
    theirs = processor(text=labels, return_tensors="np")  # the processor merges labels itself
    np.testing.assert_array_equal(ours.input_ids, theirs["input_ids"][0])
    np.testing.assert_array_equal(ours.attention_mask, theirs["attention_mask"][0])
    np.testing.assert_array_equal(ours.token_type_ids, theirs["token_type_ids"][0])
    assert processor.tokenizer.unk_token_id not in ours.input_ids[:3]  # the vocabulary is really used
    same = processor(text=ours.caption, return_tensors="np")
    np.testing.assert_array_equal(ours.input_ids, same["input_ids"][0])


def test_batch_padding_equals_processor(processor, tokenizer):
    captions = ["a cat.", "the blue cars. a ball on the grass."]
    ours = tokenizer.encode_batch(captions)
    theirs = processor(text=captions, padding=True, return_tensors="np")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(ours[key], theirs[key])


def test_decode_equals_transformers(processor, tokenizer):
    rng = np.random.default_rng(1)
    vocab = np.arange(1030, 1030 + 45)
    sequences = [[1030, 1031, 1012], [1062, 1075], [102], [], [1012, 1012, 102], [101, 1030, 1029]]
    sequences += [rng.choice(np.r_[vocab, [1012, 1029, 102, 1010]], size=rng.integers(1, 9)).tolist()
                  for _ in range(30)]
    assert [tokenizer.decode(s) for s in sequences] == processor.batch_decode(sequences)


# ----------------------------------------------------------------------------- image


@pytest.mark.parametrize("shape", [(180, 240, 3), (333, 200, 3), (256, 256, 3), (50, 70, 3), (600, 599, 3),
                                   (97, 41)])
def test_letterbox_equals_image_processor(shape):
    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    ours = g.letterbox(image, SIZE)
    rgb = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    ref = GroundingDinoImageProcessorPil()(images=rgb, size={"max_height": SIZE, "max_width": SIZE},
                                           pad_size={"height": SIZE, "width": SIZE}, return_tensors="np")
    np.testing.assert_array_equal(ours.pixel_values, ref["pixel_values"][0])
    np.testing.assert_array_equal(ours.pixel_mask, ref["pixel_mask"][0])
    assert max(ours.resized_size) >= SIZE - 1 and ours.original_size == shape[:2]
    h, w = ours.resized_size
    assert ours.pixel_mask.sum() == h * w and not ours.pixel_values[:, h:, :].any()


def test_letterbox_size_rule_matches_transformers():
    rng = np.random.default_rng(2)
    for height, width in rng.integers(1, 4000, (2000, 2)).tolist():
        ref = get_image_size_for_max_height_width((height, width), 800, 800)
        # transformers can round a very thin image's short side down to 0 pixels; we keep 1
        assert g.letterbox_size(height, width, 800) == tuple(max(1, v) for v in ref)


@pytest.mark.parametrize("image", [np.zeros((10, 10, 3), np.float32), np.zeros((10, 10, 4), np.uint8),
                                   np.zeros((0, 10, 3), np.uint8), "image.png"])
def test_invalid_image_raises(image):
    with pytest.raises(g.GroundingInputError) as err:
        g.letterbox(image, SIZE)
    assert err.value.field == "image"


# ----------------------------------------------------------------------------- boxes


@pytest.mark.parametrize("box_threshold, text_threshold", [(0.9, 0.5), (0.97, 0.75), (0.5, 0.9)])
def test_select_boxes_equals_post_process(processor, tokenizer, outputs, box_threshold, text_threshold):
    out, text, sizes = outputs
    input_ids = torch.from_numpy(text["input_ids"])
    theirs = processor.post_process_grounded_object_detection(
        out, input_ids=input_ids, threshold=box_threshold, text_threshold=text_threshold,
        target_sizes=[tuple(int(v) for v in s) for s in sizes])
    ours = g.select_boxes_batch(out.logits.numpy(), out.pred_boxes.numpy(), text["input_ids"], sizes,
                                tokenizer.decode, box_threshold=box_threshold, text_threshold=text_threshold)
    num_queries = out.logits.shape[1]
    for mine, ref in zip(ours, theirs):
        assert 0 < len(mine) < num_queries  # thresholds that really select
        order = torch.argsort(-ref["scores"], stable=True)  # ours are sorted by score
        np.testing.assert_allclose(mine.boxes, ref["boxes"][order].numpy(), rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(mine.scores, ref["scores"][order].numpy(), rtol=1e-6)
        assert mine.labels == [ref["text_labels"][i] for i in order]
        assert len(set(mine.labels)) > 1  # the text threshold picks different tokens per box
        assert np.all(np.diff(mine.scores) <= 0)


def test_boxes_are_relative_to_the_unpadded_image(outputs):
    """Why boxes_to_pixels scales by the original size: image 0 fills only the top 75% of the
    letterbox, yet box centres (proposals not in the padding) span the whole [0, 1] range."""
    out, _, _ = outputs
    boxes = out.pred_boxes[0].numpy()
    inside = boxes[:, 3] < 0.5  # padded-area proposals end up as full-image boxes
    assert boxes[inside, 1].max() > 0.9


def test_threshold_is_strict(tokenizer, outputs):
    out, text, sizes = outputs
    logits, boxes = out.logits[0].numpy(), out.pred_boxes[0].numpy()
    scores = g.sigmoid(logits).max(-1)
    cut = float(np.sort(scores)[-5])
    got = g.select_boxes(logits, boxes, text["input_ids"][0], tuple(sizes[0]), tokenizer.decode, box_threshold=cut)
    assert len(got) == int((scores > np.float32(cut)).sum()) and np.all(got.scores > np.float32(cut))


def _reference_nms(boxes, scores, labels, iou_threshold):
    """Plain per-class greedy NMS written independently of the module under test."""
    keep = []
    for i in sorted(range(len(scores)), key=lambda k: (-float(scores[k]), k)):
        ok = True
        for j in keep:
            if labels[j] != labels[i]:
                continue
            x0, y0 = max(boxes[i][0], boxes[j][0]), max(boxes[i][1], boxes[j][1])
            x1, y1 = min(boxes[i][2], boxes[j][2]), min(boxes[i][3], boxes[j][3])
            inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
            area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
            union = area(boxes[i]) + area(boxes[j]) - inter
            if union > 0 and inter / union > iou_threshold:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def test_nms_and_top_k(tokenizer, outputs):
    out, text, sizes = outputs
    args = (out.logits[0].numpy(), out.pred_boxes[0].numpy(), text["input_ids"][0], tuple(sizes[0]), tokenizer.decode)
    # untrained boxes sit on the proposal grid and overlap at most ~0.25, hence the low IoU threshold
    options = {"box_threshold": 0.9, "text_threshold": 0.2}
    full = g.select_boxes(*args, **options)
    nms = g.select_boxes(*args, **options, iou_threshold=0.2)
    expected = _reference_nms(full.boxes.astype(np.float64).tolist(), full.scores, full.labels, 0.2)
    np.testing.assert_array_equal(nms.query_indices, full.query_indices[expected])
    assert 0 < len(nms) < len(full)
    top = g.select_boxes(*args, **options, iou_threshold=0.2, max_objects=3)
    np.testing.assert_array_equal(top.query_indices, nms.query_indices[:3])
    assert top.labels == nms.labels[:3]


def test_nms_is_class_aware():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], dtype=np.float32)
    keep = g.class_aware_nms(boxes, scores, ["cat", "cat", "dog", "cat"], iou_threshold=0.5)
    assert keep.tolist() == [0, 2, 3]


def test_boxes_to_pixels_and_clip():
    boxes = np.array([[0.5, 0.5, 1.0, 1.0], [0.0, 0.1, 0.4, 0.2]], dtype=np.float32)
    np.testing.assert_allclose(g.boxes_to_pixels(boxes, (200, 400)), [[0, 0, 400, 200], [-80, 0, 80, 40]])
    np.testing.assert_allclose(g.boxes_to_pixels(boxes, (200, 400), clip=True)[1], [0, 0, 80, 40])


@pytest.mark.parametrize("options, field", [({"box_threshold": 1.5}, "box_threshold"),
                                            ({"text_threshold": float("nan")}, "text_threshold"),
                                            ({"iou_threshold": -0.1}, "iou_threshold"),
                                            ({"max_objects": 0}, "max_objects")])
def test_invalid_selection_options(tokenizer, options, field):
    with pytest.raises(g.GroundingInputError) as err:
        g.select_boxes(np.zeros((4, 256), np.float32), np.zeros((4, 4), np.float32), np.array([101, 1030, 1012, 102]),
                       (10, 10), tokenizer.decode, **options)
    assert err.value.field == field


def test_vocab_txt_fallback_tokenises_the_same(tmp_path, checkpoint, tokenizer):
    """Checkpoints without tokenizer.json: the WordPiece vocabulary alone gives the same ids."""
    vocab = AutoTokenizer.from_pretrained(checkpoint).get_vocab()
    (tmp_path / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])))
    fallback = g.CaptionTokenizer(tmp_path)
    for text in (["a cat", "Big Trucks", "zebra"], "the blue car? a ball on the grass."):
        np.testing.assert_array_equal(fallback.encode(text).input_ids, tokenizer.encode(text).input_ids)
    assert fallback.special_token_ids == tokenizer.special_token_ids
