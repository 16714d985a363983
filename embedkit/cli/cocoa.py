"""`embedkit cocoa …`: CoCoA pre-training (stages 1-2), contrastive training (stage 3), masks, MMEB eval."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Literal

from embedkit.cli._common import add_command

PRETRAIN_EXAMPLES = """\
  embedkit cocoa tiny-model --out models/tiny-qwen2vl           # a random-init model to try things offline
  embedkit cocoa pretrain --config configs/cocoa_tiny.yaml       # stages 1 and 2, resumes if interrupted
  accelerate launch -m embedkit cocoa pretrain --config configs/cocoa.yaml   # several GPUs
"""
CONTRASTIVE_EXAMPLES = """\
  embedkit cocoa contrastive --config configs/cocoa_tiny.yaml    # starts from <output_dir>/pretrain/model if present
  embedkit cocoa contrastive --config configs/cocoa.yaml --from-base   # contrastive-only baseline
"""
MASK_EXAMPLES = """\
  embedkit cocoa show-mask --stage 2 --text "Alice hit Bob"
  embedkit cocoa show-mask --stage 1 --image cat.png --text "a cat" --padding right --pad-to 24 --plot mask.png
  embedkit cocoa show-mask --stage 3 --model Qwen/Qwen2-VL-2B-Instruct --instruction "Represent the image." --image cat.png
"""
MMEB_EXAMPLES = """\
  embedkit cocoa mmeb --model runs/cocoa/contrastive/model --data mmeb-eval/ --image-dir mmeb-eval/eval_images
  embedkit cocoa mmeb --model runs/cocoa/contrastive/model --data hf:TIGER-Lab/MMEB-eval --tasks mmeb-v1 \\
      --image-dir MMEB-eval/eval_images      # the hub's parquet; images from its eval_images archive
  embedkit cocoa mmeb --model runs/cocoa/contrastive/model --data tasks/N24News.jsonl --image-dir mmeb-eval/eval_images \\
      --index-dir indexes/mmeb --out report.json
"""
INDEX_EXAMPLES = """\
  embedkit cocoa index --model runs/cocoa/contrastive/model --corpus photos.jsonl --out indexes/photos
  embedkit cocoa search indexes/photos --model runs/cocoa/contrastive/model --text "a red circle" -k 5
  embedkit cocoa search indexes/photos --model runs/cocoa/contrastive/model --image query.png
