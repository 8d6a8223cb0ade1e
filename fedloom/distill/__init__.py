"""Federated distillation and augmentation (Jeong et al. 2018, arXiv 1811.11479).

* :mod:`fedloom.distill.fd`: FD (Algorithm 1) -- per-label logit averages, teachers, the ``fd`` algorithm with
  per-device (heterogeneous) models;
* :mod:`fedloom.distill.faug`: FAug -- target labels, seeds with redundant labels, privacy leakage, augmentation;
* :mod:`fedloom.distill.cgan`: the server's small conditional GAN;
* :mod:`fedloom.distill.partition`: Table 1's non-IID split (partitioner ``target_labels``).
"""

from fedloom.distill import fd, partition  # noqa: F401  (registration: algorithm fd, partitioner target_labels)
from fedloom.distill.cgan import CGANParams, Generator, train_cgan
from fedloom.distill.faug import FAugParams, FAugReport, privacy_leakage, run_faug
from fedloom.distill.fd import (
           FederatedDistillation,
           LogitAccumulator,
           fd_loss,
           teacher_for,
           teachers,
)

__all__ = ["CGANParams", "FAugParams", "FAugReport", "FederatedDistillation", "Generator", "LogitAccumulator",
           "fd_loss", "privacy_leakage", "run_faug", "teacher_for", "teachers", "train_cgan"]
