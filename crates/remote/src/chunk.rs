//! Splitting files into chunks, naming chunks by digest, and the compressed form they are
//! stored in. Why two chunkers: see the crate docs.

use std::io::{self, Read};

use serde::{Deserialize, Serialize};

/// Memory and disk images are made of these.
const PAGE: u64 = 4096;
/// Files at least this big whose size is whole pages are chunked on a fixed grid.
const FIXED_MIN_FILE: u64 = 64 << 20;
/// zstd level of stored chunks: level 3 compresses memory images about as well as level 9
/// here at several times the speed, and uploads are CPU-bound on small CI hosts.
const ZSTD_LEVEL: i32 = 3;

/// How a file is cut into chunks (recorded per file in the manifest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Chunking {
    /// Chunks of `size` bytes (the last one shorter).
    Fixed { size: u32 },
    /// FastCDC (2020) with these minimum, average and maximum sizes.
    Cdc { min: u32, avg: u32, max: u32 },
}

impl Chunking {
    /// The grid of memory and disk images.
    pub const FIXED: Chunking = Chunking::Fixed { size: 256 << 10 };
    /// Content-defined chunks for everything else.
    pub const CDC: Chunking = Chunking::Cdc {
        min: 16 << 10,
        avg: 64 << 10,
        max: 256 << 10,
    };

    /// The chunking of a file of `size` bytes: fixed for page-sized images, CDC otherwise.
    pub fn for_file(size: u64) -> Chunking {
        if size >= FIXED_MIN_FILE && size % PAGE == 0 {
            Chunking::FIXED
        } else {
            Chunking::CDC
        }
    }

    /// The largest chunk this chunking produces.
    pub fn max_chunk(&self) -> usize {
        match *self {
            Chunking::Fixed { size } => size as usize,
            Chunking::Cdc { max, .. } => max as usize,
        }
    }
}

/// One chunk of a file: where it starts and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkSpan {
    pub offset: u64,
    pub data: Vec<u8>,
}

/// Splits what `reader` yields into chunks, streaming (at most one chunk in memory at a time
/// for fixed chunking, one maximum-size buffer for CDC). An empty input has no chunks.
pub fn split<R: Read + Send + 'static>(
    reader: R,
    chunking: Chunking,
) -> Box<dyn Iterator<Item = io::Result<ChunkSpan>> + Send> {
    match chunking {
        Chunking::Fixed { size } => Box::new(FixedChunks {
            reader,
            size: size as usize,
            offset: 0,
            done: false,
        }),
        Chunking::Cdc { min, avg, max } => Box::new(
            fastcdc::v2020::StreamCDC::new(reader, min, avg, max).map(|chunk| match chunk {
                Ok(c) => Ok(ChunkSpan {
                    offset: c.offset,
                    data: c.data,
                }),
                Err(fastcdc::v2020::Error::IoError(e)) => Err(e),
                Err(e) => Err(io::Error::other(e.to_string())),
            }),
        ),
    }
}

struct FixedChunks<R> {
    reader: R,
    size: usize,
    offset: u64,
    done: bool,
}

impl<R: Read> Iterator for FixedChunks<R> {
    type Item = io::Result<ChunkSpan>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut data = Vec::with_capacity(self.size);
        match (&mut self.reader)
            .take(self.size as u64)
            .read_to_end(&mut data)
        {
            Ok(n) if n < self.size => self.done = true,
            Ok(_) => {}
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        }
        if data.is_empty() {
            return None;
        }
        let offset = self.offset;
        self.offset += data.len() as u64;
        Some(Ok(ChunkSpan { offset, data }))
    }
}

