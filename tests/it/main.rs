//! lamina's integration tests: the real binary against a real registry, with images built by
//! real tools (umoci, skopeo) and by hand, checked against independent oracles.

mod auth;
mod bench;
mod container;
mod convert;
mod durability;
mod errors;
mod fetching;
mod gzindex;
mod hostile;
mod layerstore;
mod limits;
mod mirrors;
mod mount;
mod offline;
mod platform;
mod profile;
mod pull;
mod redirects;
mod restart;
mod snapshotter;
mod support;
mod tarsplit;
mod tls;
mod writable;
mod writable_semantics;
