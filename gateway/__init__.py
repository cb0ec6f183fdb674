"""siglip-gateway: a gRPC service for SigLIP, served by NVIDIA Triton."""

__version__ = "0.1.0"
