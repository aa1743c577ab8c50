"""Everything that runs ``nn.Module``s: ``tiny`` (the demo's small ViT and ResNet, public as
``flashcka.models.TinyViT`` / ``TinyResNet``), ``hooks`` (hooked tensors become Gram rows),
``selection`` (which layers), ``batches`` (batches, devices, model calls), ``run`` (the run
state of ``compare``: which batches count, the checkpoint, the reduction over ranks) and
``compare``.
"""
from .tiny import Attention, BasicBlock, Block, PatchEmbed, TinyResNet, TinyViT  # noqa: F401
