"""Squid Mesh client for Python: `squidmesh.client` (Client, AsyncClient), `squidmesh.values`
(Python values to and from the protobuf JSON types), `squidmesh.cli` (the client commands of the
`squidmesh` command) and the generated code of the contract, `squidmesh.v1`."""

DEFAULT_ADDRESS = "127.0.0.1:50051"
"""Where clients look for the server, and where it listens, unless told otherwise."""
