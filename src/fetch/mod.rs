//! Fetching: getting a layer's bytes from the registry into the local cache, verified.
//!
//! ```text
//! fetch/
//!   fetcher.rs  Fetcher: one flight per chunk, merged Range requests, deadlines, counters
//!   health.rs   layers the registry refuses for good; a registry away: reads fail fast
//!   locate.rs   a layer's TOC over the network: annotations first, else one footer probe
//!   plain.rs    a plain tar layer streamed once: each file's bytes into the chunk store
//!   prefetch.rs chunks fetched before they are read, behind demand reads; used / wasted
//!   runs.rs     neighbouring chunks merged into one Range request
//!   shared.rs   machine-wide chunk locks: daemons sharing a cache fetch a chunk once
//!   store.rs    a chunk whose bytes arrived: decoded, verified, stored (bounded threads)
//!   stats.rs    counters: per layer, chunk waits, prefetch (`lamina stats`)
//!   verify.rs   fetch and check every chunk of a layer (`inspect --verify`)
//! ```

pub mod deflate;
pub mod fallback;
pub mod fetcher;
pub mod gzindex;
pub mod health;
pub mod locate;
pub mod plain;
pub mod prefetch;
pub mod runs;
pub mod shared;
pub mod stats;
pub mod store;
pub mod verify;

pub use fetcher::*;
pub use runs::{MAX_MERGE_BYTES, MERGE_GAP_BYTES};
pub use stats::*;
pub use store::store_slots;
