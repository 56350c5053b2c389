//! How changes are written: ops (`[tag][key len][key][value len][value]`)
//! in frames (`[body len u64][crc32 of body][body]`), the same in the log
//! and in the snapshot.

/// One entry change as stored: `[tag][key len u32][key][value len u32][value]`
/// (no value for a delete).
pub(super) struct Op<'a> {
    pub(super) meta: bool,
    pub(super) key: &'a [u8],
    pub(super) value: Option<&'a [u8]>,
}

const TAG_DATA_PUT: u8 = 1;
const TAG_DATA_DELETE: u8 = 2;
const TAG_META_PUT: u8 = 3;
const TAG_META_DELETE: u8 = 4;

impl Op<'_> {
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let tag = match (self.meta, self.value.is_some()) {
            (false, true) => TAG_DATA_PUT,
            (false, false) => TAG_DATA_DELETE,
            (true, true) => TAG_META_PUT,
            (true, false) => TAG_META_DELETE,
        };
        out.push(tag);
        put_bytes(out, self.key);
        if let Some(value) = self.value {
            put_bytes(out, value);
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Keys and values are far below 4 GiB: the largest is a progress row.
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Decodes the ops of one frame or snapshot body; `None` if malformed.
pub(super) fn decode_ops(mut body: &[u8], mut each: impl FnMut(Op<'_>)) -> Option<()> {
    fn bytes<'a>(body: &mut &'a [u8]) -> Option<&'a [u8]> {
        let (len, rest) = body.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let (bytes, rest) = rest.split_at_checked(len)?;
        *body = rest;
        Some(bytes)
    }
    while let Some((&tag, rest)) = body.split_first() {
        body = rest;
        let key = bytes(&mut body)?;
        let op = match tag {
            TAG_DATA_PUT | TAG_META_PUT => Op {
                meta: tag == TAG_META_PUT,
                key,
                value: Some(bytes(&mut body)?),
            },
            TAG_DATA_DELETE | TAG_META_DELETE => Op {
                meta: tag == TAG_META_DELETE,
                key,
                value: None,
            },
            _ => return None,
        };
        each(op);
    }
    Some(())
}

/// A frame is `[body len u64][crc32 of body][body]`: a buffer begun here
/// has room for the header, ops are encoded after it, and
/// [`frame_finish`] fills the header in.
pub(super) fn frame_start(body_capacity: usize) -> Vec<u8> {
    let mut out = Vec::new();
    frame_start_in(&mut out, body_capacity);
    out
}

/// Starts a frame in `buffer`, reusing its allocation.
pub(super) fn frame_start_in(buffer: &mut Vec<u8>, body_capacity: usize) {
    buffer.clear();
    buffer.reserve(FRAME_HEADER + body_capacity);
    buffer.resize(FRAME_HEADER, 0);
}

pub(super) fn frame_finish(frame: &mut [u8]) {
    let (header, body) = frame.split_at_mut(FRAME_HEADER);
    header[..8].copy_from_slice(&(body.len() as u64).to_le_bytes());
    header[8..].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
}

pub(super) const FRAME_HEADER: usize = 12;

/// The frame at the start of `bytes`, if whole and its checksum holds: its
/// body. (Its ops are decoded once, as they are applied: a body that passes
/// its checksum and does not decode was written wrong, not torn.)
pub(super) fn frame_at(bytes: &[u8]) -> Option<&[u8]> {
    let header = bytes.get(..FRAME_HEADER)?;
    let len = usize::try_from(u64::from_le_bytes(header[..8].try_into().ok()?)).ok()?;
    let crc = u32::from_le_bytes(header[8..].try_into().ok()?);
    let body = bytes.get(FRAME_HEADER..FRAME_HEADER.checked_add(len)?)?;
    (crc32fast::hash(body) == crc).then_some(body)
}

/// The whole frames at the start of `log`, and where they end. Commits
/// never write an empty frame, so one (a run of zeros) ends the log too.
pub(super) fn frames(log: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut bodies = Vec::new();
    let mut at = 0;
    while let Some(body) = log.get(at..).and_then(frame_at) {
        if body.is_empty() {
            break;
        }
        bodies.push(body);
        at += FRAME_HEADER + body.len();
    }
    (bodies, at)
}