"""
STAGE_NAMES: dict[str, Literal["bidirectional", "eos_bridge", "causal"]] = {"1": "bidirectional", "2": "eos_bridge", "3": "causal",
               "bidirectional": "bidirectional", "eos_bridge": "eos_bridge", "causal": "causal"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cocoa", help="CoCoA: EOS-reconstruction pre-training and contrastive training of Qwen2-VL embedders",
        description="CoCoA for Qwen2-VL / Qwen2.5-VL embedders (see docs/cocoa.md).",
    )
    commands = parser.add_subparsers(dest="cocoa_command", metavar="SUBCOMMAND")
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)

    pretrain = add_command(commands, "pretrain", run_pretrain, help="run stage 1 (bidirectional warm-up) and "
                           "stage 2 (EOS-bridged reconstruction)", examples=PRETRAIN_EXAMPLES)
    _config_arguments(pretrain)

    contrastive = add_command(commands, "contrastive", run_contrastive,
                              help="run stage 3 (InfoNCE on <EOS> embeddings)", examples=CONTRASTIVE_EXAMPLES)
    _config_arguments(contrastive)
    start = contrastive.add_mutually_exclusive_group()
    start.add_argument("--init", help="model to start from (default: <output_dir>/pretrain/model when it exists)")
    start.add_argument("--from-base", action="store_true", help="start from model.name_or_path (no pre-training)")

    mask = add_command(commands, "show-mask", run_show_mask, help="print (or plot) a stage's attention mask",
                       description="Print which token attends to which ('#') for one sample under a stage's\n"
                                   "mask; rows are queries, columns keys. Without --model, the tiny offline\n"
                                   "tokenizer is used.", examples=MASK_EXAMPLES)
    mask.add_argument("--stage", required=True, choices=sorted(STAGE_NAMES), help="1/2/3 or the mask's name")
    mask.add_argument("--model", help="model folder or hub id whose tokenizer and image processor to use")
    mask.add_argument("--text", help="text of the sample")
    mask.add_argument("--image", help="image path or URL of the sample")
    mask.add_argument("--instruction", help="instruction before the sample")
    mask.add_argument("--target", help="stage 2: text to reconstruct (default: --text)")
    mask.add_argument("--no-image-slots", action="store_true", help="stage 2: no image reconstruction slots")
    mask.add_argument("--content-attention", choices=["causal", "bidirectional"], default="causal")
    mask.add_argument("--padding", choices=["left", "right"], default="left")
    mask.add_argument("--pad-to", type=int, default=0, help="pad the sample to this length to show padding")
    mask.add_argument("--plot", help="also save the mask as a PNG here")

    tiny = add_command(commands, "tiny-model", run_tiny, help="write a tiny random-init Qwen2-VL/Qwen2.5-VL model",
                       examples="  embedkit cocoa tiny-model --out models/tiny --family qwen2.5-vl\n")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--family", choices=["qwen2-vl", "qwen2.5-vl"], default="qwen2-vl")
    tiny.add_argument("--hidden-size", type=int, default=64)
    tiny.add_argument("--layers", type=int, default=2)
    tiny.add_argument("--image-pixels", type=int, default=16 * 16, help="largest resized image area")
    tiny.add_argument("--seed", type=int, default=0)

    mmeb = add_command(commands, "mmeb", run_mmeb, help="MMEB-style evaluation (precision@1 per task, recall@k)",
                       examples=MMEB_EXAMPLES)
    mmeb.add_argument("--model", required=True)
    mmeb.add_argument("--data", required=True, help="a task file (.jsonl/.parquet), a folder of them, a hub "
                      "snapshot folder (<Task>/test-*.parquet) or hf:TIGER-Lab/MMEB-eval")
    mmeb.add_argument("--tasks", nargs="+", help="task names, or 'mmeb-v1' for the 36 published tasks")
    mmeb.add_argument("--image-dir", help="folder the tasks' relative image paths are under")
    mmeb.add_argument("--index-dir", help="also build FAISS indexes of each task's candidates here and report recall@k")
    mmeb.add_argument("--query-instruction", help="instruction for every query (MMEB queries usually carry their own)")
    mmeb.add_argument("--batch-size", type=int, default=8)
    mmeb.add_argument("--device", default="auto")
    mmeb.add_argument("--out", help="write the report as JSON here")


    index = add_command(commands, "index", run_index, help="embed a text/image corpus into an embedkit FAISS index",
                        description="Rows: jsonl with id and text and/or image (path, URL). The index is a regular\n"
                                    "embedkit index (manifest, docstore); the image reference is the title.",
                        examples=INDEX_EXAMPLES)
    index.add_argument("--model", required=True)
    index.add_argument("--corpus", required=True, help="jsonl: id, text, title, image (image_path, img_path, url)")
    index.add_argument("--out", required=True)
    index.add_argument("--factory", default="Flat", help="FAISS index factory string (default Flat)")
    index.add_argument("--image-dir", help="folder relative image paths are under (default: the corpus' folder)")
    index.add_argument("--instruction", help="instruction for every document")
    index.add_argument("--batch-size", type=int, default=8)
    index.add_argument("--device", default="auto")
    index.add_argument("--overwrite", action="store_true")

    search = add_command(commands, "search", run_search, help="query a multimodal index with text and/or an image",
                         examples=INDEX_EXAMPLES)
    search.add_argument("index")
    search.add_argument("--model", required=True, help="the model the index was built with")
    search.add_argument("--text")
    search.add_argument("--image")
    search.add_argument("--instruction", help="query instruction")
    search.add_argument("-k", type=int, default=10)
    search.add_argument("--device", default="auto")


def _embedder(model: str, device: str, batch_size: int = 8, image_dir: str | None = None):
    from embedkit.multimodal.embedder import MultimodalEmbedder, MultimodalEmbedderConfig

    return MultimodalEmbedder(MultimodalEmbedderConfig(model=model, device=device, batch_size=batch_size,
                                                       image_base_dir=image_dir))


def run_index(args: argparse.Namespace) -> int:
    from embedkit.multimodal.corpus import build_multimodal_index, read_multimodal_corpus

    rows = read_multimodal_corpus(args.corpus)
    image_dir = args.image_dir or str(Path(args.corpus).resolve().parent)
    embedder = _embedder(args.model, args.device, args.batch_size, image_dir)
    if args.instruction:
        rows = [(doc, item.model_copy(update={"instruction": args.instruction})) for doc, item in rows]
    out = build_multimodal_index(embedder, rows, args.out, factory=args.factory, overwrite=args.overwrite,
                                 corpus=str(args.corpus))
    print(f"indexed {len(rows)} documents: {out}")
    return 0


def run_search(args: argparse.Namespace) -> int:
    from embedkit.encoding.models import weights_fingerprint
    from embedkit.errors import EmbedkitError, ModelMismatchError
    from embedkit.index import Index
    from embedkit.multimodal.sequence import MultimodalInput

    if not args.text and not args.image:
        raise EmbedkitError("give --text, --image or both")
    from embedkit.index.dense import DenseIndex
    from embedkit.index.manifest import DenseManifest

    index = Index.load(args.index)
    if not isinstance(index, DenseIndex) or not isinstance(index.manifest, DenseManifest):
        raise EmbedkitError(f"{args.index} is a {index.manifest.kind} index; multimodal search needs a dense one")
    embedder = _embedder(args.model, args.device)
    spec = index.manifest.encoder
    if spec is not None and spec.fingerprint != weights_fingerprint(embedder.model):
        raise ModelMismatchError(f"{args.model} is not the model {args.index} was built with ({spec.model})")
    query = MultimodalInput(text=args.text, image=args.image, instruction=args.instruction)
    [hits] = index.search_vectors(embedder.encode_queries([query]), k=args.k)
    for hit in hits:
        shown = " ".join(part for part in (hit.title, hit.text) if part)
        print(f"{hit.rank}\t{hit.score:.4f}\t{hit.id}\t{shown[:100]}")
    return 0


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="CoCoA YAML (see configs/cocoa.yaml)")
    parser.add_argument("--output-dir", help="override run.output_dir")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="override a config value by its dotted key (repeatable), e.g. stage1.steps=10")
    parser.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")


def _load_config(args):
    from embedkit.cocoa.config import CocoaConfig
    from embedkit.config import parse_set_overrides

    overrides = parse_set_overrides(args.overrides)
    if args.output_dir:
        overrides["run.output_dir"] = args.output_dir
    return CocoaConfig.from_yaml(args.config, overrides=overrides)


def _log_progress() -> None:
    logging.getLogger("embedkit.cocoa").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")


def _require(path: str | None, what: str, config_path: str) -> str:
    from embedkit.errors import DataFormatError

    if not path:
        raise DataFormatError(f"the config has no data.{what} file", path=config_path, field=f"data.{what}")
    return path


def run_pretrain(args: argparse.Namespace) -> int:
    from embedkit.cocoa.data import read_pretrain_records
    from embedkit.cocoa.trainer import CocoaTrainer

    config = _load_config(args)
    records = read_pretrain_records(_require(config.data.pretrain, "pretrain", args.config))
    _log_progress()
    trainer = CocoaTrainer(config)
    out = trainer.pretrain(records, resume=not args.no_resume)
    _print_history(trainer)
    print(f"pre-trained model: {out}")
    return 0


def run_contrastive(args: argparse.Namespace) -> int:
    from embedkit.cocoa.data import read_contrastive_pairs
    from embedkit.cocoa.trainer import CocoaTrainer

    config = _load_config(args)
    pairs = read_contrastive_pairs(_require(config.data.contrastive, "contrastive", args.config))
    init = args.init
    pretrained = Path(config.run.output_dir) / "pretrain" / "model"
    if init is None and not args.from_base and (pretrained / "config.json").exists():
        init = str(pretrained)
    print(f"starting from: {init or config.model.name_or_path}")
    _log_progress()
    trainer = CocoaTrainer(config, init=init)
    out = trainer.contrastive(pairs, resume=not args.no_resume)
    _print_history(trainer)
    print(f"embedding model: {out}")
    return 0


def _print_history(trainer) -> None:
    from embedkit.cocoa.trainer import loss_trend

    for result in trainer.history:
        if result.losses:
            first, last = loss_trend(result)
            print(f"{result.stage}: {len(result.losses)} steps, loss {first:.4f} -> {last:.4f}")
        else:
            print(f"{result.stage}: nothing to do ({result.steps} steps configured, already done or 0)")


def run_show_mask(args: argparse.Namespace) -> int:
    import torch

    from embedkit.cocoa.masks import build_attention_mask, plot_mask, render_mask
    from embedkit.errors import EmbedkitError
    from embedkit.multimodal.sequence import MultimodalInput, Segment, VisionTokens, encode_batch

    if not args.text and not args.image:
        raise EmbedkitError("give --text, --image or both")
    stage = STAGE_NAMES[args.stage]
    tokenizer, processor = _tokenizer_and_processor(args.model)
    tokens = VisionTokens.from_tokenizer(tokenizer)
    item = MultimodalInput(text=args.text, image=args.image, instruction=args.instruction)
    target = (args.target or args.text) if stage == "eos_bridge" else None
    slots = stage == "eos_bridge" and bool(args.image) and not args.no_image_slots and tokens.mask is not None
    batch = encode_batch([item], tokenizer, processor, tokens, padding_side=args.padding,
                         targets=[target] if target else None, image_target_slots=slots)
    ids, segments = batch.input_ids[0], batch.segments[0]
    if args.pad_to > len(ids):
        extra = args.pad_to - len(ids)
        pad_ids = torch.full((extra,), tokens.pad)
        pad_segments = torch.full((extra,), int(Segment.PAD))
        ids = torch.cat([pad_ids, ids]) if args.padding == "left" else torch.cat([ids, pad_ids])
        segments = torch.cat([pad_segments, segments]) if args.padding == "left" else torch.cat([segments, pad_segments])
    allowed = build_attention_mask(segments, stage, content_attention=args.content_attention)[0]
    labels = [tokenizer.convert_ids_to_tokens(int(i)).replace("Ġ", "_") if s != Segment.PAD else "<pad>"
              for i, s in zip(ids, segments, strict=True)]
    labels = [label if len(label) <= 14 else label[:13] + "…" for label in labels]
    print(f"stage {args.stage} ({stage}) mask, {len(ids)} tokens; '#' = row attends to column")
    print(render_mask(allowed, segments, labels))
    if args.plot:
        plot_mask(allowed, segments, args.plot, labels, title=f"CoCoA {stage} mask")
        print(f"plot: {args.plot}")
    return 0


def _tokenizer_and_processor(model: str | None):
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    if model is None:
        from embedkit.multimodal.tiny import build_tokenizer

        return build_tokenizer(), Qwen2VLImageProcessorPil(
            patch_size=4, merge_size=2, temporal_patch_size=2,
            size={"shortest_edge": 64, "longest_edge": 16 * 16})
    from transformers import AutoTokenizer

    from embedkit.encoding.models import resolve_model
    from embedkit.errors import ModelUnavailableError

    model = resolve_model(model)
    try:
        return AutoTokenizer.from_pretrained(model), Qwen2VLImageProcessorPil.from_pretrained(model)
    except OSError as error:
        raise ModelUnavailableError(f"cannot load the tokenizer of {model!r}: {error}") from error


def run_tiny(args: argparse.Namespace) -> int:
    from embedkit.multimodal.tiny import build_tiny_vlm

    out = build_tiny_vlm(args.out, args.family, seed=args.seed, hidden_size=args.hidden_size, layers=args.layers,
                         image_pixels=args.image_pixels)
    print(f"tiny random-init {args.family} model: {out}")
    return 0


def run_mmeb(args: argparse.Namespace) -> int:
    from embedkit.io import atomic_write
    from embedkit.multimodal.embedder import MultimodalEmbedder, MultimodalEmbedderConfig
    from embedkit.multimodal.mmeb import MMEB_V1_TASKS, evaluate_mmeb, load_mmeb

    names = list(MMEB_V1_TASKS) if args.tasks == ["mmeb-v1"] else args.tasks
    tasks = load_mmeb(args.data, image_base_dir=args.image_dir, tasks=names)
    embedder = MultimodalEmbedder(MultimodalEmbedderConfig(model=args.model, device=args.device,
                                                           batch_size=args.batch_size))
    instructions = {task: args.query_instruction for task in tasks} if args.query_instruction else None
    report = evaluate_mmeb(embedder, tasks, index_dir=args.index_dir, query_instructions=instructions)
    print(report.to_markdown())
    if args.out:
        with atomic_write(args.out) as handle:
            json.dump({"model": args.model, "per_task": report.per_task, "average": report.average,
                       "mmeb_v1": report.summary}, handle, indent=2)
    return 0
