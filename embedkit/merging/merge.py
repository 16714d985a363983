"""Merge sentence-transformers models with mergekit into a complete sentence-transformers model.

mergekit merges the transformer weights; embedkit refuses inputs whose pooling, normalization, prompts
or other modules differ (a merge that silently changes pooling loses accuracy), copies those settings to
the output, writes the mergekit YAML beside the model, and checks that `SentenceTransformer(out)` loads.
mergekit runs through its Python API, or through its own `mergekit-yaml` command line
(`python -m embedkit.merging.mergekit_yaml`, which reruns a written `mergekit_config.yml`).

The examples need trained models on disk, so they are not run here:

>>> from embedkit.merging.merge import merge_from_yaml, merge_models
>>> merge_models(["bags/bag-0", "bags/bag-1"], "merged", method="multislerp")  # doctest: +SKIP
>>> merge_from_yaml("my-merge.yml", "merged")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from embedkit.config import load_yaml_mapping
from embedkit.errors import EmbedkitError
from embedkit.io import atomic_directory, atomic_write
from embedkit.merging.buffers import stage_without_buffers
from embedkit.merging.methods import DEFAULT_MERGE_METHOD, mergekit_config_dict
from embedkit.merging.st_layout import STLayout, diff_settings, is_weight_file, read_layout

LOG = logging.getLogger(__name__)

MERGEKIT_YAML = "mergekit_config.yml"
# The one command that reruns a written recipe; plain `mergekit-yaml` writes the transformer alone (no pooling,
# normalization or prompts) and, for mergekit <= 0.1.5, fails on BERT-family models (see compat.py).
RECIPE_COMMAND = "python -m embedkit.merging.mergekit_yaml"
RECIPE_HEADER = f"""\
# The mergekit recipe of this merge; its models are sentence-transformers folders. Rerun it with
#   {RECIPE_COMMAND} {MERGEKIT_YAML} OUT [mergekit-yaml options]
# which runs mergekit's own mergekit-yaml with embedkit's version-guarded mergekit fixes and makes OUT a
# complete sentence-transformers model (plain mergekit-yaml writes the transformer without its pooling and
# normalization modules, so SentenceTransformer(OUT) would be a different model).
"""
MERGE_RECORD = "embedkit_merge.json"
MODEL_RECORDS = ("README.md", MERGE_RECORD, "embedkit_training.json", "embedkit_lineage.json", MERGEKIT_YAML)


@dataclass(frozen=True)
class MergeResult:
    path: Path
    mergekit_config: dict[str, Any]
    workarounds: list[str]


def merge_models(
    models: Sequence[str | Path],
    out: str | Path,
    *,
    method: str = DEFAULT_MERGE_METHOD,
    weights: Sequence[float] | None = None,
    base_model: str | Path | None = None,
    parameters: dict[str, Any] | None = None,
    model_parameters: Sequence[dict[str, Any]] | None = None,
    overwrite: bool = False,
    seed: int | None = 0,
    verify: bool = True,
) -> MergeResult:
    """Merge saved sentence-transformers models with a registered method (see `MERGE_METHODS`)."""
    paths = [_local_model(m) for m in models]
    base = _local_model(base_model) if base_model is not None else None
    config = mergekit_config_dict(
        method,
        [str(p) for p in paths],
        weights=weights,
        base_model=str(base) if base is not None else None,
        parameters=parameters,
        model_parameters=model_parameters,
    )
    return merge_with_config(config, out, overwrite=overwrite, seed=seed, verify=verify)


def merge_from_yaml(
    yaml_path: str | Path, out: str | Path, *, overwrite: bool = False, seed: int | None = 0, verify: bool = True,
    mergekit_yaml_options: Sequence[str] | None = None,
) -> MergeResult:
    """Run a mergekit YAML whose models are sentence-transformers folders (see `merge_with_config`)."""
    return merge_with_config(load_yaml_mapping(yaml_path), out, overwrite=overwrite, seed=seed, verify=verify,
                             mergekit_yaml_options=mergekit_yaml_options)


def merge_with_config(
    config: dict[str, Any], out: str | Path, *, overwrite: bool = False, seed: int | None = 0, verify: bool = True,
    mergekit_yaml_options: Sequence[str] | None = None,
) -> MergeResult:
    """Run one mergekit configuration (as a dict) over sentence-transformers models.

    mergekit runs through its Python API, or, when `mergekit_yaml_options` is given (a list, maybe empty),
    through its own `mergekit-yaml` entry point with those command-line options (`--cuda`, `--out-shard-size`…).
    """
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from pydantic import ValidationError

    from embedkit.merging.compat import apply_mergekit_workarounds

    model_paths = _referenced_models(config)
    layouts = [read_layout(p) for p in model_paths]
    # A task-vector base adds weights only (no task vector of its own): the merged model's pooling, prompts
    # and modules are the merged models', and the base (e.g. an untrained backbone without the bags' prompts)
    # is not held to them. slerp's "base" is one of its two merged models.
    base = config.get("base_model")
    merged_layouts = layouts
    if base and config.get("merge_method") != "slerp":
        merged_layouts = [x for x in layouts if x.root != _local_model(str(base))] or layouts
    reference = merged_layouts[0]
    _check_same_embedding_settings(merged_layouts)

    # mergekit sees the transformer folders; the YAML written beside the model keeps the user's paths. Absolute,
    # because mergekit takes a relative "org/name"-shaped path for a hub id (its model card asks the hub).
    mergekit_dict = _point_at_transformers(config, {str(x.root): str(x.transformer_dir.resolve()) for x in layouts})
    try:
        MergeConfiguration.model_validate(mergekit_dict)  # refused before the output folder is touched
    except ValidationError as error:
        raise EmbedkitError(f"invalid mergekit configuration: {error}") from None

    workarounds = apply_mergekit_workarounds()
    out = Path(out)
    if out.exists() and not overwrite:
        raise EmbedkitError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    with atomic_directory(out, overwrite=overwrite, marker="modules.json", what="model") as tmp, \
            tempfile.TemporaryDirectory(dir=tmp.parent) as work:
        merged = Path(work) / "transformer"
        # mergekit reads each transformer through a folder that hides the class's non-persistent buffers.
        staged = {str(x.root): stage_without_buffers(x.transformer_dir.resolve(), Path(work) / "inputs" / str(i))
                  for i, x in enumerate(layouts)}
        mergekit_dict = _point_at_transformers(config, {k: str(v.path) for k, v in staged.items()})
        try:
            if mergekit_yaml_options is None:
                options = MergeOptions(copy_tokenizer=True, quiet=True, lazy_unpickle=True, random_seed=seed,
                                       write_model_card=False)
                run_merge(MergeConfiguration.model_validate(mergekit_dict), str(merged), options=options)
            else:
                _run_mergekit_yaml(mergekit_dict, merged, mergekit_yaml_options, seed)
        except (RuntimeError, ValueError, TypeError, KeyError) as error:
            raise EmbedkitError(f"mergekit failed: {type(error).__name__}: {error}") from error
        _assemble(reference, merged, tmp)
        with atomic_write(tmp / MERGEKIT_YAML) as handle:
            handle.write(RECIPE_HEADER)
            yaml.safe_dump(config, handle, sort_keys=False)
        record = {
            "mergekit_config": config,
            "inputs": [str(x.root) for x in layouts],
            "pooling": reference.pooling_mode(),
            "mergekit_workarounds": workarounds,
            # Rebuilt by the model class on load, so left out of the merge (see embedkit.merging.buffers).
            "buffers_not_merged": sorted({b for v in staged.values() for b in v.hidden_buffers}),
            "mergekit_runner": "python-api" if mergekit_yaml_options is None
            else " ".join(["mergekit-yaml", *mergekit_yaml_options]),
        }
        with atomic_write(tmp / MERGE_RECORD) as handle:
            json.dump(record, handle, indent=2)
        if verify:
            _verify_loads(tmp, reference)
    return MergeResult(path=out, mergekit_config=config, workarounds=workarounds)


def _run_mergekit_yaml(config: dict[str, Any], out: Path, options: Sequence[str], seed: int | None) -> None:
    """`mergekit-yaml CONFIG OUT [options]` through mergekit's own click entry point, in this process so that
    the work-arounds apply; `seed` is mergekit's --random-seed unless the options set one."""
    import click
    from mergekit.scripts.run_yaml import main as mergekit_yaml

    recipe = out.parent / "mergekit-input.yml"
    recipe.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    args = [str(recipe), str(out), *options]
    if seed is not None and not any(o.split("=")[0] == "--random-seed" for o in options):
        args += ["--random-seed", str(seed)]
    try:
        mergekit_yaml.main(args=args, prog_name="mergekit-yaml", standalone_mode=False)
    except click.ClickException as error:
        raise EmbedkitError(f"mergekit-yaml: {error.format_message()}") from None
    if not out.is_dir():  # e.g. --help among the options: mergekit-yaml printed and merged nothing
        raise EmbedkitError(f"mergekit-yaml {' '.join(options)} wrote no model")


