"""A test-only verl platform for the CPU, and one real verl 0.9.1 actor update on a tiny random-init Qwen2.

verl registers only nvidia/npu/rocm platforms; this module registers a "cpu" one through verl's own plugin
registry (`PlatformRegistry.register`), selected with `VERL_PLATFORM=cpu` (facts and the rest of the recipe:
/work/shared/notes/verl-on-cpu.md). `cpu_actor_worker(...)` builds `ActorRolloutRefWorker(role="actor")` (or a
subclass) the way verl's trainer does, from hydra's composition of verl's shipped `ppo_trainer` YAML.

Import this module before anything asks verl for its platform (`use_cpu_platform()` does it and sets the
environment verl reads).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry


def _no_op(*_: Any, **__: Any) -> None:
    return None


# What verl asks the device module for and torch.cpu lacks.
CPU_DEVICE_MODULE = SimpleNamespace(
    empty_cache=_no_op, synchronize=_no_op, max_memory_allocated=lambda *a, **k: 0,
    max_memory_reserved=lambda *a, **k: 0, memory_allocated=lambda *a, **k: 0, memory_reserved=lambda *a, **k: 0,
    reset_peak_memory_stats=_no_op, get_device_name=lambda *a, **k: "cpu", current_device=lambda: "cpu",
    device_count=lambda: 1, is_available=lambda: True, set_device=_no_op, manual_seed=torch.manual_seed,
    manual_seed_all=torch.manual_seed, mem_get_info=lambda *a, **k: (8 << 30, 16 << 30),
    get_rng_state=torch.get_rng_state, set_rng_state=torch.set_rng_state,
)  # fmt: skip


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    """Device "cpu", backend gloo, no-op device hooks (tests only)."""

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return CPU_DEVICE_MODULE  # type: ignore[return-value]

    def is_available(self) -> bool:
        return True

    def current_device(self) -> Any:  # verl moves tensors `.to(current_device())`: the string "cpu", not 0 (cuda:0)
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):  # type: ignore[override]
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "CPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


def use_cpu_platform() -> None:
    """Select the cpu platform (and the FSDP engine, registered for cuda/npu only) in this process, also where
    verl already resolved its platform (verl's `set_platform`)."""
    from verl.plugin.platform import platform_manager

    os.environ["VERL_PLATFORM"] = "cpu"
    os.environ["VERL_ENGINE_DEVICE"] = "cuda"
    if not isinstance(platform_manager._current_platform, PlatformCPU):
        platform_manager.set_platform(PlatformCPU())


@contextmanager
def cpu_platform():
    """`use_cpu_platform()` for a block; verl's platform and the variables are put back after it, and a process
    group `init_gloo()` made inside it is destroyed (else its MASTER_PORT, still bound by this process, reaches
    every `torchrun`/accelerate command a later test starts)."""
    import torch.distributed as dist
    from verl.plugin.platform import platform_manager

    saved = platform_manager._current_platform, {k: os.environ.get(k) for k in ("VERL_PLATFORM", "VERL_ENGINE_DEVICE",
                                                                               *DIST_VARIABLES)}  # fmt: skip
    had_group = dist.is_initialized()
    use_cpu_platform()
    try:
        yield
    finally:
        if dist.is_initialized() and not had_group:
            dist.destroy_process_group()
        platform_manager._current_platform = saved[0]
        for key, value in saved[1].items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


DIST_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")


def init_gloo() -> None:
    """World size 1 with gloo, before `init_model` (else verl asks for "cpu:gloo,cpu:gloo")."""
    import torch.distributed as dist

    if not dist.is_initialized():
        from tests.helpers import free_port

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                          LOCAL_RANK="0")  # fmt: skip
        dist.init_process_group("gloo", rank=0, world_size=1)


def write_tiny_qwen2(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, hidden-64 random-init Qwen2 and the char tokenizer, saved as an HF folder (weights drawn wide
    enough that its next-token distributions are far from uniform, so the temperature matters)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from agents.rl.toy import build_char_tokenizer

    tok = build_char_tokenizer()
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=False, initializer_range=0.3)  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def compose_verl_config(overrides: Sequence[str]) -> Any:
    """verl's trainer config as `verl.trainer.main_ppo` gets it (hydra, verl's shipped `ppo_trainer`)."""
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=list(overrides))


CPU_ACTOR_OVERRIDES = [
    "actor_rollout_ref.actor.strategy=fsdp2",  # FSDP1 sets sync_module_states=True, which refuses CPU params
    "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",  # default: flash_attention_2
    "actor_rollout_ref.actor.use_torch_compile=false",
    "actor_rollout_ref.actor.fsdp_config.param_offload=false",
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload=false",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
]


def build_actor(worker_cls: type, model_dir: Path, overrides: Sequence[str] = ()) -> Any:
    """`worker_cls(config=actor_rollout_ref, role="actor")` then `init_model()`, as verl's trainer builds it."""
    use_cpu_platform()
    init_gloo()
    config = compose_verl_config([f"actor_rollout_ref.model.path={model_dir}", *CPU_ACTOR_OVERRIDES, *overrides])
    worker = worker_cls(config=config.actor_rollout_ref, role="actor")
    worker.init_model()
    return worker, config


def padded_fields(n: int = 4, prompt_len: int = 3, response_len: int = 5, seed: int = 0,
                  vocab: int = 40) -> dict[str, torch.Tensor]:  # fmt: skip
    """A left/right-padded actor batch: shorter prompts (left pad) and responses (right pad) of random tokens,
    random advantages; `old_log_probs` left to the caller (zeros here)."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(4, vocab, (n, prompt_len), generator=g)
    responses = torch.randint(4, vocab, (n, response_len), generator=g)
    prompt_mask = torch.ones(n, prompt_len, dtype=torch.long)
    response_mask = torch.ones(n, response_len, dtype=torch.long)
    for row in range(n):
        prompt_mask[row, : row % 2] = 0  # left padding
        response_mask[row, response_len - (row % 3) :] = 0  # right padding
    attention_mask = torch.cat([prompt_mask, response_mask], 1)
    return {
        "prompts": prompts, "responses": responses, "input_ids": torch.cat([prompts, responses], 1),
        "attention_mask": attention_mask, "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
        "response_mask": response_mask.float(), "old_log_probs": torch.zeros(n, response_len),
        "advantages": torch.randn(n, response_len, generator=g) * response_mask,
    }  # fmt: skip


def response_logits(model: Any, fields: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits that predict each response token, [n, response_len, V] (zeros past a response's end), from a
    plain HF forward pass of each row's unpadded tokens."""
    n, response_len = fields["responses"].shape
    out = []
    for row in range(n):
        mask = fields["attention_mask"][row].bool()
        ids = fields["input_ids"][row][mask]
        prompt_len = int(mask[: fields["prompts"].shape[1]].sum())
        logits = model(input_ids=ids[None], position_ids=torch.arange(len(ids))[None]).logits[0]
        part = logits[prompt_len - 1 : len(ids) - 1]
        out.append(torch.cat([part, part.new_zeros(response_len - len(part), part.shape[-1])]))
    return torch.stack(out)
