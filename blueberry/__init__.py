"""blueberry: train MoE language models and STM scanline classifiers, sweep them, report on them."""

__version__ = "0.1.0"
