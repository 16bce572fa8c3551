//! A minimal zip writer: stored (uncompressed) entries only.
//!
//! The legacy certificate bundle is three small PEM files, so compression
//! would save a few hundred bytes; writing the format by hand (~100 lines)
//! keeps a zip crate and its compression dependencies out of the build.
//! Archives open with `unzip`, Python's `zipfile` and the Go standard
//! library, which the original scripts used.

use time::OffsetDateTime;

/// One file of the archive.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
    /// Unix permission bits recorded for the file (e.g. 0o600 for a key).
    pub mode: u32,
}

const LOCAL_HEADER: u32 = 0x0403_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const END_OF_CENTRAL_DIR: u32 = 0x0605_4b50;
/// Version 2.0: the minimum for plain stored files.
const VERSION: u16 = 20;
/// "Made by" Unix, so the external attributes carry permission bits.
const MADE_BY_UNIX: u16 = (3 << 8) | VERSION;
/// General purpose flag bit 11: names are UTF-8.
const FLAG_UTF8: u16 = 1 << 11;
/// Regular file type bits of `st_mode`.
const S_IFREG: u32 = 0o100_000;

/// Builds a zip archive of `entries`, each with modification time `mtime`.
///
/// # Panics
/// Never for the inputs used here; entries beyond the classic format's
/// limits (65535 entries, 4 GiB) are not supported.
pub fn build(entries: &[Entry<'_>], mtime: OffsetDateTime) -> Vec<u8> {
    let (time, date) = dos_time(mtime);
    let mut out = Vec::new();
    let mut central = Vec::new();
    for entry in entries {
        let offset = u32::try_from(out.len()).expect("archive below 4 GiB");
        let crc = crc32(entry.data);
        let size = u32::try_from(entry.data.len()).expect("entry below 4 GiB");
        let name = entry.name.as_bytes();
        let name_len = u16::try_from(name.len()).expect("short entry name");

        put32(&mut out, LOCAL_HEADER);
        put16(&mut out, VERSION);
        put16(&mut out, FLAG_UTF8);
        put16(&mut out, 0); // stored
        put16(&mut out, time);
        put16(&mut out, date);
        put32(&mut out, crc);
        put32(&mut out, size); // compressed size
        put32(&mut out, size);
        put16(&mut out, name_len);
        put16(&mut out, 0); // extra field length
        out.extend_from_slice(name);
        out.extend_from_slice(entry.data);

        put32(&mut central, CENTRAL_HEADER);
        put16(&mut central, MADE_BY_UNIX);
        put16(&mut central, VERSION);
        put16(&mut central, FLAG_UTF8);
        put16(&mut central, 0);
        put16(&mut central, time);
        put16(&mut central, date);
        put32(&mut central, crc);
        put32(&mut central, size);
        put32(&mut central, size);
        put16(&mut central, name_len);
        put16(&mut central, 0); // extra
        put16(&mut central, 0); // comment
        put16(&mut central, 0); // disk number
        put16(&mut central, 0); // internal attributes
        put32(&mut central, (S_IFREG | (entry.mode & 0o777)) << 16);
        put32(&mut central, offset);
        central.extend_from_slice(name);
    }
    let central_offset = u32::try_from(out.len()).expect("archive below 4 GiB");
    let central_size = u32::try_from(central.len()).expect("directory below 4 GiB");
    let count = u16::try_from(entries.len()).expect("fewer than 65536 entries");
    out.extend_from_slice(&central);
    put32(&mut out, END_OF_CENTRAL_DIR);
    put16(&mut out, 0); // this disk
    put16(&mut out, 0); // disk with the directory
    put16(&mut out, count);
    put16(&mut out, count);
    put32(&mut out, central_size);
    put32(&mut out, central_offset);
    put16(&mut out, 0); // comment length
    out
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// MS-DOS time and date (2-second resolution, years 1980..2107).
fn dos_time(t: OffsetDateTime) -> (u16, u16) {
    let t = t.to_offset(time::UtcOffset::UTC);
    let year = t.year().clamp(1980, 2107);
    let time =
        (u16::from(t.hour()) << 11) | (u16::from(t.minute()) << 5) | u16::from(t.second() / 2);
    let date = ((u16::try_from(year - 1980).unwrap_or(0)) << 9)
        | (u16::from(u8::from(t.month())) << 5)
        | u16::from(t.day());
    (time, date)
}

/// CRC-32 (IEEE 802.3, reflected, as zip uses). Bitwise: the inputs are a
/// few kilobytes, so a table buys nothing.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// Reads back the entries of an archive written by [`build`] (stored
/// entries only): `(name, data, unix mode)`. For tests and clients.
pub fn read_stored(archive: &[u8]) -> Option<Vec<(String, Vec<u8>, u32)>> {
    let u16_at = |i: usize| {
        archive
            .get(i..i + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |i: usize| {
        archive
            .get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let eocd = archive.len().checked_sub(22)?;
    if u32_at(eocd)? != END_OF_CENTRAL_DIR {
        return None;
    }
    let count = usize::from(u16_at(eocd + 10)?);
    let mut at = usize::try_from(u32_at(eocd + 16)?).ok()?;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        if u32_at(at)? != CENTRAL_HEADER || u16_at(at + 10)? != 0 {
            return None;
        }
        let crc = u32_at(at + 16)?;
        let size = usize::try_from(u32_at(at + 24)?).ok()?;
        let name_len = usize::from(u16_at(at + 28)?);
        let skip = usize::from(u16_at(at + 30)?) + usize::from(u16_at(at + 32)?);
        let mode = u32_at(at + 38)? >> 16;
        let local = usize::try_from(u32_at(at + 42)?).ok()?;
        let name = String::from_utf8(archive.get(at + 46..at + 46 + name_len)?.to_vec()).ok()?;
        let local_name = usize::from(u16_at(local + 26)?);
        let local_extra = usize::from(u16_at(local + 28)?);
        let start = local + 30 + local_name + local_extra;
        let data = archive.get(start..start + size)?.to_vec();
        if crc32(&data) != crc {
            return None;
        }
        entries.push((name, data, mode & 0o7777));
        at += 46 + name_len + skip;
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn archives_round_trip() {
        let entries = [
            Entry {
                name: "a-cert.pem",
                data: b"cert",
                mode: 0o644,
            },
            Entry {
                name: "a-key.pem",
                data: b"secret key",
                mode: 0o600,
            },
            Entry {
                name: "empty",
                data: b"",
                mode: 0o644,
            },
        ];
        let zip = build(&entries, OffsetDateTime::UNIX_EPOCH);
        let back = read_stored(&zip).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[1], ("a-key.pem".into(), b"secret key".to_vec(), 0o600));
        assert_eq!(back[2].1, b"");
        assert!(read_stored(&zip[..zip.len() - 1]).is_none());
    }
}
