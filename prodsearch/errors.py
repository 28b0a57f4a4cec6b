"""Domain errors: each message says what is wrong and what to do. The CLI prints them as 'Error: ...'."""


class ProdsearchError(Exception):
    """Base class of errors a user can fix; anything else is a bug."""


class CatalogError(ProdsearchError):
    """The catalog or query set given is missing, empty or in a format prodsearch does not read."""


class IndexDirError(ProdsearchError):
    """The index folder is missing, not an index, or damaged."""


class ReadOnlyIndexError(IndexDirError):
    """A write to an index folder this process cannot write (a read-only volume, another user's files)."""

    def __init__(self, index_dir: object, detail: str):
        super().__init__(f"the index {index_dir} is read-only ({detail}); writing needs a writable copy: "
                         "copy the folder to a place you can write and write there")


class ModelMismatchError(ProdsearchError):
    """The index was built with another model than the one that would embed the queries."""


class UnknownModelError(ProdsearchError, ValueError):
    """A model name prodsearch does not know."""


class DeviceError(ProdsearchError, ValueError):
    """A device that is not available on this machine."""


class IndexTypeError(ProdsearchError, ValueError):
    """A vector index type FAISS cannot build, or cannot train on the vectors at hand."""


class CategoryError(ProdsearchError):
    """A category asked for holds no products in the index."""


class VectorStoreError(ProdsearchError):
    """The vector store (a Milvus server or Milvus Lite folder) cannot be reached or refused a request."""


class VectorStoreHeldError(VectorStoreError):
    """Another process has the index's Milvus Lite folder open (Milvus Lite serves one process at a
    time); ``holder`` says which, e.g. ``a running server (pid 812: prodsearch serve --index shop/idx)``."""

    def __init__(self, index_dir: object, holder: str, server: bool):
        self.holder = holder
        advice = ("stop that server, or search and write through its HTTP API" if server
                  else "wait for it to finish or stop it")
        super().__init__(f"the index {index_dir} is held by {holder}: Milvus Lite lets one process at a time open "
                         f"its vectors; {advice}, or keep the vectors on a Milvus server (index --milvus-uri "
                         "http://HOST:19530) to use them from several processes")
