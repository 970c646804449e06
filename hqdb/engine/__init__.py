"""The storage engine: catalog, shadow tables, code cache, the one writer (:class:`Table`),
search and checks. It imports no apsw virtual-table API."""
