//! Incremental framing of query output into messages and [`Target`]s.
//!
//! Bytes are read from the pipe in large chunks and every message is sliced out of its
//! chunk without copying, so a message can be handed to another thread and decoded there.

use std::collections::VecDeque;
use std::io::Read;

use bytes::{Buf, Bytes};
use prost::Message;

use crate::proto::{ConfiguredTarget, CqueryResult, Target};
use crate::QueryDecodeError;

/// How the targets are laid out in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `query --output=streamed_proto`: varint length, then a `Target`, repeated.
    StreamedTargets,
    /// `query --output=proto`: one `QueryResult` (field 1 = `Target`, repeated).
    QueryResult,
    /// `cquery --output=streamed_proto`: varint length, then a `CqueryResult`, repeated.
    StreamedCqueryResults,
    /// `cquery --output=proto`: one `CqueryResult` (field 1 = `ConfiguredTarget`, repeated).
    CqueryResult,
}

impl Framing {
    /// Whether every message is one `Target` (see [`decode_target`]).
    pub fn messages_are_targets(self) -> bool {
        matches!(self, Framing::StreamedTargets | Framing::QueryResult)
    }
}

/// Larger messages are corrupt framing, not targets.
const MAX_MESSAGE: u64 = 1 << 31;
/// Bytes read from the pipe at a time; messages are slices of these chunks.
const CHUNK: usize = 1 << 20;
/// The longest varint.
const MAX_VARINT: usize = 10;
const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

/// Splits query output into its top-level messages (one `Target`, `ConfiguredTarget` or
/// `CqueryResult` each, depending on the framing) as bytes arrive.
pub struct FrameReader<R> {
    reader: R,
    framing: Framing,
    /// Bytes read and not yet returned.
    buf: Bytes,
    eof: bool,
    messages: u64,
}

impl<R: Read> FrameReader<R> {
    pub fn new(reader: R, framing: Framing) -> Self {
        FrameReader {
            reader,
            framing,
            buf: Bytes::new(),
            eof: false,
            messages: 0,
        }
    }

    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Index of the next message (the number returned so far).
    pub fn index(&self) -> u64 {
        self.messages
    }

    /// Makes at least `want` bytes available unless the stream ends first.
    fn fill(&mut self, want: usize) -> Result<(), QueryDecodeError> {
        if self.buf.len() >= want || self.eof {
            return Ok(());
        }
        // The unread tail (a partial message) moves to the front of a fresh chunk; the old
        // chunk lives on only as long as the messages sliced from it.
        let mut next = Vec::with_capacity(want.max(CHUNK));
        next.extend_from_slice(&self.buf);
        let room = (next.capacity() - next.len()) as u64;
        // `take` + `read_to_end` fills the spare capacity without zeroing it first, and
        // stops early only at the end of the stream.
        (&mut self.reader).take(room).read_to_end(&mut next)?;
        self.eof = next.len() < next.capacity();
        self.buf = Bytes::from(next);
        Ok(())
    }

    fn framing_error(&self, what: &'static str) -> QueryDecodeError {
        QueryDecodeError::Framing {
            index: self.messages,
            what,
        }
    }

