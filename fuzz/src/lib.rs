//! Fuzz targets live in `tests/`; see `fuzz/README.md`.
