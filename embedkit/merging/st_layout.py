"""Reading the on-disk layout of a sentence-transformers model: which folder holds the transformer
weights, and which settings (pooling, normalization, prompts, similarity) define its embeddings."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from embedkit.errors import EmbedkitError

# Files that hold the transformer's weights: replaced by the merge, never copied from an input model.
WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.pt")
# Settings that decide what an embedding is. A merge must keep them identical across inputs.
SETTING_FILES = ("config_sentence_transformers.json", "sentence_bert_config.json", "modules.json")


@dataclass(frozen=True)
class STLayout:
    root: Path
    modules: list[dict]
    transformer_path: str  # relative to root; "" when the transformer lives at the root

    @property
    def transformer_dir(self) -> Path:
        return self.root / self.transformer_path if self.transformer_path else self.root

    def embedding_settings(self) -> dict[str, object]:
        """Everything outside the transformer weights that shapes the embedding, for comparison."""
        settings: dict[str, object] = {}
        for name in SETTING_FILES:
            path = self.root / name
            if path.exists():
                data = json.loads(path.read_text(encoding="utf-8"))
                if name == "config_sentence_transformers.json":
                    data = {k: v for k, v in data.items() if k != "__version__"}
                settings[name] = data
        for module in self.modules:
            if module["path"] == self.transformer_path:
                continue
            folder = self.root / module["path"]
            if folder.is_dir():
                for file in sorted(folder.rglob("*")):
                    if file.is_file():
                        key = str(file.relative_to(self.root))
                        settings[key] = (
                            json.loads(file.read_text(encoding="utf-8")) if file.suffix == ".json" else file.read_bytes()
                        )
            settings[f"module:{module['idx']}"] = module["type"].rsplit(".", 1)[-1]
        return settings

    def pooling_mode(self) -> str | None:
        for module in self.modules:
            if module["type"].endswith("Pooling"):
                config = self.root / module["path"] / "config.json"
                if config.exists():
                    data = json.loads(config.read_text(encoding="utf-8"))
                    if "pooling_mode" in data:
                        return str(data["pooling_mode"])
                    flags = [k[len("pooling_mode_") :] for k, v in data.items() if k.startswith("pooling_mode_") and v]
                    return "+".join(flags) or None
        return None


def read_layout(path: str | Path) -> STLayout:
    """Read a saved sentence-transformers model folder; plain transformers folders are refused."""
    root = Path(path)
    modules_file = root / "modules.json"
    if not modules_file.exists():
        raise EmbedkitError(
            f"{root} is not a sentence-transformers model folder (no modules.json); "
            "save it with SentenceTransformer.save() first"
        )
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    transformers_ = [m for m in modules if m["type"].endswith(("Transformer", ".Transformer"))]
    if len(transformers_) != 1:
        raise EmbedkitError(f"{root}: expected exactly one Transformer module in modules.json, found {len(transformers_)}")
    return STLayout(root=root, modules=modules, transformer_path=transformers_[0]["path"])


def is_weight_file(path: Path) -> bool:
    return any(path.match(pattern) for pattern in WEIGHT_FILE_PATTERNS)


def diff_settings(reference: dict[str, object], other: dict[str, object]) -> list[str]:
    """Names of settings that differ between two models (missing on either side counts)."""
    return sorted(k for k in set(reference) | set(other) if reference.get(k) != other.get(k))
