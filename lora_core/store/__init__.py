"""Storage: the artifacts folder and its writer lock (artifacts), atomic file I/O (fileio), default paths."""
