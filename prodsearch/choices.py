"""The names a user picks from: models, devices, runtimes, precisions, losses.

Kept free of heavy imports (torch, timm, faiss) so that the command line can list them in its
options and help before it loads any of those; the modules that use them re-export them.
"""

from __future__ import annotations

DEFAULT_MODEL = "tf_efficientnet_lite0"

# Supported architectures and their native resolution.
MODELS = {
    "tf_efficientnet_lite0": 224,
    "tf_efficientnet_lite1": 240,
    "tf_efficientnet_lite2": 260,
    "efficientnet_b0": 224,
    "efficientnet_b1": 240,
    "efficientnet_b2": 260,
    "efficientnet_b3": 300,
}
ALIASES = {
    **{f"lite{i}": f"tf_efficientnet_lite{i}" for i in range(3)},
    **{f"b{i}": f"efficientnet_b{i}" for i in range(4)},
}

DEVICE_CHOICES = ("auto", "cpu", "cuda")
PRECISION_CHOICES = ("auto", "fp32", "bf16", "int8")
# Where the model runs: ONNX Runtime (CPU; no torch import) or torch (CUDA, bf16, training).
RUNTIME_CHOICES = ("auto", "onnx", "torch")

CLASSIFICATION_LOSSES = ("arcface", "subcenter_arcface", "cosface", "normalized_softmax", "softmax", "none")
METRIC_LOSSES = ("multisimilarity", "triplet", "contrastive", "none")
AUGMENTATIONS = ("standard", "customer", "degrade")  # train --augment (prodsearch.retrieval.augment, .degrade)
# Global pooling of the feature map: the backbone's average, or weighted by its own activations
# (prodsearch.retrieval.pooling). "avg" is every existing index's.
POOLINGS = ("avg", "crow", "scda")
DEFAULT_POOLING = "avg"
# index --views: the photo, its centre crop and its four corner crops (prodsearch.retrieval.views).
MAX_VIEWS = 6
# index --vector-store, and a Milvus collection's defaults (prodsearch.indexer.vector_store).
VECTOR_STORES = ("faiss", "milvus")
MILVUS_LITE_FILE = "milvus.db"  # the Milvus Lite data folder inside an index folder: the default URI
MILVUS_TOKEN_ENV = "MILVUS_TOKEN"  # a server's token ("user:password" or an API key); never in the manifest
MILVUS_COLLECTION = "prodsearch_images"
# index --chunk-size: photos a new index embeds and commits together (prodsearch.indexer.chunked).
CHUNK_PHOTOS = 50_000
# calibrate: a rule that rejects more of the shop's own photos is stored only with --force (prodsearch.eval.calibrate).
MAX_KNOWN_REJECTED = 0.5
# tune --candidates, simplest first (prodsearch.eval.tune defines what each stands for): input sizes,
# views, the ensemble, int8 of the best fp32 one, then training recipes within --budget minutes.
TUNE_CANDIDATES = ("plain", "size160", "size192", "size288", "views6", "ensemble", "int8", "whole-224")
TUNE_BUDGET_MINUTES = 30.0
