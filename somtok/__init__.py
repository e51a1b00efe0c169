"""somtok: an image tokenizer whose codebook is a Kohonen self-organising map."""

__version__ = "0.1.0"
