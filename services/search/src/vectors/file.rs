//! The embedded vector store's two files: a snapshot of every live point and a log of
//! the changes since, both a header then checksummed records.
//!
//! ```text
//! header:  b"HXV1"  dim: u32
//! record:  len: u32  crc32(body): u32  body
//! body:    1  id[16]  updated_at: i64  version: i64  namespace  kind  tag-count: u32  tags…  dim × f32   (upsert)
//!          2  id[16]                                                                                   (delete)
//! string:  len: u32  UTF-8 bytes
//! ```
//!
//! All numbers are little-endian. A record is written whole and synced before the
//! full-text commit it belongs to, so at most the last record of the log can be torn by
//! a crash: reading stops there and the log is cut back to the records before it.

use std::io::{self, Read};

use uuid::Uuid;

use super::{VectorOp, VectorPoint};

const MAGIC: &[u8; 4] = b"HXV1";
pub const HEADER_LEN: u64 = 8;
const UPSERT: u8 = 1;
const DELETE: u8 = 2;
/// A record longer than this is damage, not data (a 65,536-dimension vector with a
/// thousand long tags stays far below it).
const MAX_RECORD: u32 = 64 << 20;

pub fn header(dim: usize) -> [u8; 8] {
    let mut header = [0; 8];
    header[..4].copy_from_slice(MAGIC);
    header[4..].copy_from_slice(&(dim as u32).to_le_bytes());
    header
}

/// The dimension a file's header names; `None` when it is not our header.
pub fn read_header(reader: &mut impl Read) -> io::Result<Option<usize>> {
    let mut header = [0; 8];
    match reader.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if &header[..4] != MAGIC {
        return Ok(None);
    }
    Ok(Some(u32::from_le_bytes(header[4..].try_into().expect("4 bytes")) as usize))
}

/// A point as the store holds it, borrowed for writing.
pub struct PointRef<'a> {
    pub id: Uuid,
    pub updated_at: i64,
    pub version: i64,
    pub namespace: &'a str,
    pub kind: &'a str,
    pub tags: &'a [&'a str],
    pub vector: &'a [f32],
}

pub fn append_upsert(out: &mut Vec<u8>, point: &PointRef<'_>) {
    let start = begin(out);
    out.push(UPSERT);
    out.extend_from_slice(point.id.as_bytes());
    out.extend_from_slice(&point.updated_at.to_le_bytes());
    out.extend_from_slice(&point.version.to_le_bytes());
    put_str(out, point.namespace);
    put_str(out, point.kind);
    out.extend_from_slice(&(point.tags.len() as u32).to_le_bytes());
    for tag in point.tags {
        put_str(out, tag);
    }
    for value in point.vector {
        out.extend_from_slice(&value.to_le_bytes());
    }
    finish(out, start);
}

pub fn append_delete(out: &mut Vec<u8>, id: Uuid) {
    let start = begin(out);
    out.push(DELETE);
    out.extend_from_slice(id.as_bytes());
    finish(out, start);
}

/// Room for the length and checksum, filled in by [`finish`].
fn begin(out: &mut Vec<u8>) -> usize {
    out.extend_from_slice(&[0; 8]);
    out.len()
}

fn finish(out: &mut [u8], start: usize) {
    let body = &out[start..];
    let len = (body.len() as u32).to_le_bytes();
    let crc = crc32fast::hash(body).to_le_bytes();
    out[start - 8..start - 4].copy_from_slice(&len);
    out[start - 4..start].copy_from_slice(&crc);
}

fn put_str(out: &mut Vec<u8>, value: &str) {
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value.as_bytes());
}

/// How reading records ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// every byte was a whole, intact record
    Clean,
    /// bytes from this offset (counted from the file's start) are not an intact record
    Torn(u64),
}

