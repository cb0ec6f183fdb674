"""Zero-shot top-1 / top-5 accuracy of a served model on an image folder, as ImageNet is scored.

    python bench/zeroshot_eval.py --server HOST:PORT --images DIR [--model NAME]
        [--classes FILE] [--templates FILE | --template T ...] [--via embed|classify]
        [--batch-size N]
        [--concurrency N] [--limit-per-class N] [--json OUT] [--predictions OUT.csv]

DIR holds one subfolder per class (torchvision's ImageFolder layout); classes are the
subfolders in sorted order. Their names are the lines of --classes (one per line, in that
order: e.g. ImageNet's synset folders with open_clip's IMAGENET_CLASSNAMES) or, without it, the
folder names with "_" read as a space. Prompts: one template, or an ensemble
(--templates: one per line, e.g. CLIP's 80 ImageNet templates from open_clip's
zero_shot_metadata.py, which its zero-shot evaluation uses); none given: the server's default
template.

--via embed (default): each prompt and each image is embedded once through Embed; a class's
embedding is the L2-normalized mean of its L2-normalized prompt embeddings (computed here, the
CLIP recipe), and every image is scored against every class with the model's logit_scale and
logit_bias from GetModelInfo. --via classify: the server does the ensemble (Classify's
prompt_templates), classes in chunks that fit its per-request limit on prompts; exact, because
SigLIP scores each label on its own, but every image is embedded once per chunk.
Reports top-1, top-5, images/s end to end (reading files included), and the prompts the server
truncated to the model's text length. --model picks one of the models the server serves (every
call names it; default: the server's default model). With random weights
(GetModelInfo.random_weights) the accuracy means nothing; the script says so.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]

from gateway.client import SiglipClient  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
TOP_K = 5
# The server's default limits (SIGLIP_MAX_IMAGES, SIGLIP_MAX_TEXTS): flags override them.
DEFAULT_BATCH = 32
DEFAULT_TEXTS_PER_CALL = 256


@dataclass(frozen=True)
class Dataset:
    classes: list[str]  # display names, in class-index order
    paths: list[Path]
    targets: list[int]


def load_dataset(root: Path, classes_file: Path | None, limit_per_class: int | None) -> Dataset:
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise SystemExit(f"{root}: no class subfolders")
    if classes_file is not None:
        names = [line.strip() for line in classes_file.read_text("utf-8").splitlines()
                 if line.strip()]
        if len(names) != len(folders):
            raise SystemExit(f"{classes_file}: {len(names)} class names for {len(folders)} "
                             f"class folders in {root}")
    else:
        names = [f.name.replace("_", " ") for f in folders]
    paths, targets = [], []
    for index, folder in enumerate(folders):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in files[:limit_per_class]:
            paths.append(path)
            targets.append(index)
    if not paths:
        raise SystemExit(f"{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return Dataset(names, paths, targets)


def read_templates(args: argparse.Namespace) -> list[str] | None:
    templates = list(args.template)
    if args.templates is not None:
        templates += [t for t in args.templates.read_text("utf-8").splitlines() if t.strip()]
    return templates or None


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


async def class_embeddings(client: SiglipClient, classes: Sequence[str],
                           templates: Sequence[str], texts_per_call: int, timeout: float,
                           model: str | None = None) -> tuple[np.ndarray, set[int]]:
    """(C, D) unit class embeddings (the CLIP ensemble recipe), and the classes with a prompt
    the server truncated."""
    prompts = [fill(t, name) for name in classes for t in templates]
    embeds, truncated = [], set()
    for start in range(0, len(prompts), texts_per_call):
        reply = await client.embed_reply(prompts[start:start + texts_per_call], model=model,
                                         timeout=timeout)
        embeds.append(reply.embeddings)
        truncated.update((start + i) // len(templates) for i in reply.truncated_inputs)
    per_prompt = unit(np.concatenate(embeds)).reshape(len(classes), len(templates), -1)
    return unit(per_prompt.mean(axis=1)), truncated


def fill(template: str, name: str) -> str:
    head, tail = template.split("{}", 1)  # as the server fills it: no str.format
    return f"{head}{name}{tail}"


async def logits_via_embed(client: SiglipClient, images: list[bytes], classes: np.ndarray,
                           scale: float, bias: float, timeout: float,
                           model: str | None = None) -> np.ndarray:
    image_units = unit(await client.embed(images, model=model, timeout=timeout))
    return scale * (image_units @ classes.T) + bias


async def logits_via_classify(client: SiglipClient, images: list[bytes], classes: list[str],
                              templates: list[str] | None, per_call: int, timeout: float,
                              truncated: set[int], model: str | None = None) -> np.ndarray:
    out = np.empty((len(images), len(classes)), np.float64)
    for start in range(0, len(classes), per_call):
        chunk = classes[start:start + per_call]
        kwargs: dict[str, Any] = {"prompt_templates": templates} if templates else {}
        reply = await client.classify_reply(images, chunk, model=model, timeout=timeout,
                                            **kwargs)
        truncated.update(start + j for j in reply.truncated_labels)
        for row, scores in zip(out, reply.results, strict=True):
            # Labels may repeat; each LabelScore is matched to the first unused column.
            columns: dict[str, list[int]] = {}
            for j, name in enumerate(chunk):
                columns.setdefault(name, []).append(start + j)
            for s in scores:
                row[columns[s.label].pop(0)] = s.logit
    return out


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Per row, the k best class indices, best first; equal logits keep class order."""
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


