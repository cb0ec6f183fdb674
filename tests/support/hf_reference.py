"""The HF reference as the tests call it, under either supported transformers major (4.57, 5.x).

Owns the few reference calls whose form changed between the majors, so that each test states
what it compares and not which major it runs under.
"""

from __future__ import annotations

from typing import Any


def image_processor(checkpoint: Any, **kwargs: Any) -> Any:
    """The checkpoint's image processor as the reference: Pillow, on load_image's RGB output.

    Pillow: 4.x's ``SiglipImageProcessor`` is the Pillow one; 5.x's resizes with torchvision
    when that is installed (pixels up to one level off Pillow's) and falls back to Pillow with
    a warning otherwise, while ``SiglipImageProcessorPil`` is always the Pillow one.

    ``do_convert_rgb=False``: load_image already converted the image to RGB, and 4.x's
    processor (``do_convert_rgb`` unset in SigLIP's configs) converts nothing more. 5.x's
    converts again by default, compositing onto white any image whose ``info`` still names a
    transparent colour, which Pillow keeps on a palette GIF or PNG after ``convert("RGB")``:
    pixels of that colour turn white, where load_image (and the gateway) keep the colour.
    """
    import transformers

    cls = getattr(transformers, "SiglipImageProcessorPil", None) or \
        transformers.SiglipImageProcessor
    return cls.from_pretrained(checkpoint, **{"do_convert_rgb": False, **kwargs})


def siglip_processor(checkpoint: Any) -> Any:
    """``SiglipProcessor`` of ``checkpoint`` with the reference image processor (see above)."""
    from transformers import SiglipProcessor, SiglipTokenizer

    return SiglipProcessor(image_processor=image_processor(checkpoint),
                           tokenizer=SiglipTokenizer.from_pretrained(checkpoint))


def features(output: Any) -> Any:
    """``get_image_features`` / ``get_text_features`` as the embedding tensor.

    4.x returns the tensor; 5.x a model output whose ``pooler_output`` is that tensor.
    """
    return getattr(output, "pooler_output", output)


def channels_last(pixel_values: Any) -> Any:
    """An image processor's output (N, C, H, W) as (N, H, W, C).

    The processor is left at its default, channels-first: 5.x's processors ignore
    ``data_format`` (channels-first always), 4.x's honour it.
    """
    return pixel_values.transpose(0, 2, 3, 1)
