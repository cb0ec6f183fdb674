"""The only layer that touches generated protobuf code."""
