"""The tensor contract between the gateway and Triton's SigLIP models.

Model names, tensor names and datatypes, the input dims and the rows one call may carry are
defined here once, and the Triton client, the coalescer, the embedded launcher, the ONNX
exporter, the checkpoint maker and the tests import them. Triton reads its side of the same
contract from model_repository/*/config.pbtxt, which cannot import Python:
tests/unit/test_contract.py checks that those files state exactly these values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

VISION_MODEL = "siglip_vision"
TEXT_MODEL = "siglip_text"
# JPEG bytes -> pixels, decoded by Triton (SIGLIP_PREPROCESS_MODE=triton).
DECODE_MODEL = "siglip_image_decode"
# JPEG bytes -> embeddings: an ensemble of DECODE_MODEL and VISION_MODEL.
ENCODED_MODEL = "siglip_vision_encoded"
# What every deployment serves; ENCODED_MODEL (and DECODE_MODEL) only in triton mode.
TOWER_MODELS = (VISION_MODEL, TEXT_MODEL)

# Per-row input dims as Triton's configs state them. -1: the checkpoint's, read when the model
# loads (image side, text length), so one repository serves any checkpoint of the family and
# model.py checks each request against the checkpoint it loaded (docs/models.md says why).
INPUT_DIMS = {VISION_MODEL: (-1, -1, 3), TEXT_MODEL: (-1,), ENCODED_MODEL: (1,)}

# model: (input name, datatype, output name).
TENSORS = {
    VISION_MODEL: ("pixels", "UINT8", "image_embeds"),
    TEXT_MODEL: ("input_ids", "INT64", "text_embeds"),
    ENCODED_MODEL: ("images", "BYTES", "image_embeds"),
}

# Each model's max_batch_size: larger requests are cut into calls of at most this many rows.
MAX_ROWS = {VISION_MODEL: 64, TEXT_MODEL: 256, ENCODED_MODEL: 64}

# A deployment of several models (gateway/model_specs.py) names each model's Triton models
# ``<model>__<name>``: e.g. siglip_vision__so400m. One model keeps the plain names above.
SUFFIX_SEPARATOR = "__"


@dataclass(frozen=True)
class TritonNames:
    """The Triton models of one served model."""

    vision: str = VISION_MODEL
    text: str = TEXT_MODEL
    decode: str = DECODE_MODEL
    encoded: str = ENCODED_MODEL

    @classmethod
    def suffixed(cls, name: str) -> TritonNames:
        return cls(*(f"{base}{SUFFIX_SEPARATOR}{name}" for base in
                     (VISION_MODEL, TEXT_MODEL, DECODE_MODEL, ENCODED_MODEL)))

    def towers(self, with_decoder: bool) -> tuple[str, ...]:
        """What must be ready to serve this model: ENCODED also in triton mode."""
        return (self.vision, self.text) + ((self.encoded,) if with_decoder else ())


# The names of a one-model deployment.
PLAIN_NAMES = TritonNames()


def triton_names(names: Sequence[str]) -> dict[str, TritonNames]:
    """Per served model name (in order), its Triton models: plain for one model, suffixed
    with the model's name for several."""
    if len(names) == 1:
        return {names[0]: PLAIN_NAMES}
    return {name: TritonNames.suffixed(name) for name in names}


def base_model(triton_model: str) -> str:
    """``siglip_vision__so400m`` → ``siglip_vision``: the key of TENSORS and MAX_ROWS."""
    return triton_model.split(SUFFIX_SEPARATOR, 1)[0]