async def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    data = load_dataset(args.images, args.classes, args.limit_per_class)
    templates = read_templates(args)
    start = time.perf_counter()
    async with SiglipClient(args.server, token=args.token) as client:
        info = await client.model_info(model=args.model, timeout=args.timeout)
        truncated: set[int] = set()
        classes, scale = np.empty((0, 0)), float(np.exp(np.float64(info.logit_scale)))
        if args.via == "embed":
            classes, truncated = await class_embeddings(
                client, data.classes, templates or [info.default_prompt_template],
                args.texts_per_call, args.timeout, info.name)
        # --via classify: as many classes per call as their prompts fit in the server's limit.
        per_call = max(1, args.texts_per_call // (len(templates) if templates else 1))
        gate = asyncio.Semaphore(args.concurrency)

        async def batch(indices: range) -> np.ndarray:
            async with gate:
                images = await asyncio.to_thread(
                    lambda: [data.paths[i].read_bytes() for i in indices])
                if args.via == "embed":
                    return await logits_via_embed(client, images, classes, scale,
                                                  info.logit_bias, args.timeout, info.name)
                return await logits_via_classify(client, images, data.classes, templates,
                                                 per_call, args.timeout, truncated, info.name)

        batches = [range(i, min(i + args.batch_size, len(data.paths)))
                   for i in range(0, len(data.paths), args.batch_size)]
        logits = np.concatenate(await asyncio.gather(*(batch(b) for b in batches)))
    seconds = time.perf_counter() - start
    best = top_k(logits, min(TOP_K, len(data.classes)))
    targets = np.asarray(data.targets)
    result = {
        "model": info.name, "model_id": info.model_id, "random_weights": info.random_weights,
        "via": args.via,
        "images": len(data.paths), "classes": len(data.classes),
        "templates": len(templates) if templates else 1,
        "top1": float(np.mean(best[:, 0] == targets)),
        "top5": float(np.mean((best == targets[:, None]).any(axis=1))),
        "seconds": seconds, "images_per_second": len(data.paths) / seconds,
        "truncated_classes": sorted(data.classes[i] for i in truncated),
    }
    if args.predictions is not None:
        with args.predictions.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "target", *(f"top{i + 1}" for i in range(best.shape[1]))])
            for path, target, row in zip(data.paths, data.targets, best, strict=True):
                writer.writerow([str(path), data.classes[target],
                                 *(data.classes[j] for j in row)])
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True, help="gateway HOST:PORT")
    p.add_argument("--token", help="bearer token, when the server requires one")
    p.add_argument("--model", help="the served model to evaluate: its name, checkpoint or the "
                                   "checkpoint's last path part (default: the server's default)")
    p.add_argument("--images", type=Path, required=True, help="folder of class subfolders")
    p.add_argument("--classes", type=Path, help="class names, one per line, in folder order")
    p.add_argument("--templates", type=Path, help="prompt templates, one per line")
    p.add_argument("--template", action="append", default=[],
                   help='a prompt template with one "{}" (repeatable)')
    p.add_argument("--via", choices=("embed", "classify"), default="embed")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="images per call")
    p.add_argument("--texts-per-call", type=int, default=DEFAULT_TEXTS_PER_CALL,
                   help="prompts per call (the server's SIGLIP_MAX_TEXTS)")
    p.add_argument("--concurrency", type=int, default=4, help="image batches in flight")
    p.add_argument("--limit-per-class", type=int, help="at most this many images per class")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per call")
    p.add_argument("--json", type=Path, help="write the result here")
    p.add_argument("--predictions", type=Path, help="write per-image top-5 here (CSV)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(evaluate(args))
    name = f"{result['model']} ({result['model_id']})" if result["model"] else result["model_id"]
    print(f"{name} via {result['via']}: {result['images']} images, "
          f"{result['classes']} classes, {result['templates']} template(s)")
    print(f"top-1 {100 * result['top1']:.2f} %  top-5 {100 * result['top5']:.2f} %  "
          f"{result['images_per_second']:.1f} images/s")
    if result["truncated_classes"]:
        print(f"prompts truncated for {len(result['truncated_classes'])} classes")
    if result["random_weights"]:
        print("random weights: the accuracy means nothing")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
