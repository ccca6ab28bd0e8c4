//! What the fuzz targets and the seed generator share: the byte layout the `datagram` target
//! splits its input into.
//!
//! # Session layout
//!
//! | size | field   | meaning |
//! |-----:|---------|---------|
//! | 1    | flags   | [`Session`] options, see the `FLAG_*` constants |
//! | 1    | shard   | the decoder's shard |
//! | 2    | epoch   | the epoch announced to the decoder before the first record (big-endian) |
//!
//! then records to the end of the input, each:
//!
//! | size | field    | meaning |
//! |-----:|----------|---------|
//! | 1    | step     | time that passes before the datagram arrives: `step² × 10 µs` (0 to 650 ms) |
//! | 2    | len      | length of the datagram (big-endian) |
//! | len  | datagram | the bytes; a short last record takes what is left |
//!
//! A record that parses as a reset message is handed to `Decoder::handle_reset` (the control
//! path), every other one to `Decoder::handle_datagram`.

use std::time::Duration;

/// Bytes before the first record.
pub const SESSION_HEADER_LEN: usize = 4;

/// Bytes before each record's datagram.
pub const RECORD_HEADER_LEN: usize = 3;

/// Flag: do not announce the epoch (data is then orphaned and the decoder asks for a reset).
pub const FLAG_NO_ANNOUNCE: u8 = 1 << 0;
/// Flag: a small hold budget (`max_held_bytes` of 96 KiB), so reassembly runs out of room.
pub const FLAG_SMALL_BUDGET: u8 = 1 << 1;
/// Flag: acknowledge every block instead of every eighth.
pub const FLAG_ACK_EACH: u8 = 1 << 2;
/// Flag: drain packets into a 1500-byte buffer, so bigger packets are dropped as too long.
pub const FLAG_SHORT_BUFFER: u8 = 1 << 3;

/// The decoder a session runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// `FLAG_*` bits; unknown bits are ignored.
    pub flags: u8,
    /// The decoder's shard.
    pub shard: u8,
    /// The epoch announced to it (unless [`FLAG_NO_ANNOUNCE`]).
    pub epoch: u16,
}

impl Session {
    /// Splits `input` into the session header and its records; `None` if the header is cut.
    pub fn split(input: &[u8]) -> Option<(Session, Records<'_>)> {
        let (header, rest) = input.split_first_chunk::<SESSION_HEADER_LEN>()?;
        let session = Session {
            flags: header[0],
            shard: header[1],
            epoch: u16::from_be_bytes([header[2], header[3]]),
        };
        Some((session, Records { rest }))
    }

    /// True if `flag` is set.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// Appends this header to `out` (the seed generator's side of [`Session::split`]).
    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(self.flags);
        out.push(self.shard);
        out.extend_from_slice(&self.epoch.to_be_bytes());
    }
}

/// One datagram of a session and the time that passes before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Encoded pause, see [`Record::pause`].
    pub step: u8,
    /// The datagram (or control message).
    pub datagram: &'a [u8],
}

impl Record<'_> {
    /// Time that passes before this record arrives: quadratic in `step`, so small steps
    /// probe the 5 ms reorder timeout and large ones the 500 ms reassembly timeout.
    pub fn pause(&self) -> Duration {
        Duration::from_micros(u64::from(self.step) * u64::from(self.step) * 10)
    }

    /// Appends a record to `out`.
    ///
    /// # Panics
    /// If `datagram` is longer than 65535 bytes (the length field's limit).
    pub fn write(step: u8, datagram: &[u8], out: &mut Vec<u8>) {
        let len = u16::try_from(datagram.len()).expect("record datagrams are at most 65535 bytes");
        out.push(step);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(datagram);
    }
}

/// The records of a session, in order.
#[derive(Clone, Debug)]
pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        let (header, rest) = self.rest.split_first_chunk::<RECORD_HEADER_LEN>()?;
        let len = usize::from(u16::from_be_bytes([header[1], header[2]])).min(rest.len());
        let (datagram, rest) = rest.split_at(len);
        self.rest = rest;
        Some(Record {
            step: header[0],
            datagram,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_round_trip() {
        let session = Session {
            flags: FLAG_ACK_EACH,
            shard: 3,
            epoch: 0xbeef,
        };
        let mut bytes = Vec::new();
        session.write(&mut bytes);
        Record::write(0, &[1, 2, 3], &mut bytes);
        Record::write(255, &[], &mut bytes);
        Record::write(7, &[9; 10], &mut bytes);
        bytes.truncate(bytes.len() - 4); // the last record is cut short
        let (parsed, records) = Session::split(&bytes).expect("header present");
        assert_eq!(parsed, session);
        let records: Vec<_> = records.collect();
        assert_eq!(
            records,
            [
                Record {
                    step: 0,
                    datagram: &[1, 2, 3]
                },
                Record {
                    step: 255,
                    datagram: &[]
                },
                Record {
                    step: 7,
                    datagram: &[9; 6]
                },
            ]
        );
        assert_eq!(records[1].pause(), Duration::from_micros(650_250));
        assert!(Session::split(&[0, 0, 0]).is_none());
    }
}
