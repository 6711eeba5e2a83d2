"""infmask: the staged pipeline (download -> preprocess -> pretrain -> probe -> report) around InfMasking."""
__version__ = "0.1.0"
