"""Building the model to train: pooling for encoders (CLS/mean) and decoders (last token), optional LoRA."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from embedkit.errors import EmbedkitError
from embedkit.training.config import LoraSettings, TrainConfig

LOG = logging.getLogger(__name__)

DECODER_MODEL_TYPES = frozenset(
    {"qwen2", "qwen3", "llama", "mistral", "gemma", "gemma2", "gemma3_text", "gpt2", "phi3", "olmo2", "qwen2_vl", "qwen2_5_vl"}
)


def resolve_model_name(name: str) -> str:
    """Map known hub ids to bundled copies (all-MiniLM-L6-v2) when the encoding package offers it."""
    try:
        from embedkit.encoding.models import resolve_model
    except ImportError:
        return name
    return resolve_model(name)


def is_decoder(hf_config) -> bool:
    architectures = getattr(hf_config, "architectures", None) or []
    return (
        bool(getattr(hf_config, "is_decoder", False))
        or getattr(hf_config, "model_type", "") in DECODER_MODEL_TYPES
        or any(a.endswith("ForCausalLM") for a in architectures)
    )


def default_pooling(hf_config) -> str:
    """Last-token pooling for decoders (as in the BOOM release), mean pooling for encoders."""
    return "lasttoken" if is_decoder(hf_config) else "mean"


def weights_dtype(config: TrainConfig, lora: bool | None = None):
    """The torch dtype to load weights in; refuses half-precision weights for full fine-tuning.

    `lora`: whether LoRA will be used; None when not known yet (`enabled: auto` before the model's size is
    known: the refusal is then left to the caller's second call)."""
    import torch

    if lora is None and config.lora.enabled != "auto":
        lora = bool(config.lora.enabled)
    name = config.dtype
    if name == "auto":
        name = "bfloat16" if lora and torch.cuda.is_available() and config.device != "cpu" else "float32"
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if dtype != torch.float32 and lora is False:
        raise EmbedkitError(
            f"dtype: {name} with full fine-tuning would train without fp32 master weights (updates smaller "
            "than the bf16/fp16 resolution are lost); keep dtype: float32 and set precision: bf16 (mixed "
            "precision, fp32 master weights), or enable LoRA (lora.enabled: true)")
    return dtype


def build_model(config: TrainConfig, device: str | None = None, *, lora: bool | None = None):
    """A SentenceTransformer ready to train: an existing ST model keeps its modules unless `pooling` asks
    for another; a plain transformers model gets Transformer + Pooling (+ Normalize). Weights load in
    `config.dtype` with `config.attn_implementation`; decoders get an EOS appended (`append_eos`)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    name = resolve_model_name(config.model)
    kwargs: dict[str, Any] = {"device": device} if device else {}
    model_kwargs = {"dtype": weights_dtype(config, lora), "attn_implementation": config.attn_implementation}
    sentence_transformer = (Path(name) / "modules.json").exists() or (
        not Path(name).exists() and _hub_is_sentence_transformer(name))
    try:  # a missing folder or an unreachable hub id: transformers raises OSError for both
        if sentence_transformer:
            model = SentenceTransformer(name, model_kwargs=model_kwargs, **kwargs)
        else:
            base = Transformer(name, max_seq_length=config.max_seq_length, model_kwargs=model_kwargs)
    except OSError as error:
        from embedkit.encoding.models import model_unavailable

        raise model_unavailable(config.model, error) from None
    if sentence_transformer:
        if config.pooling != "auto":
            _replace_pooling(model, config.pooling)
        if config.normalize and not any(isinstance(m, Normalize) for m in model):
            model.append(Normalize())
    else:
        pooling = config.pooling if config.pooling != "auto" else default_pooling(base.auto_model.config)
        modules = [base, Pooling(base.get_embedding_dimension(), pooling_mode=pooling)]
        if config.normalize:
            modules.append(Normalize())
        model = SentenceTransformer(modules=modules, **kwargs)
    transformer: Any = model[0]
    decoder = is_decoder(transformer.auto_model.config)
    if decoder:
        tokenizer = transformer.tokenizer
        if tokenizer.pad_token is None:  # decoders often lack one; padding is masked out anyway
            tokenizer.pad_token = tokenizer.eos_token
    pooling_mode = next((m.get_config_dict().get("pooling_mode") for m in model if isinstance(m, Pooling)), None)
    wanted = config.append_eos
    if wanted == "auto":
        wanted = decoder and pooling_mode == "lasttoken"
    if wanted:
        append_eos(transformer.tokenizer, required=config.append_eos is True)
    if config.gradient_checkpointing and not decoder:
        LOG.info("gradient checkpointing on an encoder: activations are recomputed in the backward pass")
    if config.max_seq_length:
        model.max_seq_length = config.max_seq_length
    return model


def append_eos(tokenizer, *, required: bool = False) -> bool:
    """Make `tokenizer` end every input with its EOS token (kept when inputs are truncated), so the
    last-token embedding is read at EOS as Qwen3-Embedding-style models are trained. The change is part
    of the saved tokenizer, so encoding with the trained model does the same. Returns True if changed."""
    eos, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    if eos is None or eos_id is None:
        if required:
            raise EmbedkitError("append_eos: the tokenizer has no EOS token")
        LOG.warning("the tokenizer has no EOS token; inputs are pooled at their last token as they are")
        return False
    last = tokenizer("a")["input_ids"][-1:]
    if last == [eos_id]:
        return False  # the tokenizer already appends it
    if last and last[0] in set(tokenizer.all_special_ids):
        LOG.info("the tokenizer already ends inputs with %s; pooling reads that token",
                 tokenizer.convert_ids_to_tokens(last[0]))
        return False
    from tokenizers import processors

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise EmbedkitError("append_eos needs a fast (tokenizers) tokenizer")
    template = processors.TemplateProcessing(single=f"$A:0 {eos}:0", pair=f"$A:0 {eos}:0 $B:1 {eos}:1",
                                             special_tokens=[(eos, eos_id)])
    existing = backend.post_processor
    backend.post_processor = processors.Sequence([existing, template]) if existing is not None else template
    if tokenizer("a")["input_ids"][-1:] != [eos_id]:
        raise EmbedkitError("could not make the tokenizer append its EOS token")
    return True


def _hub_is_sentence_transformer(name: str) -> bool:
    try:
        from huggingface_hub import file_exists

        return bool(file_exists(name, "modules.json"))
    except Exception:  # noqa: BLE001 - offline or unknown: treat as plain transformers
        return False


def _replace_pooling(model, mode: str) -> None:
    from sentence_transformers.sentence_transformer.modules import Pooling

    for index, module in enumerate(model):
        if isinstance(module, Pooling):
            if module.get_config_dict().get("pooling_mode") != mode:
                LOG.warning("replacing the model's pooling with '%s' as configured", mode)
                model[index] = Pooling(module.get_embedding_dimension(), pooling_mode=mode)
            return
    raise EmbedkitError("the model has no Pooling module to configure")


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def lora_decision(config: TrainConfig) -> bool | None:
    """True/False when the config decides LoRA by itself, None for `auto` (needs the model's size)."""
    return None if config.lora.enabled == "auto" else bool(config.lora.enabled)


def lora_wanted(settings: LoraSettings, n_params: int) -> bool:
    if settings.enabled == "auto":
        return n_params > settings.auto_min_params
    return bool(settings.enabled)


def add_lora(model, settings: LoraSettings) -> None:
    """Wrap the transformer with peft LoRA adapters; only the adapters train."""
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(
        task_type=TaskType.FEATURE_EXTRACTION,
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
    )
    _set_inner_model(model[0], get_peft_model(model[0].auto_model, lora))


def merge_lora(model) -> bool:
    """Fold trained LoRA adapters into the weights so the saved model is a complete, mergeable model."""
    from peft import PeftModel

    transformer = model[0]
    if isinstance(transformer.auto_model, PeftModel):
        _set_inner_model(transformer, transformer.auto_model.merge_and_unload())
        return True
    return False


def _set_inner_model(transformer, inner) -> None:
    # sentence-transformers >= 6 keeps the model in `.model` (`auto_model` is a read-only alias);
    # older versions store `auto_model` itself.
    if isinstance(getattr(type(transformer), "auto_model", None), property):
        transformer.model = inner
    else:
        transformer.auto_model = inner
