//! Runs: chunks asked for together whose compressed bytes are neighbours in the blob (gaps
//! up to [`MERGE_GAP_BYTES`]) are fetched with one Range request of at most
//! [`MAX_MERGE_BYTES`].

use crate::model::Chunk;

/// Largest merged Range request: big enough to fill a thin link's bandwidth-delay product,
/// small enough that a read never waits long for bytes it did not ask for.
pub const MAX_MERGE_BYTES: u64 = 4 << 20;
/// A gap this small between two chunks' bytes is read through rather than costing a request.
pub const MERGE_GAP_BYTES: u64 = 16 << 10;

/// Group chunks (in blob order) into runs that one Range request can fetch.
pub(super) fn merge_runs<T>(chunks: Vec<(Chunk, T)>) -> Vec<Vec<(Chunk, T)>> {
    let mut runs: Vec<Vec<(Chunk, T)>> = Vec::new();
    // The end of the last run's bytes (chunks of a gzip index overlap: the furthest end).
    let mut end = 0u64;
    for (chunk, t) in chunks {
        let chunk_end = chunk.blob_offset + chunk.blob_len;
        let joins = runs.last().is_some_and(|run| {
            let first = run[0].0.blob_offset;
            let last = run[run.len() - 1].0.blob_offset;
            // A chunk of the same checkpoint always joins: its bytes are those of the run.
            chunk.blob_offset == last
                || (chunk.blob_offset > last
                    && chunk.blob_offset <= end + MERGE_GAP_BYTES
                    && chunk_end.max(end) - first <= MAX_MERGE_BYTES)
        });
        if joins {
            runs.last_mut().expect("checked").push((chunk, t));
            end = end.max(chunk_end);
        } else {
            runs.push(vec![(chunk, t)]);
            end = chunk_end;
        }
    }
    runs
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::model::ChunkKind;

    /// A data chunk at these blob bytes (for the fetcher's tests too).
    pub(in crate::fetch) fn chunk(blob_offset: u64, blob_len: u64) -> (Chunk, ()) {
        let c = Chunk {
            file_offset: 0,
            len: 1,
            blob_offset,
            blob_len,
            inner_offset: 0,
            digest: [0; 32],
            kind: ChunkKind::Data,
        };
        (c, ())
    }

    #[test]
    fn runs_merge_neighbours_only() {
        let spans = |runs: Vec<Vec<(Chunk, ())>>| {
            runs.iter()
                .map(|r| r.iter().map(|(c, _)| c.blob_offset).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        // Touching, a small gap, a large gap, then out of order.
        let input = vec![
            chunk(0, 100),
            chunk(100, 100),
            chunk(200 + MERGE_GAP_BYTES, 10),
            chunk(1 << 30, 10),
            chunk(50, 10),
        ];
        assert_eq!(
            spans(merge_runs(input)),
            vec![vec![0, 100, 200 + MERGE_GAP_BYTES], vec![1 << 30], vec![50]]
        );
        // Overlapping chunks (a gzip index's, sharing checkpoints) join one request.
        let ends = |runs: Vec<Vec<(Chunk, ())>>| runs.iter().map(|r| r.len()).collect::<Vec<_>>();
        let overlapping = vec![chunk(0, 100), chunk(0, 300), chunk(50, 100), chunk(300, 10)];
        assert_eq!(ends(merge_runs(overlapping)), vec![4]);
        // Chunks of one checkpoint join however long their ranges: their bytes are the same.
        let long = MAX_MERGE_BYTES + 10;
        assert_eq!(
            ends(merge_runs(vec![chunk(0, long), chunk(0, long + 1), chunk(0, 5)])),
            vec![3]
        );
        // The size cap splits a long run.
        let input = (0..6).map(|i| chunk(i * (1 << 20), 1 << 20)).collect();
        assert_eq!(
            spans(merge_runs(input)).iter().map(Vec::len).collect::<Vec<_>>(),
            vec![4, 2]
        );
    }
}
