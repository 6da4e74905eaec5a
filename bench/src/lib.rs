//! Benchmarks for deployctl live in `src/bin/`; each prints figures.
#![forbid(unsafe_code)]
