"""The embedder: timm backbone, offline ImageNet weights, preprocessing and batch embedding."""

from prodsearch.retrieval.embedder import DEFAULT_MODEL, MODELS, Embedder, EmbedderConfig
from prodsearch.retrieval.factory import create_embedder
from prodsearch.retrieval.embedding import FileEmbeddings, embed_files, embed_pil
from prodsearch.retrieval.images import ImageLoadError, load_image

__all__ = ["DEFAULT_MODEL", "MODELS", "Embedder", "EmbedderConfig", "FileEmbeddings", "ImageLoadError",
           "create_embedder", "embed_files", "embed_pil", "load_image"]