    /// Reads a varint; `Ok(None)` on a clean end of stream before its first byte.
    fn varint(&mut self) -> Result<Option<u64>, QueryDecodeError> {
        self.fill(MAX_VARINT)?;
        if self.buf.is_empty() {
            return Ok(None);
        }
        let mut value = 0u64;
        for (i, &byte) in self.buf.iter().take(MAX_VARINT).enumerate() {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                self.buf.advance(i + 1);
                return Ok(Some(value));
            }
        }
        Err(self.framing_error(if self.buf.len() < MAX_VARINT {
            "stream ends inside a varint"
        } else {
            "varint longer than 10 bytes"
        }))
    }

    fn bytes(&mut self, len: u64) -> Result<Bytes, QueryDecodeError> {
        if len > MAX_MESSAGE {
            return Err(self.framing_error("message longer than 2 GiB"));
        }
        let len = len as usize;
        self.fill(len)?;
        if self.buf.len() < len {
            return Err(QueryDecodeError::Truncated {
                index: self.messages,
                declared: len as u64,
                available: self.buf.len() as u64,
            });
        }
        Ok(self.buf.split_to(len))
    }

    fn field_len(&mut self) -> Result<u64, QueryDecodeError> {
        self.varint()?
            .ok_or_else(|| self.framing_error("stream ends inside a field"))
    }

    fn skip(&mut self, wire_type: u64) -> Result<(), QueryDecodeError> {
        let len = match wire_type {
            WIRE_VARINT => return self.varint().map(|_| ()),
            WIRE_FIXED64 => 8,
            WIRE_FIXED32 => 4,
            WIRE_LEN => self.field_len()?,
            _ => return Err(self.framing_error("unsupported wire type")),
        };
        self.bytes(len).map(|_| ())
    }

    /// Reads the next field-1 length-delimited field of a top-level message, skipping others.
    fn next_field_one(&mut self) -> Result<Option<Bytes>, QueryDecodeError> {
        loop {
            let Some(key) = self.varint()? else {
                return Ok(None);
            };
            let (field, wire_type) = (key >> 3, key & 7);
            if field == 1 && wire_type == WIRE_LEN {
                let len = self.field_len()?;
                return self.bytes(len).map(Some);
            }
            self.skip(wire_type)?;
        }
    }

    /// The next message; `Ok(None)` at the end of the output.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, QueryDecodeError> {
        let message = match self.framing {
            Framing::StreamedTargets | Framing::StreamedCqueryResults => match self.varint()? {
                None => None,
                Some(len) => Some(self.bytes(len)?),
            },
            Framing::QueryResult | Framing::CqueryResult => self.next_field_one()?,
        };
        if message.is_some() {
            self.messages += 1;
        }
        Ok(message)
    }
}

/// Decodes one message of a framing whose messages are targets (see
/// [`Framing::messages_are_targets`]); `index` is its position, for errors.
pub fn decode_target(message: Bytes, index: u64) -> Result<Target, QueryDecodeError> {
    decode(message, index)
}

fn decode<M: Message + Default>(message: Bytes, index: u64) -> Result<M, QueryDecodeError> {
    M::decode(message).map_err(|source| QueryDecodeError::Decode { index, source })
}

/// Iterator over the targets of a query output, decoding as bytes arrive.
pub struct TargetStream<R> {
    frames: FrameReader<R>,
    pending: VecDeque<Target>,
    done: bool,
}

impl<R: Read> TargetStream<R> {
    pub fn new(reader: R, framing: Framing) -> Self {
        Self::from_frames(FrameReader::new(reader, framing))
    }

    /// Decodes the messages `frames` has not returned yet.
    pub fn from_frames(frames: FrameReader<R>) -> Self {
        TargetStream {
            frames,
            pending: VecDeque::new(),
            done: false,
        }
    }