def _local_model(model: str | Path) -> Path:
    from embedkit.encoding.models import resolve_model

    path = Path(resolve_model(str(model)))  # recovers a model folder left mid-swap; maps bundled hub ids
    if path.is_dir():
        return path
    try:  # a hub id: the real download path for users with hub access
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model)))
    except Exception as error:  # noqa: BLE001 - any hub failure means the model is not available
        raise EmbedkitError(f"model '{model}' is neither a local folder nor downloadable: {error}") from None


def _referenced_models(config: dict[str, Any]) -> list[Path]:
    names: list[str] = []
    if config.get("base_model"):
        names.append(str(config["base_model"]))
    for entry in config.get("models") or []:
        names.append(str(entry["model"] if isinstance(entry, dict) else entry))
    for slice_ in config.get("slices") or []:
        for source in slice_.get("sources", []):
            names.append(str(source["model"]))
    if not names:
        raise EmbedkitError("merge configuration names no models")
    seen: dict[str, None] = {}
    for name in names:
        seen.setdefault(name, None)
    return [_local_model(n) for n in seen]


def _point_at_transformers(config: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    def fix(name: Any) -> Any:
        local = str(_local_model(name)) if isinstance(name, str) else name
        return mapping.get(local, name)

    result = json.loads(json.dumps(config))
    if result.get("base_model"):
        result["base_model"] = fix(str(result["base_model"]))
    for entry in result.get("models") or []:
        entry["model"] = fix(str(entry["model"]))
    for slice_ in result.get("slices") or []:
        for source in slice_.get("sources", []):
            source["model"] = fix(str(source["model"]))
    return result


def _check_same_embedding_settings(layouts: list[STLayout]) -> None:
    reference = layouts[0]
    ref_settings = reference.embedding_settings()
    for layout in layouts[1:]:
        differing = diff_settings(ref_settings, layout.embedding_settings())
        if layout.transformer_path != reference.transformer_path:
            differing.append("transformer module path")
        if differing:
            raise EmbedkitError(
                f"cannot merge {layout.root} with {reference.root}: their embedding settings differ "
                f"({', '.join(differing)}); merging would silently change pooling/normalization/prompts"
            )


def _assemble(reference: STLayout, merged: Path, out: Path) -> None:
    """Copy the reference model minus its transformer weights, then put the merged transformer in place."""
    for source in reference.root.rglob("*"):
        relative = source.relative_to(reference.root)
        # Records describing the reference model's own history would be false for the merge.
        if source.is_dir() or relative.parts[0].startswith(".") or relative.name in MODEL_RECORDS:
            continue
        in_transformer = (reference.transformer_path == "" and len(relative.parts) == 1) or (
            reference.transformer_path != "" and relative.parts[0] == reference.transformer_path
        )
        if in_transformer and is_weight_file(source):
            continue
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    transformer_out = out / reference.transformer_path if reference.transformer_path else out
    transformer_out.mkdir(parents=True, exist_ok=True)
    for produced in merged.iterdir():
        # Weights and the output config come from mergekit; tokenizer files stay the reference's.
        if is_weight_file(produced) or produced.name == "config.json":
            shutil.copy2(produced, transformer_out / produced.name)
        elif not (transformer_out / produced.name).exists() and produced.name not in ("README.md", MERGEKIT_YAML):
            shutil.copy2(produced, transformer_out / produced.name)


def _verify_loads(path: Path, reference: STLayout) -> None:
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(str(path), device="cpu")
        vector = model.encode(["merge check"], convert_to_numpy=True)
    except Exception as error:  # noqa: BLE001 - any failure here means the output is unusable
        raise EmbedkitError(f"merged model does not load with SentenceTransformer: {error}") from error
    if not (vector.shape[0] == 1 and vector.shape[1] > 0):
        raise EmbedkitError("merged model produced no embedding")
    merged_pooling = read_layout(path).pooling_mode()
    if merged_pooling != reference.pooling_mode():
        raise EmbedkitError(f"pooling changed by the merge: {reference.pooling_mode()} -> {merged_pooling}")
