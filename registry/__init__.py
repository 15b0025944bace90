"""What the mesh agrees on and ships: the manifest (``functions.yaml``) and its checks,
signed function bundles (build, sign, verify, store, unpack, fetch from a peer), the Redis key
schema, the desired state, membership, the mesh's request signatures and the embedded Redis
server. Imports nothing from :mod:`gateway`."""
