//! Incremental framing of query output into [`Target`]s.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};

use bytes::Bytes;
use prost::Message;

use crate::proto::{ConfiguredTarget, Target};
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

/// Larger messages are corrupt framing, not targets.
const MAX_MESSAGE: u64 = 1 << 31;
const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

/// Iterator over the targets of a query output, decoding as bytes arrive.
pub struct TargetStream<R> {
    reader: BufReader<R>,
    framing: Framing,
    pending: VecDeque<Target>,
    messages: u64,
    done: bool,
}

impl<R: Read> TargetStream<R> {
    pub fn new(reader: R, framing: Framing) -> Self {
        TargetStream {
            reader: BufReader::with_capacity(1 << 20, reader),
            framing,
            pending: VecDeque::new(),
            messages: 0,
            done: false,
        }
    }

    /// Reads a varint; `Ok(None)` on a clean end of stream before its first byte.
    fn varint(&mut self) -> Result<Option<u64>, QueryDecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = match self.reader.fill_buf()?.first() {
                Some(&b) => b,
                None if shift == 0 => return Ok(None),
                None => {
                    return Err(QueryDecodeError::Framing {
                        index: self.messages,
                        what: "stream ends inside a varint",
                    })
                }
            };
            self.reader.consume(1);
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(Some(value));
            }
        }
        Err(QueryDecodeError::Framing {
            index: self.messages,
            what: "varint longer than 10 bytes",
        })
    }

    fn bytes(&mut self, len: u64) -> Result<Bytes, QueryDecodeError> {
        if len > MAX_MESSAGE {
            return Err(QueryDecodeError::Framing {
                index: self.messages,
                what: "message longer than 2 GiB",
            });
        }
        // `take` + `read_to_end` fills without zeroing the buffer first.
        let mut buf = Vec::with_capacity(len as usize);
        (&mut self.reader).take(len).read_to_end(&mut buf)?;
        if (buf.len() as u64) < len {
            return Err(QueryDecodeError::Truncated {
                index: self.messages,
                declared: len,
                available: buf.len() as u64,
            });
        }
        Ok(Bytes::from(buf))
    }

    fn skip(&mut self, wire_type: u64) -> Result<(), QueryDecodeError> {
        let len = match wire_type {
            WIRE_VARINT => return self.varint().map(|_| ()),
            WIRE_FIXED64 => 8,
            WIRE_FIXED32 => 4,
            WIRE_LEN => self.varint()?.ok_or(QueryDecodeError::Framing {
                index: self.messages,
                what: "stream ends inside a field",
            })?,
            _ => {
                return Err(QueryDecodeError::Framing {
                    index: self.messages,
                    what: "unsupported wire type",
                })
            }
        };
        self.bytes(len).map(|_| ())
    }

    fn decode<M: Message + Default>(&self, buf: Bytes) -> Result<M, QueryDecodeError> {
        M::decode(buf).map_err(|source| QueryDecodeError::Decode {
            index: self.messages,
            source,
        })
    }

    /// Reads the next length-delimited message (streamed framings).
    fn next_delimited(&mut self) -> Result<Option<Bytes>, QueryDecodeError> {
        match self.varint()? {
            None => Ok(None),
            Some(len) => self.bytes(len).map(Some),
        }
    }

    /// Reads the next field-1 length-delimited field of a top-level message, skipping others.
    fn next_field_one(&mut self) -> Result<Option<Bytes>, QueryDecodeError> {
        loop {
            let Some(key) = self.varint()? else {
                return Ok(None);
            };
            let (field, wire_type) = (key >> 3, key & 7);
            if field == 1 && wire_type == WIRE_LEN {
                let len = self.varint()?.ok_or(QueryDecodeError::Framing {
                    index: self.messages,
                    what: "stream ends inside a field",
                })?;
                return self.bytes(len).map(Some);
            }
            self.skip(wire_type)?;
        }
    }

    fn configured_targets(&mut self, result: Bytes) -> Result<(), QueryDecodeError> {
        let mut inner = TargetStream::new(&result[..], Framing::CqueryResult);
        inner.messages = self.messages;
        for target in &mut inner {
            self.pending.push_back(target?);
        }
        Ok(())
    }

    fn fill(&mut self) -> Result<(), QueryDecodeError> {
        while self.pending.is_empty() && !self.done {
            let message = match self.framing {
                Framing::StreamedTargets | Framing::StreamedCqueryResults => {
                    self.next_delimited()?
                }
                Framing::QueryResult | Framing::CqueryResult => self.next_field_one()?,
            };
            let Some(message) = message else {
                self.done = true;
                break;
            };
            match self.framing {
                Framing::StreamedTargets | Framing::QueryResult => {
                    let target = self.decode::<Target>(message)?;
                    self.pending.push_back(target);
                }
                Framing::CqueryResult => {
                    let configured = self.decode::<ConfiguredTarget>(message)?;
                    self.pending.extend(configured.target);
                }
                Framing::StreamedCqueryResults => self.configured_targets(message)?,
            }
            self.messages += 1;
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

    #[test]
    fn empty_output_has_no_targets() {
        assert!(collect(&[], Framing::StreamedTargets).unwrap().is_empty());
    }
}
