"""The tensor contract between the gateway and Triton's SigLIP models.

Model names, tensor names and datatypes, the input dims and the rows one call may carry are
defined here once, and the Triton client, the coalescer, the embedded launcher, the ONNX
exporter, the checkpoint maker and the tests import them. Triton reads its side of the same
contract from model_repository/*/config.pbtxt, which cannot import Python:
tests/unit/test_contract.py checks that those files state exactly these values.
"""

from __future__ import annotations

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
