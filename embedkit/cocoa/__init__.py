"""CoCoA: collaborative-attention EOS-reconstruction pre-training, then contrastive training (docs/cocoa.md)."""

from embedkit.cocoa.config import CocoaConfig
from embedkit.cocoa.data import ContrastivePair, read_contrastive_pairs, read_pretrain_records
from embedkit.cocoa.masks import build_attention_mask
from embedkit.cocoa.trainer import CocoaTrainer

__all__ = ["CocoaConfig", "CocoaTrainer", "ContrastivePair", "build_attention_mask", "read_contrastive_pairs",
           "read_pretrain_records"]
