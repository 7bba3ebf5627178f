"""TensorRT optimization profiles for every exported graph.

A profile maps each input of a graph to its (min, opt, max) full shape, batch included. The shapes
come from the manifest's recorded signature (a dimension fixed there stays fixed) and, for each
dynamic axis, from what the fleet actually sends the graph, bounded by the orchestrator's and the
tracker's own limits (`Limits`, read from the code):

- `sam2_image_encoder`, `mask2former`, `grounding_dino`: one image per request, merged by Triton's
  dynamic batcher up to the model's `max_batch_size` (the repository description); Grounding DINO's
  text is 1..`max_text_len` (256) tokens, longer text is refused by the tokenizer.
- `sam2_prompt_decoder` [prompts, points]: an interactive prompt is one prompt of clicks + a pad
  point, or one prompt per box of clicks + 2 corners + pad (`build_prompts`); automatic masks send
  batches of single clicks + pad; text-to-mask one box (2 corners + pad) per detection. Two
  profiles, so that one click stays fast: interactive (few prompts, many points; the clicks of up
  to `image_batch` sessions, the session model's `max_batch_size`, decoded together with one
  image per prompt) and batched (many prompts of 2-3 points on one image).
- video graphs, as the tracker (`sam2_video_core`) calls them: the encoder the frames of the STEP
  requests of one execute() (up to the tracker's `max_batch_size`), the decoder and memory
  attention every object of a frame with the same shapes (`objects`, up to the tracker's
  `max_objects` per call; clicks + box corners + pad), the frame's features once or, for objects
  of several sessions, once per object (`images`: 1 or `objects`), the memory encoder every object
  computed on a frame (up to `max_objects` per call), memory attention `frames` = selected conditioning frames +
  up to `num_maskmem - 1` recent ones and `pointers` = conditioning frames not in the future + up
  to `min(num_frames, max_object_pointers_in_encoder) - 1` recent ones (0 is possible: an object
  prompted only on a later frame).

Conditioning frames per object are not bounded by the model when `max_cond_frame_num` is -1, and
object pointers take every conditioning frame whatever that setting: the profiles cover objects
prompted on at most `Limits.prompted_frames` (16) frames. Past that, memory attention gets a shape
outside its profiles: a TensorRT plan refuses the call (the tracker's request fails, the session
is unchanged), and the onnxruntime accelerator, given explicit profiles, does not cover it either.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from segserve.export.manifest import Manifest

Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
Range = tuple[int, int, int]  # (min, opt, max) of one dynamic axis

# Conditioning (prompted) frames per video object the profiles cover (see the module docstring).
PROMPTED_FRAMES = 16
# Common caption length ("a cat. a remote control." is 9 tokens with [CLS] and [SEP]).
TEXT_TOKENS_OPT = 16


def _settings():
    from segserve.orchestrator.settings import Settings

    return Settings()


def _automask(column: int) -> int:
    from segserve.orchestrator.automask import _LIMITS

    return next(limit[column] for limit in _LIMITS if limit[0] == "points_per_batch")


def _text_objects() -> int:
    from segserve.orchestrator.text import MAX_OBJECTS

    return MAX_OBJECTS


def _text_tokens() -> int:
    from segserve.common.grounding import MAX_TEXT_TOKENS

    return MAX_TEXT_TOKENS


def _video_points() -> int:
    from segserve.orchestrator.video_input import MAX_POINTS_PER_OBJECT

    return MAX_POINTS_PER_OBJECT


@dataclass
class Limits:
    """What the orchestrator and the tracker let through, defaults read from their code. `None`:
    read from the manifest (the tracker's rules from the video model config) or from the
    repository description built with `options` (batch sizes, the tracker's object and frame caps)."""

    image_points: int = field(default_factory=lambda: _settings().max_points)  # clicks per request
    image_boxes: int = field(default_factory=lambda: _settings().max_boxes)
    automask_batch: int = field(default_factory=lambda: _automask(4))  # points_per_batch, highest
    automask_batch_opt: int = field(default_factory=lambda: _automask(1))  # its default
    text_objects: int = field(default_factory=_text_objects)  # text-to-mask max_objects
    text_tokens: int = field(default_factory=_text_tokens)
    video_points: int = field(default_factory=_video_points)  # clicks per object (plus a box)
    prompted_frames: int = PROMPTED_FRAMES
    # From the repository description (`segserve.repository.description`), built with `options`.
    encoder_batch: int | None = None
    image_batch: int | None = None  # requests (sessions) whose clicks one image-session decoder call takes
    grounding_batch: int | None = None
    mask2former_batch: int | None = None
    video_objects: int | None = None  # the tracker's max_objects
    video_steps: int | None = None  # STEP requests one tracker execute() computes together (its max_batch_size)
    video_frames: int | None = None  # the tracker's max_frames
    # From the video model config.
    num_maskmem: int | None = None
    max_object_pointers: int | None = None
    max_cond_frame_num: int | None = None
    options: dict[str, Any] = field(default_factory=dict)  # build-repo options (e.g. max_video_objects)

    def resolved(self, manifest: Manifest) -> "Limits":
        """A copy with every `None` filled in from the manifest and the repository description."""
        from dataclasses import replace

        specs = _described(manifest, self.options)
        video = next((r.model_config for n, r in manifest.records.items() if n.startswith("sam2_video_")), {})
        tracker = specs.get("sam2_video_tracker")
        found = {
            "encoder_batch": _batch(specs, "sam2_image_encoder"),
            "image_batch": _batch(specs, "sam2_image_session") or 1,
            "grounding_batch": _batch(specs, "grounding_dino"),
            "mask2former_batch": _batch(specs, "mask2former"),
            "video_objects": int(tracker.parameters["max_objects"]) if tracker else None,
            "video_steps": max(1, tracker.max_batch_size) if tracker else None,
            "video_frames": int(tracker.parameters["max_frames"]) if tracker else None,
            "num_maskmem": int(video.get("num_maskmem", 7)),
            "max_object_pointers": int(video.get("max_object_pointers_in_encoder", 16)),
            "max_cond_frame_num": int(video.get("max_cond_frame_num", -1)),
        }
        return replace(self, **{k: v for k, v in found.items() if getattr(self, k) is None})

    # Derived bounds of the tracker's calls.
    def memory_frames(self) -> int:
        cond = self.prompted_frames
        if self.max_cond_frame_num is not None and self.max_cond_frame_num != -1:
            cond = min(cond, self.max_cond_frame_num)
        return cond + self.num_maskmem - 1

    def pointers(self) -> int:
        return self.prompted_frames + min(self.video_frames, self.max_object_pointers) - 1


def _described(manifest: Manifest, options: dict[str, Any]) -> dict:
    """Every model the repository description gives for this manifest, by name (no files needed)."""
    from segserve.repository.description import FAMILY_MODELS

    opts = {"session_ttl_s": 600.0, "max_sessions": 64,
            "artifacts": {n: r.model_config for n, r in manifest.records.items()}, **options}
    specs = {}
    for key, describe in FAMILY_MODELS.items():
        if key in manifest.records:
            specs.update((s.name, s) for s in describe(manifest.records[key].model_config, opts))
    return specs


def _batch(specs: dict, name: str) -> int | None:
    spec = specs.get(name)
    return None if spec is None else max(1, spec.max_batch_size)


def _axis_ranges(name: str, manifest: Manifest, limits: Limits) -> list[dict[str, Range]]:
    """Per profile, the range of every dynamic axis (named as the exporter named it)."""
    config = manifest.records[name].model_config
    if name in ("sam2_image_encoder", "mask2former"):
        top = limits.encoder_batch if name == "sam2_image_encoder" else limits.mask2former_batch
        return [{"batch": (1, 1, top)}]
    if name == "grounding_dino":
        tokens = min(limits.text_tokens, int(config.get("max_text_len", limits.text_tokens)))
        return [{"batch": (1, 1, limits.grounding_batch), "text_len": (1, min(TEXT_TOKENS_OPT, tokens), tokens)}]
    if name == "sam2_prompt_decoder":
        # points: clicks + pad (mask only: the pad alone), or clicks + 2 box corners + pad
        # The image session decodes the clicks of up to its max_batch_size requests (sessions) in one
        # call, one image per prompt (`images` = `prompts`) when they are several, else one image.
        clicks = limits.image_boxes * limits.image_batch
        interactive = {"prompts": (1, 1, clicks), "points": (1, 2, limits.image_points + 3), "images": (1, 1, clicks)}
        # automatic masks: one click + pad per prompt; text-to-mask: one box (2 corners + pad) per object;
        # on one image each (the session decodes a request of more than `image_boxes` prompts alone)
        batched = {"prompts": (1, limits.automask_batch_opt, max(limits.automask_batch, limits.text_objects)),
                   "points": (2, 2, 3), "images": (1, 1, 1)}
        return [interactive, batched]
    objects = {"objects": (1, 1, limits.video_objects), "images": (1, 1, limits.video_objects)}
    if name == "sam2_video_image_encoder":
        return [{"batch": (1, 1, limits.video_steps)}]  # the frames of one execute()'s steps
    if name == "sam2_video_decoder":
        # clicks (+ 2 box corners) + pad; no points: two pad points
        return [{"points": (2, 2, limits.video_points + 3), **objects}]
    if name == "sam2_video_memory_encoder":
        return [{"objects": (1, 1, limits.video_objects)}]
    if name == "sam2_video_memory_attention":
        frames, pointers = limits.memory_frames(), limits.pointers()
        return [{"frames": (1, min(limits.num_maskmem, frames), frames),
                 "pointers": (0, min(limits.max_object_pointers, pointers), pointers), **objects}]
    if name == "sam2_video_mask_prompt":
        return [{}]  # every dimension fixed
    raise ValueError(f"no optimization profile rules for graph {name!r}")


def profiles_for(manifest: Manifest, name: str, limits: Limits | None = None) -> list[Profile]:
    """The optimization profiles of graph `name` of `manifest` (first: the common case's)."""
    if name not in manifest.records:
        raise KeyError(f"{name} is not in {manifest.path}")
    limits = (limits or Limits()).resolved(manifest)
    profiles = []
    for axes in _axis_ranges(name, manifest, limits):
        profile: Profile = {}
        for input_name, info in manifest.records[name].inputs.items():
            shape = []
            for dim in info["shape"]:
                if isinstance(dim, int) and dim > 0:
                    shape.append((dim, dim, dim))
                elif dim in axes:
                    low, opt, high = axes[dim]
                    shape.append((low, max(low, min(opt, high)), high))
                else:
                    raise ValueError(f"{name}: input {input_name} has axis {dim!r} that no limit bounds")
            profile[input_name] = tuple(tuple(s[i] for s in shape) for i in range(3))
        profiles.append(profile)
    return profiles


def covers(profile: Profile, shapes: dict[str, tuple[int, ...]]) -> bool:
    """Whether every input shape of one call lies within `profile`."""
    if set(shapes) != set(profile):
        return False
    for name, shape in shapes.items():
        low, _, high = profile[name]
        if len(shape) != len(low) or not all(a <= s <= b for a, s, b in zip(low, shape, high)):
            return False
    return True


def envelope(profiles: list[Profile]) -> Profile:
    """One profile holding all of `profiles` (opt: the first's). The onnxruntime backend's TensorRT
    accelerator builds every profile it is given but runs on profile 0 only (microsoft/onnxruntime
    #31624, unreleased), so it gets this one."""
    first = profiles[0]
    return {name: (tuple(min(p[name][0][i] for p in profiles) for i in range(len(first[name][0]))),
                   first[name][1],
                   tuple(max(p[name][2][i] for p in profiles) for i in range(len(first[name][0]))))
            for name in first}


def shapes_string(profiles: list[Profile], which: int) -> str:
    """ONNX Runtime's `trt_profile_{min,opt,max}_shapes` value (`which` 0, 1, 2): "name:AxBxC,..."
    with the names repeated, in the same order, once per profile."""
    parts = []
    for profile in profiles:
        for name, triple in profile.items():
            if not triple[which]:
                raise ValueError(f"input {name} is a scalar: the profile string cannot express it")
            parts.append(f"{name}:{'x'.join(str(d) for d in triple[which])}")
    return ",".join(parts)


def parse_shapes_string(text: str) -> list[dict[str, tuple[int, ...]]]:
    """The inverse of `shapes_string` for one of min / opt / max: one dict per profile, as ONNX
    Runtime reads it (the k-th occurrence of a name belongs to profile k)."""
    profiles: list[dict[str, tuple[int, ...]]] = []
    for item in text.split(","):
        name, _, dims = item.partition(":")
        if not name or not dims:
            raise ValueError(f"malformed profile shape {item!r}")
        shape = tuple(int(d) for d in dims.split("x"))
        index = next((i for i, p in enumerate(profiles) if name not in p), len(profiles))
        if index == len(profiles):
            profiles.append({})
        profiles[index][name] = shape
    return profiles
