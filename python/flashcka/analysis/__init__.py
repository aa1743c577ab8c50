"""The studies layer similarity is used for, one call each, on top of flashcka's all-pairs
machinery (functions on tensors and ``CKAResult``s):

* ViT vs CNN (Raghu et al. 2021): ``uniformity``, ``similarity_by_distance``,
  ``best_match``, ``vit_cnn_summary``.
* Processing trajectories (Mahaut & Baroni 2026): ``trajectory``, ``image_statistics``,
  ``ImageStatistics``; information imbalance (Glielmo et al. 2022):
  ``information_imbalance``.
* Cross-dataset consistency (Ciernik et al. 2025): ``cross_dataset_consistency``.
* Concept-based alignment (Vielhaben et al. 2025): ``fuzzy_rand_index``,
  ``concept_pair_disagreement``.
* Layer-wise neuron labels (Dorszewski et al. 2025; soft-WPMI of CLIP-Dissect):
  ``label_neurons``, ``NeuronLabeler``.
"""
from ._common import relative_depth
from .concepts import concept_pair_disagreement, fuzzy_rand_index
from .consistency import cross_dataset_consistency
from .imbalance import information_imbalance
from .neurons import NeuronLabeler, label_neurons
from .trajectory import ImageStatistics, image_statistics, trajectory
from .vit_cnn import best_match, similarity_by_distance, uniformity, vit_cnn_summary

__all__ = ["uniformity", "similarity_by_distance", "best_match", "vit_cnn_summary",
           "relative_depth", "trajectory", "image_statistics", "ImageStatistics",
           "information_imbalance", "cross_dataset_consistency", "fuzzy_rand_index",
           "concept_pair_disagreement", "label_neurons", "NeuronLabeler"]
