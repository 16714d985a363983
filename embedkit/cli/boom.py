"""`embedkit boom …`: BOOM training, incremental merge updates, merging, and suite evaluation."""

from __future__ import annotations

import argparse
from pathlib import Path

from embedkit.cli._common import add_command, add_device_and_batch_size, add_quiet_argument

TRAIN_EXAMPLES = """\
  embedkit boom train --config configs/boom.yaml
  embedkit boom train --config configs/boom.yaml --output-dir runs/boom-3bags
  embedkit boom train --config configs/boom.yaml --set merge.relative_to_base=true --set training.max_steps=100 \\
      --output-dir runs/boom-task-vectors
"""
UPDATE_EXAMPLES = """\
  embedkit boom update --base runs/boom/model --new-data new.jsonl \\
      --history ../shared/data/scifact old.jsonl --history-ratio 0.4 --output-dir runs/boom-v2
  embedkit boom update --base runs/boom/model --new-data new.jsonl --history old.jsonl \\
      --method linear --update-weight 0.3 --batch-size 64 --output-dir runs/boom-v2
  embedkit boom update --base runs/boom/model --new-data new.jsonl --history old.jsonl \\
      --method task_arithmetic --merge-base backbone --update-init backbone --output-dir runs/boom-v3
  embedkit boom update --config configs/boom.yaml --base runs/boom/model --new-data new.jsonl \\
      --history old.jsonl --output-dir runs/boom-v4     # merge/update/training sections as defaults
  embedkit index reencode indexes/mine --model runs/boom-v2/model     # then refresh the index
"""
MERGE_EXAMPLES = """\
  embedkit boom merge --models runs/a runs/b --method multislerp --out runs/merged
  embedkit boom merge --models base runs/a runs/b --method ties --base-model base --out runs/ties
  embedkit boom merge --mergekit-config my-merge.yml --out runs/merged    # a mergekit YAML you already have
"""
EVAL_EXAMPLES = """\
  embedkit boom eval --model runs/boom/model --datasets ../shared/data/scifact ../shared/data/cisi \\
      ../shared/data/medline ../shared/data/cacm ../shared/data/cranfield
  embedkit boom eval --model sentence-transformers/all-MiniLM-L6-v2 --datasets ../shared/data/scifact --output table.md
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "boom",
        help="BOOM: bagged training + model merging, incremental merge updates, suite evaluation",
        description="BOOM (Bagging-based rObust mOdel Merging) for embedders.",
    )
    commands = parser.add_subparsers(dest="boom_command", metavar="SUBCOMMAND")
    parser.set_defaults(handler=lambda args: parser.print_help() or 2)

    train = add_command(
        commands, "train", run_train, help="train M bags on sampled data and merge them",
        description="Train one model per bag (per-dataset sampling without replacement at each bag's ratio,\n"
                    "seeds recorded) and merge the bags with mergekit into <output_dir>/model.",
        examples=TRAIN_EXAMPLES,
    )
    train.add_argument("--config", required=True, help="BOOM YAML (see configs/boom.yaml)")
    train.add_argument("--output-dir", help="override output_dir")
    train.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                       help="override a config value by its dotted key (repeatable), e.g. merge.method=linear")
    add_quiet_argument(train)

    update = add_command(
        commands, "update", run_update, help="train an update model on new + sampled history data and merge it in",
        description="Incremental merge update: train an update model from --base on the new data plus\n"
                    "--history-ratio of every historical dataset, then merge it with the base into\n"
                    "<output-dir>/model. The lineage (base, data, ratios, method) is stored with the model.",
        examples=UPDATE_EXAMPLES,
    )
    update.add_argument("--base", required=True, help="the current model (sentence-transformers folder or hub id)")
    update.add_argument("--new-data", nargs="+", required=True, help="FlagEmbedding jsonl files or BEIR folders")
    update.add_argument("--history", nargs="*", default=[], help="the historical training data (jsonl or BEIR folders)")
    update.add_argument("--config", help="a BOOM YAML whose merge, update and training sections are the defaults "
                        "(flags override them)")
    update.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="override a value of the --config YAML by its dotted key (repeatable), "
                             "e.g. merge.method=linear")
    update.add_argument("--history-ratio", type=float, help="fraction of each historical dataset (default 0.4)")
    update.add_argument("--update-weight", type=float,
                        help="the update model's merge weight w; the current model gets 1 - w (default 0.5)")
    update.add_argument("--merge-base",
                        help="task-vector base for task_arithmetic/ties/dare_ties (and multislerp with "
                             "--relative-to-base): backbone (the original base model, from the lineage; "
                             "default), current, or a model path")
    update.add_argument("--update-init", choices=["current", "backbone"],
                        help="start the update model from the current model (default) or the original backbone")
    update.add_argument("--relative-to-base", action="store_true", default=None,
                        help="multislerp on task vectors relative to --merge-base")
    update.add_argument("--output-dir", required=True)
    update.add_argument("--seed", type=int, default=42)
    update.add_argument("--training-config", help="YAML of training options (any TrainConfig key, e.g. loss, strategy)")
    _add_training_overrides(update)
    _add_merge_arguments(update, method_default=None)
    add_quiet_argument(update)

    merge = add_command(commands, "merge", run_merge, help="merge sentence-transformers models with mergekit",
                        description="Merge models with a registered method, or run a mergekit YAML.",
                        examples=MERGE_EXAMPLES)
    merge.add_argument("--models", nargs="+", help="model folders")
    merge.add_argument("--mergekit-config", help="a mergekit YAML whose models are sentence-transformers folders")
    merge.add_argument("--out", required=True)
    merge.add_argument("--overwrite", action="store_true")
    _add_merge_arguments(merge)
    merge.add_argument("--base-model", help="base model for task_arithmetic / ties / dare_ties")

    evaluate = add_command(commands, "eval", run_eval, help="evaluate a model on a suite of BEIR datasets",
                           description="nDCG@10 and Recall@100 per BEIR dataset, as a markdown table.",
                           examples=EVAL_EXAMPLES)
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--datasets", nargs="+", required=True, help="BEIR folders")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--max-length", type=int)
    add_device_and_batch_size(evaluate)
    evaluate.add_argument("--no-saved-prompts", action="store_true",
                          help="encode queries without the prompts saved with the model")
    evaluate.add_argument("--output", help="also write the table (markdown) to this file")
    add_quiet_argument(evaluate)


def _add_training_overrides(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training (overrides --training-config)")
    group.add_argument("--batch-size", type=int)
    group.add_argument("--epochs", type=float)
    group.add_argument("--learning-rate", type=float)
    group.add_argument("--max-seq-length", type=int)
    group.add_argument("--hard-negatives", type=int)
    group.add_argument("--max-steps", type=int)
    group.add_argument("--device")


def _add_merge_arguments(parser: argparse.ArgumentParser, method_default: str | None = "") -> None:
    from embedkit.merging import DEFAULT_MERGE_METHOD, MERGE_METHODS

    method_default = DEFAULT_MERGE_METHOD if method_default == "" else method_default
    group = parser.add_argument_group("merge")
    group.add_argument("--method", default=method_default, choices=sorted(MERGE_METHODS),
                       help=f"merge method (default: {DEFAULT_MERGE_METHOD})")
    group.add_argument("--weights", type=float, nargs="+", help="one weight per model")
    group.add_argument("--t", type=float, help="slerp interpolation factor (0: first model, 1: second)")
    group.add_argument("--density", type=float, help="ties / dare_ties: fraction of each task vector kept")


def _dataset_configs(paths: list[str]):
    from embedkit.training import DatasetConfig

    configs, seen = [], set()
    for path in paths:
        name = Path(path).name if Path(path).is_dir() else Path(path).stem
        name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in name) or "data"
        while name in seen:
            name += "_"
        seen.add(name)
        configs.append(DatasetConfig(name=name, path=path))
    return configs


def _merge_settings(args: argparse.Namespace, defaults=None):
    """Merge settings from the flags given, over `defaults` (a config's `merge` section)."""
    from pydantic import ValidationError

    from embedkit.boom import MergeSettings
    from embedkit.errors import EmbedkitError

    values = (defaults or MergeSettings()).model_dump()
    given = {"method": args.method, "weights": args.weights,
             "relative_to_base": getattr(args, "relative_to_base", None)}
    values.update({k: v for k, v in given.items() if v is not None})
    values["parameters"] = {**values.get("parameters", {}), **_merge_parameters(args)}
    try:
        return MergeSettings(**values)
    except ValidationError as error:
        raise EmbedkitError(f"invalid merge options: {error.errors()[0]['msg']}") from None


def _merge_parameters(args: argparse.Namespace) -> dict:
    # mergekit reads top-level parameters as defaults for every model (density) or the method (t).
    return {k: v for k, v in (("t", args.t), ("density", args.density)) if v is not None}


def run_train(args: argparse.Namespace) -> int:
    from embedkit.boom import boom_train, load_boom_config
    from embedkit.config import parse_set_overrides

    config = load_boom_config(args.config, parse_set_overrides(args.overrides), output_dir=args.output_dir)
    result = boom_train(config, quiet=args.quiet)
    for bag in result.bags:
        state = "reused" if bag.reused else f"{bag.train_seconds:.0f} s"
        print(f"bag {bag.index}: {bag.ratio:g}% seed {bag.seed} ({state}) -> {bag.path}")
    print(f"merged with {config.merge.method} -> {result.model_dir}")
    return 0


def run_update(args: argparse.Namespace) -> int:
    from embedkit.boom import MergeSettings, UpdateSettings, boom_update
    from embedkit.config import load_yaml_mapping, parse_set_overrides

    merge_defaults, update_defaults, training = MergeSettings(), UpdateSettings(), {}
    overrides = parse_set_overrides(args.overrides)
    if args.config:
        from embedkit.boom import BoomConfig

        boom = BoomConfig.from_yaml(args.config, overrides=overrides)
        merge_defaults, update_defaults, training = boom.merge, boom.update, dict(boom.training)
    elif overrides:
        from embedkit.errors import EmbedkitError

        raise EmbedkitError("--set overrides values of the --config BOOM YAML; give --config too")
    if args.training_config:
        training.update(load_yaml_mapping(args.training_config))
    for key in ("batch_size", "epochs", "learning_rate", "max_seq_length", "hard_negatives", "max_steps", "device"):
        if getattr(args, key) is not None:
            training[key] = getattr(args, key)
    new = _dataset_configs(args.new_data)
    history = _dataset_configs(args.history)
    clash = {c.name for c in new} & {c.name for c in history}
    if clash:
        from embedkit.training import DatasetConfig

        history = [DatasetConfig(name=f"history_{c.name}", path=c.path) if c.name in clash else c for c in history]
    from pydantic import ValidationError

    from embedkit.errors import EmbedkitError

    if args.weights:
        raise EmbedkitError("an update's merge weight is --update-weight (the current model gets 1 - it)")
    try:
        given = {"weight": args.update_weight, "merge_base": args.merge_base, "init": args.update_init,
                 "history_ratio": args.history_ratio}
        settings = UpdateSettings(**{**update_defaults.model_dump(), **{k: v for k, v in given.items() if v is not None}})
        merge = _merge_settings(args, merge_defaults)
        settings_used = (merge.method, settings.weight)
        result = boom_update(args.base, new_data=new, history=history, output_dir=args.output_dir,
                             merge=merge, update=settings, training=training, seed=args.seed, quiet=args.quiet)
    except ValidationError as error:
        raise EmbedkitError(f"invalid training options: {error}") from None
    print(f"update model trained on {result.new_groups} new + {result.history_groups} historical queries "
          f"in {result.train_seconds:.0f} s -> {result.update_model_dir}")
    print(f"merged into the base with {settings_used[0]}, update weight {settings_used[1]} -> {result.model_dir}")
    print(f"refresh indexes with: embedkit index reencode INDEX --model {result.model_dir}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from embedkit.errors import EmbedkitError
    from embedkit.merging import merge_from_yaml, merge_models

    if bool(args.models) == bool(args.mergekit_config):
        raise EmbedkitError("give either --models or --mergekit-config")
    if args.mergekit_config:
        result = merge_from_yaml(args.mergekit_config, args.out, overwrite=args.overwrite)
    else:
        result = merge_models(args.models, args.out, method=args.method, weights=args.weights,
                              base_model=args.base_model, parameters=_merge_parameters(args) or None,
                              overwrite=args.overwrite)
    print(f"merged -> {result.path} (mergekit YAML: {result.path / 'mergekit_config.yml'})")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from embedkit.io import atomic_write
    from embedkit.training.evaluation import evaluate_suite

    suite = evaluate_suite(args.model, args.datasets, split=args.split, batch_size=args.batch_size,
                           max_length=args.max_length, device=args.device, quiet=args.quiet,
                           use_saved_prompts=not args.no_saved_prompts)
    table = suite.table()
    print(f"{args.model} [{args.split}]\n{table}")
    if args.output:
        with atomic_write(args.output) as handle:
            handle.write(table + "\n")
    return 0
