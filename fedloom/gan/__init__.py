"""A small conditional GAN (an MLP AC-GAN) that the server trains for FAug (:mod:`fedloom.algorithms.faug`)."""

from fedloom.gan.cgan import CGANParams, Generator, train_cgan

__all__ = ["CGANParams", "Generator", "train_cgan"]
