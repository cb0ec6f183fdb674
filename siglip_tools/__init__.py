"""Tools around the service, off its request path: random checkpoints (`checkpoint`), the ONNX
export of the towers (`onnx_export`) and the ghz-compatible load driver (`load`, with ghz's
options, configs and report format in `ghz`). Each adds its own `siglip-gateway` subcommand
(`add_arguments` and `run`); the gateway's serving code never imports them."""
