"""Generates the Python code of protos/siglip/v1/siglip.proto into siglip/v1/ (committed).

``--check`` regenerates into a temporary directory and fails if the committed code differs,
so the proto and its generated code cannot drift apart.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = "siglip/v1/siglip.proto"
OUTPUTS = ("siglip_pb2.py", "siglip_pb2.pyi", "siglip_pb2_grpc.py")


def generate(out: Path) -> None:
    include = Path(protoc.__file__).parent / "_proto"
    code = protoc.main([
        "grpc_tools.protoc", f"-I{ROOT / 'protos'}", f"-I{include}",
        f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
        str(ROOT / "protos" / PROTO)])
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if not args.check:
        generate(ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = [name for name in OUTPUTS if not filecmp.cmp(
            Path(tmp) / "siglip/v1" / name, ROOT / "siglip/v1" / name, shallow=False)]
    if stale:
        print(f"generated code is stale: {stale}; run `python scripts/gen_proto.py`",
              file=sys.stderr)
        return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
