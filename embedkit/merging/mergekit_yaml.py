"""`mergekit-yaml` for sentence-transformers models: rerun the `mergekit_config.yml` embedkit writes beside
every merged model (or any mergekit YAML whose models are sentence-transformers folders).

    python -m embedkit.merging.mergekit_yaml runs/boom/model/mergekit_config.yml runs/remerged
    python -m embedkit.merging.mergekit_yaml my-merge.yml runs/merged --cuda --out-shard-size 1B --overwrite

Plain `mergekit-yaml` on such a recipe does not give the same model: it writes the transformer alone, so
`SentenceTransformer(out)` falls back to mean pooling without normalization, and mergekit <= 0.1.5 fails on
every BERT-family model (`TypeError`, see `embedkit.merging.compat`). This command applies embedkit's
version-guarded mergekit fixes, runs mergekit's own `mergekit-yaml` entry point in this process on the
models' transformer folders (every option other than `--overwrite` goes to mergekit-yaml; `--random-seed`
defaults to 0, as in embedkit's own merges), then copies the pooling, normalization, prompts and
sentence-transformers config of the recipe's first model, so `OUT` is a complete sentence-transformers model,
written atomically, loaded and checked. Errors exit with status 2 and one line, as the `embedkit` CLI does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from embedkit.errors import EXIT_USER_ERROR, EmbedkitError
from embedkit.merging.merge import MergeResult, merge_from_yaml


def run_recipe(recipe: str | Path, out: str | Path, mergekit_yaml_options: Sequence[str] = (), *,
               overwrite: bool = False) -> MergeResult:
    """Merge as `mergekit-yaml RECIPE OUT [options]` would, into a complete sentence-transformers model."""
    return merge_from_yaml(recipe, out, overwrite=overwrite, mergekit_yaml_options=list(mergekit_yaml_options))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m embedkit.merging.mergekit_yaml",
        description="Run a mergekit YAML over sentence-transformers models with mergekit-yaml; OUT is a complete "
                    "sentence-transformers model. Options not listed here are mergekit-yaml's.",
    )
    parser.add_argument("recipe", help="mergekit YAML, e.g. the mergekit_config.yml beside a merged model")
    parser.add_argument("out", help="folder for the merged sentence-transformers model")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier merged model at OUT")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, mergekit_options = build_parser().parse_known_args(argv)
    try:
        result = run_recipe(args.recipe, args.out, mergekit_options, overwrite=args.overwrite)
    except EmbedkitError as error:
        print(f"embedkit: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    command = " ".join(["mergekit-yaml", *mergekit_options])
    print(f"merged -> {result.path} with {command} (embedkit's mergekit fixes: {', '.join(result.workarounds) or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
