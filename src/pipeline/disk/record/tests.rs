use proptest::prelude::*;

use super::*;

fn record<'a>(seq: u64, payload: &'a [u8]) -> Record<'a> {
    Record {
        seq,
        at_ms: 1_796_000_000_000,
        method: 3,
        auth: None,
        key: None,
        payload,
    }
}

fn fields_of<'a>(buf: &'a [u8], p: &Parsed) -> Record<'a> {
    Record {
        seq: p.seq,
        at_ms: p.at_ms,
        method: p.method,
        auth: p.auth.clone().map(|r| &buf[r]),
        key: p.key.clone().map(|r| &buf[r]),
        payload: &buf[p.payload.clone()],
    }
}

#[test]
fn a_record_reads_back_as_written_with_and_without_token_and_key() {
    let payload = b"a segment".as_slice();
    for (auth, key) in [
        (None, None),
        (Some(b"token".as_slice()), None),
        (None, Some(b"svc\0inst".as_slice())),
        (Some(b"".as_slice()), Some(b"k".as_slice())),
    ] {
        let written = Record {
            auth,
            key,
            ..record(7, payload)
        };
        let mut buf = Vec::new();
        encode(&written, &mut buf);
        assert_eq!(buf.len(), encoded_len(&written));
        let Read::Record(parsed) = parse(&buf) else {
            panic!("not read back: {written:?}");
        };
        assert_eq!(parsed.size, buf.len());
        assert_eq!(fields_of(&buf, &parsed), written);
    }
}

#[test]
fn framing_is_27_bytes_without_token_or_key() {
    assert_eq!(encoded_len(&record(1, &[0; 300])), 327);
}

#[test]
fn a_cut_record_is_incomplete_and_a_flipped_bit_anywhere_is_corrupt() {
    let mut buf = Vec::new();
    encode(
        &Record {
            auth: Some(b"t"),
            key: Some(b"k"),
            ..record(9, b"payload")
        },
        &mut buf,
    );
    for cut in 0..buf.len() {
        assert_eq!(parse(&buf[..cut]), Read::Incomplete, "cut at {cut}");
    }
    for byte in 0..buf.len() {
        for bit in 0..8 {
            let mut damaged = buf.clone();
            damaged[byte] ^= 1 << bit;
            // A length made larger reads as a record not all there yet; any other
            // change fails the checksum.
            assert!(
                matches!(parse(&damaged), Read::Corrupt | Read::Incomplete),
                "byte {byte} bit {bit} went unnoticed"
            );
        }
    }
}

#[test]
fn resync_finds_the_next_record_after_a_damaged_one() {
    let mut buf = Vec::new();
    for seq in 10..13 {
        encode(&record(seq, &[seq as u8; 40]), &mut buf);
    }
    let size = encoded_len(&record(0, &[0; 40]));
    buf[FRAME + 20] ^= 0xff; // the payload of seq 10
    assert_eq!(parse(&buf), Read::Corrupt);
    assert_eq!(resync(&buf, 9, 1000), Some(size));
    // Nothing plausible follows: a number too far ahead is not taken for a record.
    assert_eq!(resync(&buf[..size + 5], 9, 1000), None);
    assert_eq!(resync(&buf, 9, 0), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever damage is done to a run of records, reading never panics, and whatever
    /// it reads as a record has a matching checksum (it is one of the records written,
    /// byte for byte).
    #[test]
    fn damage_never_panics_and_never_yields_a_record_that_was_not_written(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..8),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..16),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut buf = Vec::new();
        let mut written = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            let start = buf.len();
            encode(&Record { key: (i % 2 == 0).then_some(b"key".as_slice()), ..record(100 + i as u64, p) }, &mut buf);
            written.push(buf[start..].to_vec());
        }
        for (at, xor) in &flips {
            let at = at.index(buf.len());
            buf[at] ^= xor;
        }
        let end = cut.index(buf.len() + 1);
        let buf = &buf[..end];
        let mut at = 0;
        let mut last = 99;
        while at < buf.len() {
            match parse(&buf[at..]) {
                Read::Record(r) => {
                    prop_assert!(written.contains(&buf[at..at + r.size].to_vec()), "a record that was never written");
                    last = r.seq;
                    at += r.size;
                }
                Read::Incomplete => break,
                Read::Corrupt => match resync(&buf[at..], last, 64) {
                    Some(skip) => at += skip,
                    None => break,
                },
            }
        }
    }
}
