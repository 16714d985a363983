"""Registry of merge methods: how each maps onto a mergekit configuration.

Users pick a method by name (`multislerp` by default, as in the BOOM release); each entry knows whether
mergekit needs a base model, how many models it takes and which per-model parameters it reads.
Register more with `register_merge_method`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from embedkit.errors import EmbedkitError
from embedkit.registry import Registry

DEFAULT_MERGE_METHOD = "multislerp"


@dataclass(frozen=True)
class MergeMethod:
    """One selectable merge method.

    `mergekit_name` is the `merge_method` written to the mergekit YAML. `needs_base`: a base model is
    required (task vectors are taken relative to it); `accepts_base`: a base is optional (multislerp
    interpolates task vectors relative to it when given, the models themselves otherwise). `exact_models`: the method takes exactly this many
    models (slerp: 2). `model_parameters`: per-model parameters with their defaults (a weight per model).
    `global_parameters`: method-level parameters with defaults. `stated_weight_parameters`: method-level
    parameters under which each model's `weight` means what it says (merged = base + Σ wᵢ·τᵢ, after the
    method's trimming); merges whose weights are a stated formula (BOOM updates) set them. mergekit's `ties`
    renormalises by the sum of the weights that agree in sign (`normalize: true` by default), so an update
    merged relative to the current model with weight w gave the update model itself for every w.
    """

    name: str
    mergekit_name: str
    description: str
    needs_base: bool = False
    accepts_base: bool = False
    exact_models: int | None = None
    model_parameters: dict[str, Any] = field(default_factory=dict)
    global_parameters: dict[str, Any] = field(default_factory=dict)
    stated_weight_parameters: dict[str, Any] = field(default_factory=dict)


MERGE_METHODS: Registry[MergeMethod] = Registry("merge method")


def register_merge_method(method: MergeMethod) -> MergeMethod:
    """Make `method` selectable by its name."""
    MERGE_METHODS.add(method.name, method)
    return method


def get_merge_method(name: str) -> MergeMethod:
    """The registered method called `name`; an unknown name lists the choices."""
    return MERGE_METHODS.get(name)


register_merge_method(
    MergeMethod(
        "multislerp",
        "multislerp",
        "spherical interpolation of any number of models (BOOM default); of task vectors given a base",
        accepts_base=True,
        model_parameters={"weight": 1.0},
    )
)
register_merge_method(
    MergeMethod("linear", "linear", "weighted average of the weights", model_parameters={"weight": 1.0})
)
register_merge_method(
    MergeMethod(
        "slerp",
        "slerp",
        "spherical interpolation of two models; t=0 gives the base, t=1 the other",
        needs_base=True,
        exact_models=2,
        global_parameters={"t": 0.5},
    )
)
register_merge_method(
    MergeMethod(
        "task_arithmetic",
        "task_arithmetic",
        "base + weighted sum of the task vectors (model - base)",
        needs_base=True,
        model_parameters={"weight": 1.0},
        stated_weight_parameters={"normalize": False},  # mergekit's default already; written to be explicit
    )
)
register_merge_method(
    MergeMethod(
        "ties",
        "ties",
        "TIES: trim task vectors to `density`, elect signs, merge agreeing entries",
        needs_base=True,
        model_parameters={"weight": 1.0, "density": 0.5},
        stated_weight_parameters={"normalize": False},
    )
)
register_merge_method(
    MergeMethod(
        "dare_ties",
        "dare_ties",
        "DARE (random drop with rescale to `density`) then TIES sign election",
        needs_base=True,
        model_parameters={"weight": 1.0, "density": 0.5},
        stated_weight_parameters={"normalize": False},  # mergekit's default already; written to be explicit
    )
)


def stated_weight_parameters(method_name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """`parameters` plus what makes `method_name`'s per-model weights act as stated; a parameter the user set
    to another value is refused with the reason (the merge would not be the formula the weights state)."""
    method = get_merge_method(method_name)
    result = dict(parameters)
    for key, value in method.stated_weight_parameters.items():
        if key in result and result[key] != value:
            raise EmbedkitError(
                f"merge parameter {key}: {result[key]} with '{method.name}' rescales the stated weights "
                f"(mergekit divides by the sum of the weights that agree), so the update weight would not be "
                f"the one merged; remove it (embedkit sets {key}: {value})")
        result[key] = value
    return result


def mergekit_config_dict(
    method_name: str,
    models: Sequence[str],
    *,
    weights: Sequence[float] | None = None,
    base_model: str | None = None,
    parameters: dict[str, Any] | None = None,
    model_parameters: Sequence[dict[str, Any]] | None = None,
    dtype: str = "float32",
) -> dict[str, Any]:
    """Build the mergekit YAML (as a dict) for merging `models` with a registered method.

    `weights` gives one weight per model (methods that read `weight`); `parameters` sets method-level
    parameters (slerp's `t`, `normalize`, ...); `model_parameters` overrides per-model ones such as
    `density`. For base-model methods the base defaults to the first model.
    """
    method = get_merge_method(method_name)
    models = [str(m) for m in models]
    if len(models) < 2:
        raise EmbedkitError(f"merging needs at least 2 models, got {len(models)}")
    if weights is not None and len(weights) != len(models):
        raise EmbedkitError(f"{len(weights)} weights given for {len(models)} models")
    if model_parameters is not None and len(model_parameters) != len(models):
        raise EmbedkitError(f"{len(model_parameters)} per-model parameter sets given for {len(models)} models")
    if method.needs_base and base_model is None:
        base_model = models[0]
    if base_model is not None and not (method.needs_base or method.accepts_base):
        raise EmbedkitError(f"merge method '{method.name}' does not take a base model (got {base_model})")
    if method.exact_models is not None and len(models) != method.exact_models:
        raise EmbedkitError(f"merge method '{method.name}' takes exactly {method.exact_models} models, got {len(models)}")

    entries = []
    for index, model in enumerate(models):
        # A parameter given globally applies to every model, so its per-model default must not shadow it.
        params = {k: v for k, v in method.model_parameters.items() if k not in (parameters or {})}
        if weights is not None and "weight" in params:
            params["weight"] = float(weights[index])
        if model_parameters is not None:
            params.update(model_parameters[index])
        entry: dict[str, Any] = {"model": model}
        # mergekit ignores the base model's own task vector; keeping its parameters is harmless but
        # confusing in the written YAML, so the base entry carries none.
        if params and not ((method.needs_base or method.accepts_base) and model == base_model
                           and method.name != "slerp"):
            entry["parameters"] = params
        entries.append(entry)

    config: dict[str, Any] = {"merge_method": method.mergekit_name, "dtype": dtype}
    if method.name == "slerp":
        # mergekit's slerp is expressed over slices of exactly two models with `t` a global parameter.
        config["models"] = [{"model": m} for m in models]
    else:
        config["models"] = entries
    if base_model is not None:
        config["base_model"] = str(base_model)
    global_params = {**method.global_parameters, **(parameters or {})}
    if global_params:
        config["parameters"] = global_params
    return config