/// The name of a chunk: lowercase hex BLAKE3 of its (uncompressed) bytes.
pub fn chunk_digest(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// The stored form of a chunk.
pub(crate) fn compress(data: &[u8]) -> std::io::Result<Vec<u8>> {
    zstd::bulk::compress(data, ZSTD_LEVEL)
}

/// Decompresses a stored chunk and checks it is `digest` of `size` bytes; the reason
/// otherwise.
pub(crate) fn decompress_verified(
    stored: &[u8],
    digest: &str,
    size: u64,
) -> Result<Vec<u8>, String> {
    let capacity = usize::try_from(size).map_err(|_| format!("{size} bytes is too large"))?;
    let data = zstd::bulk::decompress(stored, capacity)
        .map_err(|e| format!("not a zstd frame of at most {size} bytes: {e}"))?;
    check(&data, digest, size)?;
    Ok(data)
}

/// Checks uncompressed chunk bytes against the manifest.
pub(crate) fn check(data: &[u8], digest: &str, size: u64) -> Result<(), String> {
    if data.len() as u64 != size {
        return Err(format!("{} bytes, expected {size}", data.len()));
    }
    let actual = chunk_digest(data);
    if actual != digest {
        return Err(format!("content hashes to {actual}"));
    }
    Ok(())
}

/// Whether `s` can name a chunk (64 lowercase hex digits), so it is safe in a path.
pub(crate) fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn chunks(data: &[u8], chunking: Chunking) -> Vec<ChunkSpan> {
        split(io::Cursor::new(data.to_vec()), chunking)
            .collect::<io::Result<_>>()
            .expect("in-memory reads do not fail")
    }

    #[test]
    fn fixed_chunks_tile_the_file() {
        let data = pseudo_random(10_000, 1);
        let got = chunks(&data, Chunking::Fixed { size: 4096 });
        assert_eq!(
            got.iter()
                .map(|c| (c.offset, c.data.len()))
                .collect::<Vec<_>>(),
            [(0, 4096), (4096, 4096), (8192, 1808)]
        );
        assert_eq!(got.concat_data(), data);
        assert!(chunks(&[], Chunking::FIXED).is_empty());
        let exact = chunks(&data[..8192], Chunking::Fixed { size: 4096 });
        assert_eq!(exact.len(), 2);
    }

    #[test]
    fn cdc_resynchronizes_after_an_insertion() {
        let data = pseudo_random(2 << 20, 7);
        let mut edited = data[..1_000_000].to_vec();
        edited.extend_from_slice(b"a few inserted bytes");
        edited.extend_from_slice(&data[1_000_000..]);
        let before: std::collections::HashSet<String> = chunks(&data, Chunking::CDC)
            .iter()
            .map(|c| chunk_digest(&c.data))
            .collect();
        let after = chunks(&edited, Chunking::CDC);
        assert_eq!(after.concat_data(), edited);
        let new = after
            .iter()
            .filter(|c| !before.contains(&chunk_digest(&c.data)))
            .count();
        assert!(
            new <= 2,
            "{new} of {} chunks changed after one insertion",
            after.len()
        );
        // A fixed grid loses everything after the insertion point.
        let fixed_before: std::collections::HashSet<String> =
            chunks(&data, Chunking::Fixed { size: 65536 })
                .iter()
                .map(|c| chunk_digest(&c.data))
                .collect();
        let fixed_new = chunks(&edited, Chunking::Fixed { size: 65536 })
            .iter()
            .filter(|c| !fixed_before.contains(&chunk_digest(&c.data)))
            .count();
        assert!(fixed_new > 10, "{fixed_new}");
    }

    #[test]
    fn images_get_the_fixed_grid() {
        assert_eq!(Chunking::for_file(1 << 30), Chunking::FIXED);
        assert_eq!(Chunking::for_file((1 << 30) + 1), Chunking::CDC);
        assert_eq!(Chunking::for_file(4096 * 10), Chunking::CDC);
    }

    #[test]
    fn stored_form_round_trips_and_is_verified() {
        let data = pseudo_random(100_000, 3);
        let digest = chunk_digest(&data);
        let stored = compress(&data).expect("compress");
        assert_eq!(
            decompress_verified(&stored, &digest, data.len() as u64).as_deref(),
            Ok(&data[..])
        );
        let other = chunk_digest(b"other");
        assert!(decompress_verified(&stored, &other, data.len() as u64)
            .expect_err("wrong digest")
            .contains("hashes to"));
        assert!(decompress_verified(&stored, &digest, 10).is_err());
        assert!(decompress_verified(b"garbage", &digest, 10).is_err());
        let mut flipped = stored.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(decompress_verified(&flipped, &digest, data.len() as u64).is_err());
        assert!(is_digest(&digest));
        assert!(!is_digest("../x"));
    }

    trait Concat {
        fn concat_data(&self) -> Vec<u8>;
    }

    impl Concat for Vec<ChunkSpan> {
        fn concat_data(&self) -> Vec<u8> {
            self.iter().flat_map(|c| c.data.clone()).collect()
        }
    }
}
