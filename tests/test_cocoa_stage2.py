"""Which hidden states CoCoA's stage-2 loss depends on: gradient and noise probes on a tiny random-init
Qwen2-VL, for the default `bridge: final` (the decoder reads the final-layer <EOS> state, the embedding
stage 3 and inference pool) and for `bridge: layerwise` (one pass; <EOS>'s keys and values at every layer)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from embedkit.cocoa.config import CocoaConfig
from embedkit.cocoa.masks import build_attention_mask
from embedkit.cocoa.objectives import bridge_loss, stage2_inputs
from embedkit.cocoa.trainer import CocoaTrainer
from embedkit.fidelity.probe import EosCompressor
from embedkit.multimodal.loading import unwrap
from embedkit.multimodal.sequence import MultimodalInput, Segment
from embedkit.multimodal.tiny import cached_tiny_vlm
from tests.test_cocoa_training import image, make_config
from tests.test_index_integrity import embedkit

torch.set_num_threads(2)
ITEMS = [MultimodalInput(text="Alice hit Bob"), MultimodalInput(text="a red square", image=image("red")),
         MultimodalInput(text="the white strawberry")]


def _probe(bridge: str, tmp_path, *, noise_on: str | None = None):
    """Stage-2 loss of ITEMS, the gradient it sends to <EOS>'s final-layer output and to <EOS>'s layer-0
    input (first pass), and optionally with noise of scale 10 added to one of them."""
    config = make_config(cached_tiny_vlm("qwen2-vl"), tmp_path / bridge, stage2={"bridge": bridge})
    trainer = CocoaTrainer(config)
    content, targets = stage2_inputs(ITEMS, config.stage2)
    batch = trainer._encode(content, targets=targets, image_target_slots=True)
    eos = batch.segments == int(Segment.EOS)
    language = unwrap(trainer.vlm.model).model.language_model
    captured: dict[str, list[torch.Tensor]] = {"final": [], "layer0": []}
    generator = torch.Generator().manual_seed(0)

    def touch(kind: str, tensor: torch.Tensor) -> torch.Tensor:
        if not captured[kind] and tensor.requires_grad:  # the first (encoding) pass only
            if noise_on == kind:
                noise = torch.zeros_like(tensor)
                noise[eos] = 10 * torch.randn(noise[eos].shape, generator=generator)
                tensor = tensor + noise
            tensor.retain_grad()
            captured[kind].append(tensor)
        return tensor

    hooks = [language.norm.register_forward_hook(lambda m, a, out: touch("final", out)),
             language.layers[0].register_forward_pre_hook(
                 lambda m, args, kwargs: ((touch("layer0", kwargs.pop("hidden_states", None) if "hidden_states"
                                                 in kwargs else args[0]),) + tuple(args[1:]), kwargs),
                 with_kwargs=True)]
    try:
        loss = bridge_loss(trainer.vlm.model, trainer.heads, batch, config.stage2, trainer.merge_size).total
        loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
    final_grad = captured["final"][0].grad[eos].abs().max().item()
    layer0_grad = captured["layer0"][0].grad[eos].abs().max().item()
    return float(loss.detach()), final_grad, layer0_grad


def test_default_stage2_trains_the_final_layer_eos_embedding(tmp_path):
    assert CocoaConfig.model_validate({"model": {"name_or_path": "m"}}).stage2.bridge == "final"
    loss, final_grad, layer0_grad = _probe("final", tmp_path)
    assert final_grad > 0 and layer0_grad > 0
    noisy, _, _ = _probe("final", tmp_path, noise_on="final")
    assert abs(noisy - loss) > 1e-3


def test_layerwise_stage2_leaves_the_final_layer_eos_out(tmp_path):
    loss, final_grad, layer0_grad = _probe("layerwise", tmp_path)
    assert final_grad == 0.0 and layer0_grad > 0
    noisy_final, _, _ = _probe("layerwise", tmp_path, noise_on="final")
    assert noisy_final == pytest.approx(loss, abs=1e-6)
    noisy_input, _, _ = _probe("layerwise", tmp_path, noise_on="layer0")
    assert abs(noisy_input - loss) > 1e-3


def test_readout_mask_lets_the_decoder_read_only_eos():
    # content(3) <EOS> <DEC> target(2)
    segments = torch.tensor([[int(Segment.TEXT)] * 3 + [int(Segment.EOS), int(Segment.DECODER_START)]
                             + [int(Segment.TARGET)] * 2])
    allowed = build_attention_mask(segments, "eos_readout")[0]
    assert allowed[3].nonzero().flatten().tolist() == [3]  # <EOS> sees only itself: its input is the embedding
    assert allowed[0].nonzero().flatten().tolist() == [0]
    assert allowed[6].nonzero().flatten().tolist() == [3, 4, 5, 6]


@pytest.mark.slow
@pytest.mark.parametrize("bridge", ["final", "layerwise"])
def test_pretrain_command_records_the_bridge_and_the_probe_decodes_the_same_way(bridge, tmp_path):
    (tmp_path / "pre.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                                for t in ("Alice hit Bob", "a red square", "Berlin is in Germany")))
    config = {"model": {"name_or_path": str(cached_tiny_vlm("qwen2-vl")), "max_length": 32},
              "data": {"pretrain": str(tmp_path / "pre.jsonl")},
              "stage1": {"steps": 1}, "stage2": {"steps": 2, "bridge": bridge},
              "optim": {"batch_size": 3}, "run": {"output_dir": str(tmp_path / "run"), "device": "cpu"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = embedkit("cocoa", "pretrain", "--config", str(tmp_path / "c.yaml"))
    assert result.returncode == 0, result.stderr
    model = tmp_path / "run" / "pretrain" / "model"
    assert json.loads((model / "embedkit_embedder.json").read_text())["stage2_bridge"] == bridge
    assert EosCompressor.from_path(str(model), device="cpu").bridge == bridge
