"""A feature store: extract models once (safetensors shards and a JSON manifest), compare
every model with every model later, and add a model without recomputing the rest."""
from ._io import StoreError
from .store import Store
from .write import ModelJob, remove_model, write_store

__all__ = ["Store", "StoreError", "ModelJob", "write_store", "remove_model"]
