//! The numbered byte stream of [`super::LongConnection`]: 8-byte big-endian words,
//! word `k` being `k * MULT + ADD` (wrapping). Every word differs and any 8 aligned
//! bytes say which word they are, so a mismatch tells a gap (the stream goes on
//! further ahead) from a corruption.

const MULT: u64 = 0x9e37_79b9_7f4a_7c15;
const ADD: u64 = 0x0123_4567_89ab_cdef;
/// `MULT`'s inverse modulo 2^64 (Newton's iteration; `MULT` is odd).
const MULT_INV: u64 = {
    let mut x = MULT;
    let mut i = 0;
    while i < 6 {
        x = x.wrapping_mul(2u64.wrapping_sub(MULT.wrapping_mul(x)));
        i += 1;
    }
    x
};

fn word(k: u64) -> u64 {
    k.wrapping_mul(MULT).wrapping_add(ADD)
}

fn word_index(w: u64) -> u64 {
    w.wrapping_sub(ADD).wrapping_mul(MULT_INV)
}

/// The byte at `offset` of the stream.
fn byte_at(offset: u64) -> u8 {
    word(offset / 8).to_be_bytes()[(offset % 8) as usize]
}

/// Fills `buf` with the stream from `offset` on.
pub(super) fn fill(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = byte_at(offset + i as u64);
    }
}

/// Where the received stream first differs from the one sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mismatch {
    /// At `offset` the stream goes on with the byte sent at `offset + missing`.
    Gap { offset: u64, missing: u64 },
    /// The byte at `offset` is not the one sent there.
    Corrupt { offset: u64, expected: u8, got: u8 },
}

/// Checks the stream as it arrives.
#[derive(Debug, Default)]
pub(super) struct Checker {
    /// Bytes checked so far.
    pub(super) offset: u64,
}

impl Checker {
    pub(super) fn feed(&mut self, data: &[u8]) -> Result<(), Mismatch> {
        if let Some(i) = data
            .iter()
            .enumerate()
            .position(|(i, b)| *b != byte_at(self.offset + i as u64))
        {
            return Err(mismatch(self.offset + i as u64, &data[i..]));
        }
        self.offset += data.len() as u64;
        Ok(())
    }
}

/// What a mismatch at `offset` is, from the bytes there on (`rest`).
fn mismatch(offset: u64, rest: &[u8]) -> Mismatch {
    for j in 0..8u64 {
        let Some(w) = rest.get(j as usize..j as usize + 8) else {
            break;
        };
        let k = word_index(u64::from_be_bytes(w.try_into().expect("8 bytes")));
        // `rest[j..]` starts word k: `rest` starts at stream offset 8k - j.
        let Some(start) = k.checked_mul(8).and_then(|s| s.checked_sub(j)) else {
            continue;
        };
        let plausible = start > offset && start - offset < 1 << 40;
        if plausible && rest.iter().enumerate().all(|(i, b)| *b == byte_at(start + i as u64)) {
            return Mismatch::Gap {
                offset,
                missing: start - offset,
            };
        }
    }
    Mismatch::Corrupt {
        offset,
        expected: byte_at(offset),
        got: rest[0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(from: u64, to: u64) -> Vec<u8> {
        let mut v = vec![0u8; (to - from) as usize];
        fill(from, &mut v);
        v
    }

    #[test]
    fn words_are_numbered() {
        assert_eq!(MULT.wrapping_mul(MULT_INV), 1);
        for k in [0, 1, 2, 1 << 20, u64::MAX / 8] {
            assert_eq!(word_index(word(k)), k);
        }
    }

    #[test]
    fn the_stream_checks_in_any_pieces() {
        let data = stream(0, 10_000);
        let mut c = Checker::default();
        let mut at = 0;
        for size in [1, 7, 8, 9, 100, 3, 4096].iter().cycle() {
            let to = (at + size).min(data.len());
            c.feed(&data[at..to]).unwrap();
            at = to;
            if at == data.len() {
                break;
            }
        }
        assert_eq!(c.offset, 10_000);
    }

    #[test]
    fn a_gap_is_found_with_its_size() {
        for (gap_at, resume_at) in [(100, 137), (96, 104), (3, 5000)] {
            let mut data = stream(0, gap_at);
            data.extend(stream(resume_at, resume_at + 64));
            match Checker::default().feed(&data) {
                Err(Mismatch::Gap { offset, missing }) => {
                    assert_eq!((offset, missing), (gap_at, resume_at - gap_at))
                }
                other => panic!("gap {gap_at}..{resume_at}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_changed_byte_is_corruption() {
        let mut data = stream(0, 500);
        data[321] ^= 0x40;
        match Checker::default().feed(&data) {
            Err(Mismatch::Corrupt {
                offset: 321,
                expected,
                got,
            }) => assert_eq!(expected ^ 0x40, got),
            other => panic!("{other:?}"),
        }
        // Repeated bytes are not a gap.
        let mut data = stream(0, 200);
        data.extend(stream(150, 250));
        assert!(matches!(
            Checker::default().feed(&data),
            Err(Mismatch::Corrupt { offset: 200, .. })
        ));
    }
}
