"""The studies layer similarity is used for, one call each, on top of flashcka's all-pairs
machinery (functions on tensors and ``CKAResult``s):

* ViT vs CNN (Raghu et al. 2021): ``uniformity``, ``similarity_by_distance``,
  ``best_match``, ``vit_cnn_summary``.
"""
from .vit_cnn import best_match, similarity_by_distance, uniformity, vit_cnn_summary
from ._common import relative_depth

__all__ = ["uniformity", "similarity_by_distance", "best_match", "vit_cnn_summary",
           "relative_depth"]
