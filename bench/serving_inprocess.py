"""The in-process modes of the serving benchmark: `ceiling`, `naive` and `pillow`.

ceiling: the towers Triton hosts (SiglipVisionModel / SiglipTextModel, same dtype as
    model_repository/*/1/model.py: fp32 on CPU, fp16 on GPU), called on already-preprocessed
    tensors at the batch size Triton formed under the served run. Model-bound: no decoding,
    no tokenizing, no RPC. Classify's ten label embeddings are computed once (the gateway
    caches them too), so its ceiling is the vision tower plus a 10-column score.
naive: what a user writes by hand, in-process and sequential: transformers'
    zero-shot-image-classification pipeline for Classify; SiglipProcessor + SiglipModel's
    get_image_features / get_text_features (input_ids only, as the reference does) for
    Embed and Score. Decoding and preprocessing are part of every call.
pillow: one bare Pillow core, sequential in one thread: each of the request's JPEGs opened,
    converted to RGB, resized BICUBIC straight to the model size, as an array (no model, no
    RPC). The yardstick for the service's JPEG path, which does the same pixel work (the
    gateway's EXACT preprocessing: pixel-identical, checked per run in the cell's
    `matches_gateway_exact`) plus the size and format checks, the RPCs and the model.

torch and transformers are imported here only; every call returns a no-argument callable.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from serving_workloads import CLASSIFY_LABELS, Payloads, UniqueTexts, Workload

TEMPLATE = "This is a photo of {}."


def _torch_dtype(device: str) -> Any:
    import torch

    return torch.float16 if device.startswith("cuda") else torch.float32


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Ceiling:
    def __init__(self, checkpoint: Path, device: str, *, compile_mode: str | None = None) -> None:
        import torch
        from transformers import AutoTokenizer, SiglipTextModel, SiglipVisionModel

        from gateway.core.model_meta import load_model_meta

        self.device = device
        self.dtype = _torch_dtype(device)
        self.vision = SiglipVisionModel.from_pretrained(checkpoint).to(device, self.dtype).eval()
        self.text = SiglipTextModel.from_pretrained(checkpoint).to(device, self.dtype).eval()
        if compile_mode:
            # dynamic=False: one specialised build (and with reduce-overhead one CUDA graph) per
            # batch shape, as the Triton models build per batch bucket.
            self.vision = torch.compile(self.vision, mode=compile_mode, dynamic=False)
            self.text = torch.compile(self.text, mode=compile_mode, dynamic=False)
        # CUDA graph outputs are reused by the next replay: each call starts a new step.
        self.mark_step = compile_mode == "reduce-overhead" and device.startswith("cuda")
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        meta = load_model_meta(str(checkpoint))
        self.text_length, self.image_spec = meta.text_length, meta.image
        self.scale, self.bias = float(np.exp(meta.logit_scale)), meta.logit_bias
        self.image_size = self.vision.config.image_size
        with torch.inference_mode():
            labels = self._ids([TEMPLATE.format(x) for x in CLASSIFY_LABELS])
            self.label_embeds = _normalize(self.text(input_ids=labels).pooler_output.float())

    def _ids(self, texts: list[str]) -> Any:
        ids = self.tokenizer(texts, padding="max_length", max_length=self.text_length,
                             truncation=True, return_tensors="pt")["input_ids"]
        return ids.to(self.device)

    def _pixels(self, payloads: Payloads, rows: int) -> Any:
        import torch

        # The same scaling model.py applies to uint8 pixels, done once, ahead of time.
        x = torch.from_numpy(payloads.raw.copy()).permute(2, 0, 1).float()
        spec = self.image_spec
        mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
        x = x.mul(spec.rescale_factor).sub(mean).div(std)
        return x.unsqueeze(0).repeat(rows, 1, 1, 1).to(self.device, self.dtype).contiguous()

    def call_for(self, workload: Workload, batch: int, payloads: Payloads,
                 texts: UniqueTexts) -> Callable[[], None]:
        """One forward at `batch` requests; the benchmark scales the rate by `batch`."""
        import torch

        images = batch * workload.images_per_request
        n_texts = batch * workload.texts_per_request
        pixels = self._pixels(payloads, images) if images else None
        ids = self._ids(texts.take(n_texts)) if n_texts else None
        vision, text, device = self.vision, self.text, self.device
        label_embeds, scale, bias = self.label_embeds, self.scale, self.bias
        mark_step = self.mark_step

        def run() -> None:
            with torch.inference_mode():
                if mark_step:
                    torch.compiler.cudagraph_mark_step_begin()
                if workload.name == "classify":
                    img = _normalize(vision(pixel_values=pixels).pooler_output.float())
                    torch.sigmoid(img @ label_embeds.T * scale + bias).cpu()
                elif workload.name == "score":
                    img = _normalize(vision(pixel_values=pixels).pooler_output.float())
                    txt = _normalize(text(input_ids=ids).pooler_output.float())
                    torch.sigmoid(img @ txt.T * scale + bias).cpu()
                elif pixels is not None:
                    vision(pixel_values=pixels).pooler_output.float().cpu()
                else:
                    text(input_ids=ids).pooler_output.float().cpu()
            _sync(device)
        return run


class Naive:
    def __init__(self, checkpoint: Path, device: str) -> None:
        from transformers import SiglipModel, SiglipProcessor, pipeline

        self.device = device
        self.model = SiglipModel.from_pretrained(checkpoint).to(device).eval()
        self.processor = SiglipProcessor.from_pretrained(checkpoint)
        self.pipe = pipeline("zero-shot-image-classification", model=str(checkpoint),
                             device=device)
        from gateway.core.model_meta import load_model_meta

        self.text_length = load_model_meta(str(checkpoint)).text_length

    def call_for(self, workload: Workload, payloads: Payloads,
                 texts: UniqueTexts) -> Callable[[], object]:
        import torch
        from PIL import Image

        model, processor, device = self.model, self.processor, self.device
        text_length = self.text_length

        def image_features(images: list[Image.Image]) -> Any:
            pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
            return _normalize(_features(model.get_image_features(pixel_values=pixels)))

        def text_features(batch: list[str]) -> Any:
            ids = processor(text=batch, padding="max_length", max_length=text_length,
                            truncation=True, return_tensors="pt")["input_ids"].to(device)
            return _normalize(_features(model.get_text_features(input_ids=ids)))

        name, jpegs = workload.name, payloads.jpegs_for(workload)
        if name == "classify":
            labels = list(CLASSIFY_LABELS)
            return lambda: self.pipe(_decode(payloads.jpegs[0]), candidate_labels=labels)

        def run() -> object:
            with torch.no_grad():
                if name == "embed_raw":
                    return image_features([Image.fromarray(payloads.raw, "RGB")]).cpu()
                if name in ("embed_jpeg", "embed_jpeg8"):
                    return image_features([_decode(b) for b in jpegs]).cpu()
                if name == "embed_text":
                    return text_features(texts.take(1)).cpu()
                img = image_features([_decode(b) for b in jpegs])
                txt = text_features(texts.take(workload.texts_per_request))
                logits = img @ txt.T * model.logit_scale.exp() + model.logit_bias
                return torch.sigmoid(logits).cpu()
        return run

    def pipeline_check(self, payloads: Payloads) -> dict[str, Any]:
        """What the pipeline does with SigLIP text, and how far its scores are from the reference.

        The reference (and the gateway) feed the text tower input_ids only. The pipeline pads
        to max_length=64 for SigLIP but passes whatever the tokenizer returns, so a tokenizer
        that returns attention_mask makes it mask the pads, and its scores drift.
        """
        import torch

        labels = list(CLASSIFY_LABELS)
        image = _decode(payloads.jpegs[0])
        sample = self.pipe.tokenizer(["x"], padding="max_length", max_length=self.text_length)
        out = self.pipe(image, candidate_labels=labels)
        got = {d["label"]: d["score"] for d in out}
        inputs = self.processor(text=[TEMPLATE.format(x) for x in labels], images=[image],
                                padding="max_length", max_length=self.text_length, truncation=True,
                                return_tensors="pt")
        with torch.no_grad():
            logits = self.model(input_ids=inputs["input_ids"].to(self.device),
                                pixel_values=inputs["pixel_values"].to(self.device)
                                ).logits_per_image[0]
        ref = torch.sigmoid(logits).cpu().numpy()
        diff = max(abs(got[label] - float(p)) for label, p in zip(labels, ref, strict=True))
        return {
            "pipeline_text_padding": "max_length (64), truncation (transformers pads SigLIP so)",
            "tokenizer_returns_attention_mask": "attention_mask" in sample,
            "max_abs_probability_diff_vs_reference": diff,
            "reference_max_probability": float(ref.max()),
        }


class BarePillow:
    """What one core does with plain Pillow calls and nothing else: the `pillow` mode."""

    def __init__(self, checkpoint: Path) -> None:
        from gateway.core.model_meta import load_model_meta

        self.size = load_model_meta(str(checkpoint)).image_size

    def call_for(self, workload: Workload, payloads: Payloads) -> Callable[[], object]:
        jpegs, size = payloads.jpegs_for(workload), self.size
        return lambda: [bare_pillow(b, size) for b in jpegs]

    def matches_gateway_exact(self, workload: Workload, payloads: Payloads) -> bool:
        """Whether the loop computes what the gateway computes (EXACT) for these JPEGs."""
        from gateway.core.images import ImageLimits, preprocess_encoded

        limits = ImageLimits(size=self.size)
        return all(np.array_equal(bare_pillow(b, self.size),
                                  preprocess_encoded(b, field="image", limits=limits))
                   for b in payloads.jpegs_for(workload))


def bare_pillow(data: bytes, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))


def _decode(data: bytes) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def _features(out: Any) -> Any:
    """get_*_features' result as a tensor: transformers 5 wraps it in a model output
    (its pooler_output), 4.x returns the tensor itself."""
    return getattr(out, "pooler_output", out)


def _normalize(x: Any) -> Any:
    return x / x.norm(dim=-1, keepdim=True)
