"""The pipeline as a cluster (issue 19): Galera, sandbox hosts in network namespaces, several dispatchers."""
