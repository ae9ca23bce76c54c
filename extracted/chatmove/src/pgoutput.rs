//! PostgreSQL's logical replication protocol as `pgoutput` writes it (protocol version 1), as
//! pure logic: the messages the follow stage reads from its slot (the payload of each `XLogData`
//! of a `START_REPLICATION … LOGICAL … (proto_version '1', publication_names …)` stream, or a
//! row of `pg_logical_slot_peek_binary_changes` with the same options), decoded. The format is PostgreSQL's "Logical Replication Message Formats" chapter; values
//! come as text, in the reading session's `DateStyle` and `TimeZone` (the mover sets UTC).

use thiserror::Error;

/// One column's value in a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A TOASTed value the update did not change: not sent, must be left as it is.
    Unchanged,
    Text(String),
}

/// A table as the stream describes it before its first change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// part of the replica identity (what a delete sends)
    pub key: bool,
    pub type_oid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: u64,
        xid: u32,
    },
    Commit {
        lsn: u64,
        end_lsn: u64,
    },
    Relation(Relation),
    Insert {
        rel: u32,
        new: Vec<Value>,
    },
    /// `old` is sent only when the replica identity changed (`K`) or is FULL (`O`)
    Update {
        rel: u32,
        old: Option<Vec<Value>>,
        new: Vec<Value>,
    },
    /// `old` holds the replica identity's columns (the others are `Null`), or the whole row when FULL
    Delete {
        rel: u32,
        old: Vec<Value>,
    },
    Truncate {
        rels: Vec<u32>,
    },
    /// Type, Origin, logical decoding messages: nothing the follow stage applies
    Other(u8),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("pgoutput message ends early: wanted {wanted} more bytes at offset {at}")]
    Short { at: usize, wanted: usize },
    #[error("pgoutput message has an unknown tag {0:?} where {1} was expected")]
    Tag(char, &'static str),
    #[error("pgoutput text is not UTF-8")]
    Utf8,
    #[error("an empty pgoutput message")]
    Empty,
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() - self.at < n {
            return Err(DecodeError::Short { at: self.at, wanted: n - (self.buf.len() - self.at) });
        }
        let s = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    /// a NUL-terminated string
    fn cstr(&mut self) -> Result<String, DecodeError> {
        let rest = &self.buf[self.at..];
        let end = rest.iter().position(|b| *b == 0).ok_or(DecodeError::Short { at: self.buf.len(), wanted: 1 })?;
        let s = std::str::from_utf8(&rest[..end]).map_err(|_| DecodeError::Utf8)?.to_string();
        self.at += end + 1;
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Value>, DecodeError> {
        let n = self.u16()?;
        (0..n)
            .map(|_| match self.u8()? {
                b'n' => Ok(Value::Null),
                b'u' => Ok(Value::Unchanged),
                b't' => {
                    let len = self.u32()? as usize;
                    let bytes = self.take(len)?;
                    Ok(Value::Text(std::str::from_utf8(bytes).map_err(|_| DecodeError::Utf8)?.to_string()))
                }
                other => Err(DecodeError::Tag(other as char, "a column kind (n, u, t)")),
            })
            .collect()
    }
}

/// Decodes one message.
pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { buf, at: 0 };
    let tag = r.u8().map_err(|_| DecodeError::Empty)?;
    Ok(match tag {
        b'B' => {
            let final_lsn = r.u64()?;
            let _commit_ts = r.u64()?;
            Message::Begin { final_lsn, xid: r.u32()? }
        }
        b'C' => {
            let _flags = r.u8()?;
            let lsn = r.u64()?;
            let end_lsn = r.u64()?;
            let _ts = r.u64()?;
            Message::Commit { lsn, end_lsn }
        }
        b'R' => {
            let oid = r.u32()?;
            let schema = r.cstr()?;
            let name = r.cstr()?;
            let _identity = r.u8()?;
            let n = r.u16()?;
            let columns = (0..n)
                .map(|_| {
                    let flags = r.u8()?;
                    let name = r.cstr()?;
                    let type_oid = r.u32()?;
                    let _typmod = r.u32()?;
                    Ok(Column { name, key: flags & 1 == 1, type_oid })
                })
                .collect::<Result<_, DecodeError>>()?;
            Message::Relation(Relation { oid, schema, name, columns })
        }
        b'I' => {
            let rel = r.u32()?;
            match r.u8()? {
                b'N' => Message::Insert { rel, new: r.tuple()? },
                t => return Err(DecodeError::Tag(t as char, "N after an insert's relation")),
            }
        }
        b'U' => {
            let rel = r.u32()?;
            let (old, new) = match r.u8()? {
                b'K' | b'O' => {
                    let old = r.tuple()?;
                    match r.u8()? {
                        b'N' => (Some(old), r.tuple()?),
                        t => return Err(DecodeError::Tag(t as char, "N after an update's old row")),
                    }
                }
                b'N' => (None, r.tuple()?),
                t => return Err(DecodeError::Tag(t as char, "K, O or N in an update")),
            };
            Message::Update { rel, old, new }
        }
        b'D' => {
            let rel = r.u32()?;
            match r.u8()? {
                b'K' | b'O' => Message::Delete { rel, old: r.tuple()? },
                t => return Err(DecodeError::Tag(t as char, "K or O in a delete")),
            }
        }
        b'T' => {
            let n = r.u32()?;
            let _options = r.u8()?;
            Message::Truncate { rels: (0..n).map(|_| r.u32()).collect::<Result<_, _>>()? }
        }
        other => Message::Other(other),
    })
}

