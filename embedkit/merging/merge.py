"""Merge sentence-transformers models with mergekit into a complete sentence-transformers model.

mergekit merges the transformer weights; embedkit refuses inputs whose pooling, normalization, prompts
or other modules differ (a merge that silently changes pooling loses accuracy), copies those settings to
the output, writes the mergekit YAML beside the model, and checks that `SentenceTransformer(out)` loads.

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
from embedkit.merging.methods import DEFAULT_MERGE_METHOD, mergekit_config_dict
from embedkit.merging.st_layout import STLayout, diff_settings, is_weight_file, read_layout

LOG = logging.getLogger(__name__)

MERGEKIT_YAML = "mergekit_config.yml"
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
    yaml_path: str | Path, out: str | Path, *, overwrite: bool = False, seed: int | None = 0, verify: bool = True
) -> MergeResult:
    """Run a mergekit YAML whose models are sentence-transformers folders."""
    return merge_with_config(load_yaml_mapping(yaml_path), out, overwrite=overwrite, seed=seed, verify=verify)


def merge_with_config(
    config: dict[str, Any], out: str | Path, *, overwrite: bool = False, seed: int | None = 0, verify: bool = True
) -> MergeResult:
    """Run one mergekit configuration (as a dict) over sentence-transformers models."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from pydantic import ValidationError

    from embedkit.merging.compat import apply_mergekit_workarounds

    model_paths = _referenced_models(config)
    layouts = [read_layout(p) for p in model_paths]
    reference = layouts[0]
    _check_same_embedding_settings(layouts)

    # mergekit sees the transformer folders; the YAML written beside the model keeps the user's paths.
    mergekit_dict = _point_at_transformers(config, {str(x.root): str(x.transformer_dir) for x in layouts})
    try:
        merge_config = MergeConfiguration.model_validate(mergekit_dict)
    except ValidationError as error:
        raise EmbedkitError(f"invalid mergekit configuration: {error}") from None

    workarounds = apply_mergekit_workarounds()
    out = Path(out)
    if out.exists() and not overwrite:
        raise EmbedkitError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    with atomic_directory(out, overwrite=overwrite, marker="modules.json", what="model") as tmp, \
            tempfile.TemporaryDirectory(dir=tmp.parent) as work:
        merged = Path(work) / "transformer"
        options = MergeOptions(copy_tokenizer=True, quiet=True, lazy_unpickle=True, random_seed=seed, write_model_card=False)
        try:
            run_merge(merge_config, str(merged), options=options)
        except (RuntimeError, ValueError, TypeError, KeyError) as error:
            raise EmbedkitError(f"mergekit failed: {type(error).__name__}: {error}") from error
        _assemble(reference, merged, tmp)
        with atomic_write(tmp / MERGEKIT_YAML) as handle:
            yaml.safe_dump(config, handle, sort_keys=False)
        record = {
            "mergekit_config": config,
            "inputs": [str(x.root) for x in layouts],
            "pooling": reference.pooling_mode(),
            "mergekit_workarounds": workarounds,
        }
        with atomic_write(tmp / MERGE_RECORD) as handle:
            json.dump(record, handle, indent=2)
        if verify:
            _verify_loads(tmp, reference)
    return MergeResult(path=out, mergekit_config=config, workarounds=workarounds)


def _local_model(model: str | Path) -> Path:
    path = Path(model)
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
