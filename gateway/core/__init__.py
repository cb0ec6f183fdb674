"""Pure domain code: images, text, scoring, errors. No grpc, no tritonclient."""
