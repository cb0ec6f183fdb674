"""What the tests share, and bench/ too: the fake Triton, the gateway process harness, image
generators, the HF reference and the Kubernetes renderer."""
