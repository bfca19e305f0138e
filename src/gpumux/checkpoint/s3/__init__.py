"""S3 transport for checkpoint images: signed manifests, transfer progress, the store.

Owns: bytes in the bucket. Does not: choose images (the catalog does).
"""