#[cfg(test)]
pub(crate) mod encode {
    //! The other direction, for tests: what PostgreSQL writes.
    use super::*;

    pub fn tuple(out: &mut Vec<u8>, values: &[Value]) {
        out.extend((values.len() as u16).to_be_bytes());
        for v in values {
            match v {
                Value::Null => out.push(b'n'),
                Value::Unchanged => out.push(b'u'),
                Value::Text(s) => {
                    out.push(b't');
                    out.extend((s.len() as u32).to_be_bytes());
                    out.extend(s.as_bytes());
                }
            }
        }
    }

    pub fn message(m: &Message) -> Vec<u8> {
        let mut o = Vec::new();
        match m {
            Message::Begin { final_lsn, xid } => {
                o.push(b'B');
                o.extend(final_lsn.to_be_bytes());
                o.extend(0u64.to_be_bytes());
                o.extend(xid.to_be_bytes());
            }
            Message::Commit { lsn, end_lsn } => {
                o.push(b'C');
                o.push(0);
                o.extend(lsn.to_be_bytes());
                o.extend(end_lsn.to_be_bytes());
                o.extend(0u64.to_be_bytes());
            }
            Message::Relation(r) => {
                o.push(b'R');
                o.extend(r.oid.to_be_bytes());
                for s in [&r.schema, &r.name] {
                    o.extend(s.as_bytes());
                    o.push(0);
                }
                o.push(b'i');
                o.extend((r.columns.len() as u16).to_be_bytes());
                for c in &r.columns {
                    o.push(c.key as u8);
                    o.extend(c.name.as_bytes());
                    o.push(0);
                    o.extend(c.type_oid.to_be_bytes());
                    o.extend((-1i32).to_be_bytes());
                }
            }
            Message::Insert { rel, new } => {
                o.push(b'I');
                o.extend(rel.to_be_bytes());
                o.push(b'N');
                tuple(&mut o, new);
            }
            Message::Update { rel, old, new } => {
                o.push(b'U');
                o.extend(rel.to_be_bytes());
                if let Some(old) = old {
                    o.push(b'K');
                    tuple(&mut o, old);
                }
                o.push(b'N');
                tuple(&mut o, new);
            }
            Message::Delete { rel, old } => {
                o.push(b'D');
                o.extend(rel.to_be_bytes());
                o.push(b'K');
                tuple(&mut o, old);
            }
            Message::Truncate { rels } => {
                o.push(b'T');
                o.extend((rels.len() as u32).to_be_bytes());
                o.push(0);
                for r in rels {
                    o.extend(r.to_be_bytes());
                }
            }
            Message::Other(t) => o.push(*t),
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_a_delete_as_postgres_wrote_it() {
        // from `pg_logical_slot_peek_binary_changes` on PostgreSQL 15: DELETE FROM t WHERE id = 2,
        // t (id int primary key, c text, x text): the key column, the others null
        let bytes = b"D\x00\x00\x40\x02K\x00\x03t\x00\x00\x00\x012nn";
        assert_eq!(decode(bytes).unwrap(), Message::Delete { rel: 0x4002, old: vec![Value::Text("2".into()), Value::Null, Value::Null] });
    }

    #[test]
    fn a_cut_message_is_an_error_not_a_panic() {
        let whole = encode::message(&Message::Insert { rel: 7, new: vec![Value::Text("hello".into())] });
        for n in 0..whole.len() {
            assert!(decode(&whole[..n]).is_err(), "{n} bytes");
        }
        assert_eq!(decode(b"I\x00\x00\x00\x07X"), Err(DecodeError::Tag('X', "N after an insert's relation")));
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![Just(Value::Null), Just(Value::Unchanged), "\\PC{0,40}".prop_map(Value::Text)]
    }

    fn message() -> impl Strategy<Value = Message> {
        let tuple = || proptest::collection::vec(value(), 0..12);
        prop_oneof![
            (any::<u64>(), any::<u32>()).prop_map(|(final_lsn, xid)| Message::Begin { final_lsn, xid }),
            (any::<u64>(), any::<u64>()).prop_map(|(lsn, end_lsn)| Message::Commit { lsn, end_lsn }),
            (any::<u32>(), "[a-z_]{1,12}", "[a-z_]{1,12}", proptest::collection::vec(("[a-z_]{1,12}", any::<bool>(), any::<u32>()), 0..10))
                .prop_map(|(oid, schema, name, cols)| Message::Relation(Relation {
                    oid,
                    schema,
                    name,
                    columns: cols.into_iter().map(|(name, key, type_oid)| Column { name, key, type_oid }).collect()
                })),
            (any::<u32>(), tuple()).prop_map(|(rel, new)| Message::Insert { rel, new }),
            (any::<u32>(), proptest::option::of(tuple()), tuple()).prop_map(|(rel, old, new)| Message::Update { rel, old, new }),
            (any::<u32>(), tuple()).prop_map(|(rel, old)| Message::Delete { rel, old }),
            proptest::collection::vec(any::<u32>(), 0..5).prop_map(|rels| Message::Truncate { rels }),
        ]
    }

    proptest! {
        #[test]
        fn decodes_what_postgres_encodes(m in message()) {
            prop_assert_eq!(decode(&encode::message(&m)).unwrap(), m);
        }

        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }
    }
}
