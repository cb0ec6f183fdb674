"""A Triton model repository for several SigLIP checkpoints, generated from the shipped one.

Owns `build_repository` and its command line (for a Kubernetes init container, or to hand an
external Triton a repository): `python -m gateway.embedded_triton.repository --model
NAME=CHECKPOINT [--model ...] | --models-file FILE [--no-decoder] --out DIR`.

Each served model gets its own copy of the shipped models under the names of
gateway/contract.py `triton_names` (several models: ``siglip_vision__NAME``, ...), with
`config.pbtxt`'s `name` changed, its parameter `model` set to that model's checkpoint, and the
ensemble's steps pointed at the same model's decode and vision models. The version directories
are copied with links resolved (model_repository/siglip_text/1/model.py is a link into
siglip_vision/), so the result works wherever it is mounted, without the shipped repository.

Configs are edited as text, keeping their comments, and each edit is checked by parsing the
result as Triton's ModelConfig: a shipped config whose layout the edits no longer match fails
the build instead of serving the wrong checkpoint.

With ONE model the gateway uses model_repository/ as shipped; a repository built here for one
model keeps the plain names (what `triton_names` gives) with the checkpoint in the configs.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from google.protobuf import text_encoding, text_format
from tritonclient.grpc import model_config_pb2

from gateway.contract import (
    DECODE_MODEL,
    ENCODED_MODEL,
    TEXT_MODEL,
    VISION_MODEL,
    TritonNames,
    triton_names,
)
from gateway.model_specs import NAME_PATTERN, ModelSpecError, resolve_models

__all__ = ["RepositoryError", "build_repository", "default_model_repository", "main"]

_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")
_NAME_LINE = re.compile(r'^name:\s*"[^"]*"', re.MULTILINE)
_MODEL_PARAMETER = re.compile(
    r'(key:\s*"model"\s*value\s*:?\s*\{\s*string_value:\s*)"(?:[^"\\\n]|\\.)*"')
_STEP_MODEL = re.compile(r'(model_name:\s*)"([^"]*)"')


class RepositoryError(ValueError):
    """A repository that cannot be built as asked; the message says why."""


def default_model_repository() -> Path:
    return Path(__file__).resolve().parents[2] / "model_repository"


def build_repository(models: Sequence[tuple[str, str]], dest: Path, *,
                     source: Path | None = None, with_decoder: bool = True) -> list[str]:
    """Write a model repository serving `models` ((name, checkpoint) pairs, in order) into
    `dest` (absent or empty) from `source` (default: the shipped model_repository/). Each
    model gets its vision and text towers, and with `with_decoder` its JPEG decoder and the
    ensemble over both (SIGLIP_PREPROCESS_MODE=triton). Returns the Triton model names
    written, model by model in TritonNames order."""
    source = Path(source or default_model_repository())
    names = [name for name, _ in models]
    _check(names, source, dest)
    bases = (VISION_MODEL, TEXT_MODEL) + ((DECODE_MODEL, ENCODED_MODEL) if with_decoder else ())
    created_dest = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    try:
        for (_, checkpoint), names_of in zip(models, triton_names(names).values(), strict=True):
            renamed = _renames(names_of)
            for base in bases:
                config = configure((source / base / "config.pbtxt").read_text(encoding="utf-8"),
                                   renamed, _checkpoint_value(checkpoint))
                written.append(renamed[base])
                target = dest / renamed[base]
                shutil.copytree(source / base, target, symlinks=False, ignore=_IGNORED)
                (target / "config.pbtxt").write_text(config, encoding="utf-8")
    except BaseException:
        # Leave `dest` as it was found: a half-built repository would load some models only.
        if created_dest:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for name in written:
                shutil.rmtree(dest / name, ignore_errors=True)
        raise
    return written


def configure(config: str, renamed: dict[str, str], checkpoint: str) -> str:
    """One shipped config.pbtxt for one served model: its `name` (and an ensemble's steps)
    per `renamed` (shipped name -> served name), its parameter `model` = `checkpoint`."""
    parsed = _parse(config, "shipped")
    base = parsed.name
    if base not in renamed:
        raise RepositoryError(f"config of unknown model {base!r}")
    text, count = _NAME_LINE.subn(f'name: "{renamed[base]}"', config, count=1)
    if count != 1:
        raise RepositoryError(f"{base}/config.pbtxt: no top-level name line to rewrite")
    if parsed.platform != "ensemble":
        escaped = text_encoding.CEscape(checkpoint, as_utf8=True)
        text, count = _MODEL_PARAMETER.subn(lambda m: f'{m.group(1)}"{escaped}"', text)
        if count != 1:
            raise RepositoryError(
                f"{base}/config.pbtxt: want one parameter 'model' (key, then value "
                f"{{ string_value: ... }}), found {count}")

    def step(match: re.Match[str]) -> str:
        if match.group(2) not in renamed:
            raise RepositoryError(f"{base}/config.pbtxt: a step runs {match.group(2)!r}, "
                                  "which is not one of this model's")
        return f'{match.group(1)}"{renamed[match.group(2)]}"'

    text = _STEP_MODEL.sub(step, text)
    _verify(_parse(text, "generated"), parsed, renamed, checkpoint)
    return text


def _verify(got: model_config_pb2.ModelConfig, shipped: model_config_pb2.ModelConfig,
            renamed: dict[str, str], checkpoint: str) -> None:
    """The edits did exactly what they should: the parsed result equals the shipped config
    with the three changes made on the message itself."""
    want = model_config_pb2.ModelConfig()
    want.CopyFrom(shipped)
    want.name = renamed[shipped.name]
    if shipped.platform != "ensemble":
        want.parameters["model"].string_value = checkpoint
    for step in want.ensemble_scheduling.step:
        step.model_name = renamed[step.model_name]
    if got != want:
        raise RepositoryError(f"{shipped.name}/config.pbtxt: the rewritten config is not the "
                              "shipped one with the name, checkpoint and steps changed")


def _parse(config: str, which: str) -> model_config_pb2.ModelConfig:
    try:
        return text_format.Parse(config, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise RepositoryError(f"{which} config.pbtxt does not parse: {exc}") from None


def _renames(names: TritonNames) -> dict[str, str]:
    return {VISION_MODEL: names.vision, TEXT_MODEL: names.text, DECODE_MODEL: names.decode,
            ENCODED_MODEL: names.encoded}


def _checkpoint_value(checkpoint: str) -> str:
    """A directory that exists here is given to Triton absolute (its working directory is not
    ours); anything else (a hub id, a path that exists only where Triton runs) as given."""
    path = Path(checkpoint).expanduser()
    return str(path.absolute()) if path.is_dir() else checkpoint


def _check(names: Sequence[str], source: Path, dest: Path) -> None:
    if not names:
        raise RepositoryError("no model to write")
    for name in names:
        if not NAME_PATTERN.fullmatch(name):
            raise RepositoryError(f"model name {name!r}: lowercase letters, digits and inner "
                                  "hyphens, at most 40 characters")
    if len(set(names)) != len(names):
        raise RepositoryError(f"model names must be unique: {', '.join(names)}")
    for base in (VISION_MODEL, TEXT_MODEL, DECODE_MODEL, ENCODED_MODEL):
        if not (source / base / "config.pbtxt").is_file():
            raise RepositoryError(f"{source} is not a SigLIP model repository "
                                  f"({base}/config.pbtxt missing)")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise RepositoryError(f"{dest} exists and is not an empty directory")


# -- command line ------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="python -m gateway.embedded_triton.repository",
                     description="Write a Triton model repository serving several checkpoints, "
                                 "each under its own model names (siglip_vision__NAME, ...).")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=CHECKPOINT",
                        help="a model to serve (repeatable; also comma-separated), as "
                             "SIGLIP_MODEL")
    parser.add_argument("--models-file", default="", help="TOML or JSON models file, as "
                        "SIGLIP_MODELS_FILE")
    parser.add_argument("--no-decoder", action="store_true",
                        help="leave out the JPEG decoder and the encoded ensemble "
                             "(needed only with SIGLIP_PREPROCESS_MODE=triton)")
    parser.add_argument("--source", type=Path, default=None,
                        help="repository to copy from (default: the shipped model_repository/)")
    parser.add_argument("--out", type=Path, required=True, help="where to write (absent or empty)")
    args = parser.parse_args(argv)
    if not args.model and not args.models_file:
        parser.error("give the models with --model NAME=CHECKPOINT or --models-file FILE")
    try:
        specs = resolve_models(",".join(args.model), args.models_file)
        written = build_repository([(s.name, s.checkpoint) for s in specs], args.out,
                                   source=args.source, with_decoder=not args.no_decoder)
    except (ModelSpecError, RepositoryError) as exc:
        parser.error(str(exc))
    except OSError as exc:  # e.g. a models file that is not there, an unwritable --out
        parser.error(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
    print("\n".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
