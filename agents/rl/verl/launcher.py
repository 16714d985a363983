"""`python -m agents.rl.verl <verl overrides>`: verl's own `main_ppo` with embedkit's names registered everywhere.

    python -m agents.rl.verl algorithm.adv_estimator=embedkit_grpo trainer.v1.trainer_mode=embedkit_sync \\
        +actor_rollout_ref.embedkit.tre.kind=tre_k data.train_files=... actor_rollout_ref.model.path=...

The arguments are verl's Hydra command line, unchanged (`python -m verl.trainer.main_ppo ARGS` becomes
`python -m agents.rl.verl ARGS`). Before handing over, the launcher

1. registers everything (`agents.rl.verl.plugin.register_all`) and adds `agents.rl.verl.plugin` to
   `VERL_USE_EXTERNAL_MODULES` (and this checkout to `PYTHONPATH`), which verl imports whenever `verl` is
   imported: the Ray workers of the cluster `main_ppo` starts inherit this environment, so they register too
   (on a cluster started apart, put the same variables in its runtime environment);
2. composes the config as `main_ppo` will, runs verl's own `validate_config`, and checks embedkit's actor
   settings (`actor_rollout_ref.embedkit`: refused with the reason where they could not run as stated; they
   need an `embedkit_*` trainer mode, else verl's plain worker would ignore them);
3. stops with exit 2 and a message when there is no GPU: verl's trainer places its workers and rollout server on
   GPUs through Ray, which cannot start on a CPU-only machine.

Tested with verl 0.9.1 (`TESTED_VERL`). Bad input exits 2 with a one-line message, never a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from embedkit.errors import EmbedkitError

PLUGIN = "agents.rl.verl.plugin"
TESTED_VERL = ("0.9.1",)
ROOT = Path(__file__).resolve().parents[3]


def worker_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment variables that make a process importing verl register embedkit's names."""
    environ = dict(os.environ if environ is None else environ)
    modules = [m for m in environ.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
    paths = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {
        "VERL_USE_EXTERNAL_MODULES": ",".join(modules if PLUGIN in modules else [*modules, PLUGIN]),
        "PYTHONPATH": os.pathsep.join(paths if str(ROOT) in paths else [str(ROOT), *paths]),
    }


def _hydra_source(args: Sequence[str]) -> tuple[str, str, list[str]]:
    """(config dir, config name, overrides) from a `main_ppo` command line (`--config-path/--config-name`)."""
    import verl

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    name, overrides = "ppo_trainer", []
    items = list(args)
    while items:
        item = items.pop(0)
        for flag in ("--config-path", "--config-name", "-cp", "-cn"):
            if item == flag or item.startswith(flag + "="):
                value = item.split("=", 1)[1] if "=" in item else (items.pop(0) if items else "")
                if flag in ("--config-path", "-cp"):
                    config_dir = os.path.abspath(value)
                else:
                    name = value
                break
        else:
            overrides.append(item)
    return config_dir, name, overrides


def compose(args: Sequence[str]) -> Any:
    """verl's trainer config as `verl.trainer.main_ppo` will compose it from the same command line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    config_dir, name, overrides = _hydra_source(args)
    try:
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            return hydra_compose(config_name=name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise EmbedkitError(f"verl's config did not compose: {str(exc).splitlines()[0]}") from None


def preflight(config: Any) -> None:
    """verl's own config validation, then embedkit's checks (EmbedkitError with the reason)."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    from agents.rl.verl.actor import actor_settings, check_supported
    from agents.rl.verl.trainer import PREFIX, TRAINER_MODES, _is_distillation

    auto_set_device(config)
    try:
        validate_config(config=config, use_reference_policy=need_reference_policy(config),
                        use_critic=need_critic(config))  # fmt: skip
    except Exception as exc:  # noqa: BLE001  verl raises assertions, ValueErrors, hydra and HF errors alike
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EmbedkitError(f"verl refused the config: {first}") from None
    settings = actor_settings(config.actor_rollout_ref)
    check_supported(config.actor_rollout_ref, settings, distillation=_is_distillation(config))
    mode = str(config.trainer.get("v1", {}).get("trainer_mode", "sync"))
    from agents.rl.verl.rose import ROSE_NAME, check_rose_config

    if mode == ROSE_NAME:
        check_rose_config(config)  # the trainer checks it too, but only once Ray and the TaskRunner are up
    if settings.active and not (config.trainer.use_v1 and _selects_embedkit_worker(mode)):
        raise EmbedkitError(f"actor_rollout_ref.embedkit (TRE/MGS) runs in embedkit's actor worker, which the v1 "
                            f"trainer modes {', '.join(TRAINER_MODES)} select (trainer.v1.trainer_mode={mode} does "
                            f"not); set trainer.v1.trainer_mode={PREFIX}{mode.removeprefix(PREFIX)}")  # fmt: skip


def _selects_embedkit_worker(mode: str) -> bool:
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY

    from agents.rl.verl.trainer import EmbedkitTrainerMixin

    return mode in TRAINER_REGISTRY and issubclass(TRAINER_REGISTRY[mode], EmbedkitTrainerMixin)


def require_gpu(config: Any) -> None:
    import torch

    if not torch.cuda.is_available():
        gpus = config.trainer.get("n_gpus_per_node", "?")
        raise EmbedkitError(
            f"no GPU here (torch.cuda.is_available() is False): verl's trainer places its actor and rollout "
            f"workers on trainer.n_gpus_per_node={gpus} GPU(s) per node through Ray, which cannot start on a "
            "CPU-only machine. Everything before that ran: embedkit's names registered, verl's config composed "
            "and validated, embedkit's actor settings checked"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    os.environ.update(worker_env())
    try:
        from agents.rl.verl.plugin import register_all

        register_all()
        config = compose(args)
        preflight(config)
        require_gpu(config)
    except EmbedkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from verl.trainer import main_ppo

    sys.argv = [main_ppo.__file__, *args]  # hydra reads the command line: the user's, unchanged
    main_ppo.main()
    return 0
