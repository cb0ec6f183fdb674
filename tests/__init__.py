"""Tests by kind: unit/ (core and pure pieces against the HF reference), fake_triton/ (the
gateway over the wire against a fake Triton, where timing must be exact), real_triton/ (a real
embedded Triton), deploy/ (Kubernetes manifests and images), tools/ (siglip_tools and bench/);
support/ holds what they share."""