/// Reads the records after the header, handing each to `apply`, until the end of the
/// file or the first record that is cut short or fails its checksum.
pub fn read_records(reader: &mut impl Read, dim: usize, mut apply: impl FnMut(VectorOp)) -> io::Result<End> {
    let mut offset = HEADER_LEN;
    let mut body = Vec::new();
    loop {
        let mut prefix = [0; 8];
        match read_full(reader, &mut prefix)? {
            0 => return Ok(End::Clean),
            8 => {}
            _ => return Ok(End::Torn(offset)),
        }
        let len = u32::from_le_bytes(prefix[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(prefix[4..].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            return Ok(End::Torn(offset));
        }
        body.resize(len as usize, 0);
        if read_full(reader, &mut body)? < body.len() || crc32fast::hash(&body) != crc {
            return Ok(End::Torn(offset));
        }
        match decode(&body, dim) {
            Some(op) => apply(op),
            None => return Ok(End::Torn(offset)),
        }
        offset += 8 + u64::from(len);
    }
}

/// Fills `buf` as far as the reader goes; answers how much it filled.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A body whose checksum held but whose shape does not is damage all the same.
fn decode(body: &[u8], dim: usize) -> Option<VectorOp> {
    let mut cursor = Cursor { rest: body };
    let tag = cursor.take(1)?[0];
    let id = Uuid::from_bytes(cursor.take(16)?.try_into().ok()?);
    let op = match tag {
        DELETE => VectorOp::Delete(id),
        UPSERT => {
            let updated_at = i64::from_le_bytes(cursor.take(8)?.try_into().ok()?);
            let version = i64::from_le_bytes(cursor.take(8)?.try_into().ok()?);
            let namespace = cursor.string()?;
            let kind = cursor.string()?;
            let count = cursor.u32()? as usize;
            let tags = (0..count).map(|_| cursor.string()).collect::<Option<Vec<_>>>()?;
            let vector = cursor
                .take(dim.checked_mul(4)?)?
                .chunks_exact(4)
                .map(|bytes| f32::from_le_bytes(bytes.try_into().expect("4 bytes")))
                .collect();
            VectorOp::Upsert(VectorPoint { id, vector, namespace, kind, tags, updated_at, version })
        }
        _ => return None,
    };
    cursor.rest.is_empty().then_some(op)
}

struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.rest.split_at_checked(n)?;
        self.rest = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(i: u8) -> VectorPoint {
        VectorPoint {
            id: Uuid::from_bytes([i; 16]),
            vector: vec![0.5, -1.0, f32::from(i)],
            namespace: "default".to_owned(),
            kind: "note".to_owned(),
            tags: vec!["a".to_owned(), "ünï".to_owned()],
            updated_at: -7 + i64::from(i),
            version: 3 + i64::from(i),
        }
    }

    fn encode(ops: &[VectorOp]) -> Vec<u8> {
        let mut out = header(3).to_vec();
        for op in ops {
            match op {
                VectorOp::Upsert(p) => {
                    let tags: Vec<&str> = p.tags.iter().map(String::as_str).collect();
                    let point = PointRef {
                        id: p.id,
                        updated_at: p.updated_at,
                        version: p.version,
                        namespace: &p.namespace,
                        kind: &p.kind,
                        tags: &tags,
                        vector: &p.vector,
                    };
                    append_upsert(&mut out, &point);
                }
                VectorOp::Delete(id) => append_delete(&mut out, *id),
            }
        }
        out
    }

    fn read(bytes: &[u8]) -> (Option<usize>, Vec<VectorOp>, End) {
        let mut reader = bytes;
        let dim = read_header(&mut reader).unwrap();
        let mut ops = Vec::new();
        let end = read_records(&mut reader, dim.unwrap_or(3), |op| ops.push(op)).unwrap();
        (dim, ops, end)
    }

    #[test]
    fn records_read_back_as_written() {
        let ops =
            vec![VectorOp::Upsert(upsert(1)), VectorOp::Delete(Uuid::from_bytes([9; 16])), VectorOp::Upsert(upsert(2))];
        assert_eq!(read(&encode(&ops)), (Some(3), ops, End::Clean));
    }

    #[test]
    fn a_torn_or_damaged_tail_ends_reading_at_the_last_whole_record() {
        let ops = vec![VectorOp::Upsert(upsert(1)), VectorOp::Upsert(upsert(2))];
        let bytes = encode(&ops);
        let first_end = encode(&ops[..1]).len() as u64;
        // every cut inside the second record keeps the first
        for cut in first_end as usize + 1..bytes.len() {
            assert_eq!(read(&bytes[..cut]), (Some(3), ops[..1].to_vec(), End::Torn(first_end)), "cut at {cut}");
        }
        // a flipped bit in the second record's body fails its checksum
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(read(&flipped), (Some(3), ops[..1].to_vec(), End::Torn(first_end)));
        // an absurd length is damage, not an allocation
        let mut huge = bytes[..first_end as usize].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert_eq!(read(&huge), (Some(3), ops[..1].to_vec(), End::Torn(first_end)));
    }

    #[test]
    fn another_files_header_is_not_ours() {
        assert_eq!(read_header(&mut &b"HXB1\x03\0\0\0"[..]).unwrap(), None);
        assert_eq!(read_header(&mut &b"HX"[..]).unwrap(), None);
    }
}