    fn fill(&mut self) -> Result<(), QueryDecodeError> {
        while self.pending.is_empty() && !self.done {
            let index = self.frames.index();
            let Some(message) = self.frames.next_message()? else {
                self.done = true;
                break;
            };
            match self.frames.framing() {
                Framing::StreamedTargets | Framing::QueryResult => {
                    self.pending.push_back(decode_target(message, index)?);
                }
                Framing::CqueryResult => {
                    let configured: ConfiguredTarget = decode(message, index)?;
                    self.pending.extend(configured.target);
                }
                Framing::StreamedCqueryResults => {
                    let result: CqueryResult = decode(message, index)?;
                    self.pending
                        .extend(result.results.into_iter().filter_map(|c| c.target));
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for TargetStream<R> {
    type Item = Result<Target, QueryDecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Err(e) = self.fill() {
            self.done = true;
            self.pending.clear();
            return Some(Err(e));
        }
        self.pending.pop_front().map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{discriminator, GeneratedFile, Rule, SourceFile};

    fn rule(name: &str) -> Target {
        Target {
            r#type: discriminator::RULE,
            rule: Some(Rule {
                name: name.into(),
                rule_class: "genrule".into(),
                attribute: vec![Bytes::from_static(b"\x0a\x04name")],
                rule_input: vec!["//a:b".into()],
                instantiation_stack: vec!["a/BUILD:1:1: <toplevel>".into()],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn sample() -> Vec<Target> {
        vec![
            rule("//a:r"),
            Target {
                r#type: discriminator::SOURCE_FILE,
                source_file: Some(SourceFile {
                    name: "//a:b".into(),
                    subinclude: vec![],
                }),
                ..Default::default()
            },
            Target {
                r#type: discriminator::GENERATED_FILE,
                generated_file: Some(GeneratedFile {
                    name: "//a:out".into(),
                    generating_rule: "//a:r".into(),
                }),
                ..Default::default()
            },
        ]
    }

    fn collect(bytes: &[u8], framing: Framing) -> Result<Vec<Target>, QueryDecodeError> {
        TargetStream::new(bytes, framing).collect()
    }

    #[test]
    fn streamed_targets_round_trip() {
        let mut buf = Vec::new();
        for t in sample() {
            t.encode_length_delimited(&mut buf).unwrap();
        }
        assert_eq!(collect(&buf, Framing::StreamedTargets).unwrap(), sample());
    }

    #[test]
    fn query_result_framing_skips_unknown_fields() {
        let mut buf = Vec::new();
        for t in sample() {
            prost::encoding::message::encode(1, &t, &mut buf);
            // An unknown varint field between targets must be skipped.
            prost::encoding::int32::encode(7, &5, &mut buf);
        }
        assert_eq!(collect(&buf, Framing::QueryResult).unwrap(), sample());
    }

    #[test]
    fn cquery_results_both_framings() {
        let mut result = Vec::new();
        for t in sample() {
            let ct = ConfiguredTarget { target: Some(t) };
            prost::encoding::message::encode(1, &ct, &mut result);
        }
        assert_eq!(collect(&result, Framing::CqueryResult).unwrap(), sample());
        let mut streamed = Vec::new();
        prost::encoding::encode_varint(result.len() as u64, &mut streamed);
        streamed.extend_from_slice(&result);
        streamed.extend_from_slice(&streamed.clone());
        let twice: Vec<_> = sample().into_iter().chain(sample()).collect();
        assert_eq!(
            collect(&streamed, Framing::StreamedCqueryResults).unwrap(),
            twice
        );
    }

    #[test]
    fn attributes_keep_raw_bytes() {
        let mut buf = Vec::new();
        rule("//a:r").encode_length_delimited(&mut buf).unwrap();
        let got = collect(&buf, Framing::StreamedTargets).unwrap();
        let attr = &got[0].rule.as_ref().unwrap().attribute[0];
        assert_eq!(&attr[..], b"\x0a\x04name");
    }

    #[test]
    fn truncated_stream_is_an_error_not_a_short_result() {
        let mut buf = Vec::new();
        for t in sample() {
            t.encode_length_delimited(&mut buf).unwrap();
        }
        buf.truncate(buf.len() - 3);
        let err = collect(&buf, Framing::StreamedTargets).unwrap_err();
        assert!(
            matches!(err, QueryDecodeError::Truncated { index: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let buf = [3u8, 0xff, 0xff, 0xff];
        assert!(collect(&buf, Framing::StreamedTargets).is_err());
    }

    /// Hands out at most 7 bytes per read, as a pipe may.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(7).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn messages_across_read_chunks_are_whole() {
        // Well over two chunks, so messages straddle chunk boundaries; one message is
        // larger than a chunk.
        let mut targets: Vec<Target> = (0..40_000).map(|i| rule(&format!("//p:r{i}"))).collect();
        targets.insert(20_000, rule(&"x".repeat(CHUNK + 3)));
        let mut buf = Vec::new();
        for t in &targets {
            t.encode_length_delimited(&mut buf).unwrap();
        }
        assert!(buf.len() > 2 * CHUNK);
        let got: Vec<Target> = TargetStream::new(Trickle(&buf), Framing::StreamedTargets)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, targets);
        let mut frames = FrameReader::new(Trickle(&buf), Framing::StreamedTargets);
        let mut count = 0;
        while let Some(message) = frames.next_message().unwrap() {
            assert_eq!(
                decode_target(message, count).unwrap(),
                targets[count as usize]
            );
            count += 1;
        }
        assert_eq!(frames.index(), targets.len() as u64);
    }

    #[test]
    fn empty_output_has_no_targets() {
        assert!(collect(&[], Framing::StreamedTargets).unwrap().is_empty());
    }
}
