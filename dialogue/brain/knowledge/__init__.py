"""The knowledge base: documents parsed by structure, chunked, stored with versions, searched hybrid."""
