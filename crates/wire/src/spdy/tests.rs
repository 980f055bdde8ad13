use super::*;
use proptest::prelude::*;

type R = Result<(), SpdyError>;

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65521;
        b = (b + a) % 65521;
    }
    b << 16 | a
}

fn decode_all(codec: &mut Codec, mut wire: &[u8]) -> Result<Vec<Frame>, SpdyError> {
    let mut frames = Vec::new();
    while let Some((f, n)) = codec.decode(wire)? {
        frames.push(f);
        wire = &wire[n..];
    }
    assert!(wire.is_empty(), "{} trailing bytes", wire.len());
    Ok(frames)
}

fn syn(stream_id: u32, kind: &str) -> Frame {
    Frame::SynStream {
        stream_id,
        associated_stream_id: 0,
        priority: 0,
        slot: 0,
        fin: false,
        unidirectional: false,
        headers: Headers::new().with(HEADER_STREAM_TYPE, kind),
    }
}

#[test]
fn dictionary_checksum() {
    assert_eq!(DICTIONARY.len(), 1423);
    assert_eq!(adler32(DICTIONARY), DICTIONARY_ADLER32);
    assert_eq!(DICTIONARY_ADLER32, 0xE3C6_A7C2);
}

#[test]
fn first_header_block_matches_spdystream() -> R {
    let mut comp = HeaderCompressor::new()?;
    let mut out = Vec::new();
    comp.compress(&Headers::new().with("streamtype", "error"), &mut out)?;
    // FDICT set, best compression, SPDY/3 dictionary id: what kubectl sends.
    assert_eq!(&out[..6], &[0x78, 0xF9, 0xE3, 0xC6, 0xA7, 0xC2]);
    // Sync flush marker.
    assert_eq!(&out[out.len() - 4..], &[0, 0, 0xFF, 0xFF]);
    // The second block continues the stream without a zlib header.
    let mut second = Vec::new();
    comp.compress(&Headers::new().with("streamtype", "stdout"), &mut second)?;
    assert_ne!(&second[..2], &[0x78, 0xF9]);
    let mut dec = HeaderDecompressor::default();
    assert_eq!(dec.decompress(&out)?.get("streamtype"), Some("error"));
    assert_eq!(dec.decompress(&second)?.get("streamtype"), Some("stdout"));
    Ok(())
}

#[test]
fn header_block_layout_and_multi_values() -> R {
    let h = Headers::new().with("A", "1").with("b", "x").with("a", "2");
    assert_eq!(h.get_all("a"), ["1", "2"]);
    assert_eq!(h.get("B"), Some("x"));
    let block = h.to_block()?;
    assert_eq!(block, b"\0\0\0\x02\0\0\0\x01a\0\0\0\x031\x002\0\0\0\x01b\0\0\0\x01x".to_vec());
    assert_eq!(Headers::from_block(&block, &HeaderLimits::default())?, h);
    // Values cannot contain the separator; names must be valid.
    assert!(matches!(Headers::new().with("a", "x\0y").to_block(), Err(SpdyError::InvalidHeaderValue(_))));
    assert!(matches!(Headers::new().with("", "x").to_block(), Err(SpdyError::InvalidHeaderName(_))));
    Ok(())
}

#[test]
fn header_block_rejections() {
    let limits = HeaderLimits::default();
    let bad = |b: &[u8]| Headers::from_block(b, &limits);
    assert!(matches!(bad(b"\0\0\0\x01\0\0\0\x01A\0\0\0\0"), Err(SpdyError::InvalidHeaderName(_))));
    assert!(matches!(bad(b"\0\0\0\x02\0\0\0\x01a\0\0\0\0\0\0\0\x01a\0\0\0\0"), Err(SpdyError::DuplicateHeader(_))));
    assert!(matches!(bad(b"\0\0\0\x01\0\0\0\0\0\0\0\0"), Err(SpdyError::InvalidHeaderName(_))));
    assert!(matches!(bad(b"\0\0\0\x01\0\0\0\x01a\0\0\0\x05x"), Err(SpdyError::MalformedHeaderBlock(_))));
    assert!(matches!(bad(b"\0\0\0\0x"), Err(SpdyError::MalformedHeaderBlock(_))));
    assert!(matches!(bad(b"\xff\xff\xff\xff"), Err(SpdyError::TooManyHeaders { .. })));
    assert!(matches!(bad(b"\0\0\0\x10"), Err(SpdyError::MalformedHeaderBlock(_))));
    assert!(matches!(bad(b"\0\0"), Err(SpdyError::MalformedHeaderBlock(_))));
    // An empty value decodes as one empty value.
    assert_eq!(bad(b"\0\0\0\x01\0\0\0\x01a\0\0\0\0").map(|h| h.get_all("a").to_vec()), Ok(vec![String::new()]));
}

#[test]
fn decompression_bomb_rejected() -> R {
    // 1 MiB of zeros compresses to about a kilobyte.
    let limits = HeaderLimits::default();
    let mut block = Vec::new();
    block.extend_from_slice(&1u32.to_be_bytes());
    block.extend_from_slice(&1u32.to_be_bytes());
    block.push(b'a');
    block.extend_from_slice(&(1u32 << 20).to_be_bytes());
    block.resize(block.len() + (1 << 20), b'x');
    let mut comp = HeaderCompressor::new()?;
    let mut compressed = Vec::new();
    comp.compress_block(&block, &mut compressed)?;
    assert!(compressed.len() < 8 * 1024, "{}", compressed.len());
    let mut dec = HeaderDecompressor::new(limits);
    assert_eq!(dec.decompress(&compressed), Err(SpdyError::HeaderBlockTooLarge));
    // Through the frame decoder too.
    let mut wire = Vec::new();
    let mut p = Vec::new();
    p.extend_from_slice(&1u32.to_be_bytes());
    p.extend_from_slice(&compressed);
    wire.extend_from_slice(&[0x80, 3, 0, 2, 0, 0]);
    wire.extend_from_slice(&(p.len() as u16).to_be_bytes());
    wire.extend_from_slice(&p);
    let mut codec = Codec::new()?;
    assert_eq!(codec.decode(&wire), Err(SpdyError::HeaderBlockTooLarge));
    Ok(())
}

#[test]
fn wrong_dictionary_and_garbage_rejected() {
    let mut dec = HeaderDecompressor::default();
    // zlib header with FDICT and a dictionary id of 1.
    assert_eq!(dec.decompress(&[0x78, 0xBB, 0, 0, 0, 1, 0, 0]), Err(SpdyError::UnknownDictionary(1)));
    let mut dec = HeaderDecompressor::default();
    assert!(matches!(dec.decompress(b"not zlib at all"), Err(SpdyError::Decompress(_))));
}

#[test]
fn kubectl_stream_setup_round_trip() -> R {
    let mut client = Codec::new()?;
    let mut server = Codec::new()?;
    let mut c2s = Vec::new();
    for (id, kind) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "resize")] {
        client.encode(&syn(id, kind), &mut c2s)?;
    }
    encode_data(3, false, b"echo hi\n", &mut c2s)?;
    encode_data(3, true, b"", &mut c2s)?;
    encode_ping(1, &mut c2s);
    let frames = decode_all(&mut server, &c2s)?;
    let kinds: Vec<_> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::SynStream { headers, .. } => StreamType::from_headers(headers),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, expected_streams(StreamProtocol::V4, true, true, false, true));
    assert_eq!(frames[5], Frame::Data { stream_id: 3, fin: true, data: vec![] });
    assert_eq!(frames[6], Frame::Ping { id: 1 });

    // Server side answers.
    let mut s2c = Vec::new();
    for id in [1, 3, 5, 7] {
        encode_syn_reply(id, false, &Headers::new(), server.compressor(), &mut s2c)?;
    }
    encode_data(5, true, b"hi\n", &mut s2c)?;
    encode_data(1, true, br#"{"metadata":{},"status":"Success"}"#, &mut s2c)?;
    encode_rst_stream(7, RstStatus::CANCEL, &mut s2c)?;
    encode_goaway(7, GoAwayStatus::OK, &mut s2c)?;
    let frames = decode_all(&mut client, &s2c)?;
    assert_eq!(frames[0], Frame::SynReply { stream_id: 1, fin: false, headers: Headers::new() });
    assert_eq!(frames[6], Frame::RstStream { stream_id: 7, status: RstStatus::CANCEL });
    assert_eq!(frames[7], Frame::GoAway { last_good_stream_id: 7, status: GoAwayStatus::OK });
    Ok(())
}

#[test]
fn exact_bytes_of_simple_frames() -> R {
    let mut out = Vec::new();
    encode_ping(1, &mut out);
    assert_eq!(out, [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
    out.clear();
    encode_data(3, true, b"ab", &mut out)?;
    assert_eq!(out, [0, 0, 0, 3, 1, 0, 0, 2, b'a', b'b']);
    out.clear();
    encode_rst_stream(5, RstStatus::CANCEL, &mut out)?;
    assert_eq!(out, [0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 5, 0, 0, 0, 5]);
    out.clear();
    encode_goaway(0, GoAwayStatus::OK, &mut out)?;
    assert_eq!(out, [0x80, 3, 0, 7, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
    out.clear();
    encode_window_update(0, 65536, &mut out)?;
    assert_eq!(out, [0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 0, 0, 1, 0, 0]);
    out.clear();
    encode_settings(false, &[Setting { flags: 0, id: 7, value: 65536 }], &mut out)?;
    assert_eq!(out, [0x80, 3, 0, 4, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 7, 0, 1, 0, 0]);
    Ok(())
}

#[test]
fn encode_rejects_unrepresentable() {
    let mut out = Vec::new();
    assert_eq!(encode_data(0, false, b"", &mut out), Err(SpdyError::InvalidStreamId(0)));
    assert_eq!(encode_data(1 << 31, false, b"", &mut out), Err(SpdyError::InvalidStreamId(1 << 31)));
    assert!(matches!(
        encode_data(1, false, &vec![0; MAX_FRAME_PAYLOAD + 1], &mut out),
        Err(SpdyError::FrameTooLarge { .. })
    ));
    assert!(encode_rst_stream(1, RstStatus(0), &mut out).is_err());
    assert!(encode_window_update(1, 0, &mut out).is_err());
    assert!(encode_settings(false, &[Setting { flags: 0, id: 1 << 24, value: 0 }], &mut out).is_err());
    assert!(out.is_empty());
}

#[test]
fn incomplete_vs_invalid() -> R {
    let mut codec = Codec::with_limits(1024, HeaderLimits::default())?;
    let mut wire = Vec::new();
    encode_data(1, false, b"hello", &mut wire)?;
    for cut in 0..wire.len() {
        assert_eq!(codec.decode(&wire[..cut])?, None, "cut {cut}");
    }
    assert!(codec.decode(&wire)?.is_some());
    // Too large: rejected from the header alone.
    assert_eq!(codec.decode(&[0, 0, 0, 1, 0, 0, 4, 1]), Err(SpdyError::FrameTooLarge { length: 1025, max: 1024 }));
    assert_eq!(codec.decode(&[0x80, 2, 0, 6, 0, 0, 0, 4]), Err(SpdyError::UnsupportedVersion(2)));
    assert_eq!(codec.decode(&[0, 0, 0, 0, 0, 0, 0, 0]), Err(SpdyError::ZeroStreamId("DATA")));
    assert!(matches!(
        codec.decode(&[0x80, 3, 0, 6, 0, 0, 0, 3, 0, 0, 0]),
        Err(SpdyError::InvalidFrame { name: "PING", .. })
    ));
    assert!(matches!(
        codec.decode(&[0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0]),
        Err(SpdyError::InvalidFrame { name: "RST_STREAM", .. })
    ));
    assert!(matches!(
        codec.decode(&[0x80, 3, 0, 4, 0, 0, 0, 4, 0, 0, 0, 1]),
        Err(SpdyError::InvalidFrame { name: "SETTINGS", .. })
    ));
    assert!(matches!(
        codec.decode(&[0x80, 3, 0, 1, 0, 0, 0, 4, 0, 0, 0, 1]),
        Err(SpdyError::InvalidFrame { name: "SYN_STREAM", .. })
    ));
    assert_eq!(codec.decode(&[0x80, 3, 0, 2, 0, 0, 0, 4, 0, 0, 0, 0]), Err(SpdyError::ZeroStreamId("SYN_REPLY")));
    Ok(())
}

#[test]
fn unknown_control_frames_are_skipped() -> R {
    let mut codec = Codec::new()?;
    // CREDENTIAL (10) with 3 payload bytes, then a PING.
    let mut wire = vec![0x80, 3, 0, 10, 0x42, 0, 0, 3, 1, 2, 3];
    encode_ping(2, &mut wire);
    let frames = decode_all(&mut codec, &wire)?;
    assert_eq!(frames, vec![Frame::Unknown { frame_type: 10, flags: 0x42, length: 3 }, Frame::Ping { id: 2 }]);
    Ok(())
}

#[test]
fn reserved_bits_masked_and_empty_block_accepted() -> R {
    let mut codec = Codec::new()?;
    // DATA with the reserved bit... is a control frame; WINDOW_UPDATE's
    // reserved bits are masked instead.
    let wire = [0x80, 3, 0, 9, 0, 0, 0, 8, 0x80, 0, 0, 1, 0x80, 0, 0, 5];
    assert_eq!(codec.decode(&wire)?, Some((Frame::WindowUpdate { stream_id: 1, delta: 5 }, 16)));
    // SYN_REPLY without a header block.
    let wire = [0x80, 3, 0, 2, 1, 0, 0, 4, 0, 0, 0, 9];
    assert_eq!(codec.decode(&wire)?, Some((Frame::SynReply { stream_id: 9, fin: true, headers: Headers::new() }, 12)));
    Ok(())
}

#[test]
fn negotiation() {
    use StreamProtocol::*;
    let k = &StreamProtocol::KUBELET_SUPPORTED;
    // kubectl 1.29+ offers v5 first; the kubelet picks v4.
    let offer = ["v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"];
    assert_eq!(StreamProtocol::negotiate(&offer, k), Some(V4));
    // Client order wins.
    assert_eq!(StreamProtocol::negotiate(&["v2.channel.k8s.io, v4.channel.k8s.io"], k), Some(V2));
    assert_eq!(StreamProtocol::negotiate(&offer, &[V5, V4]), Some(V5));
    assert_eq!(StreamProtocol::negotiate(&["v9"], k), None);
    assert_eq!(StreamProtocol::negotiate(&[], k), None);
    assert!(V4.status_is_json() && V5.status_is_json() && !V3.status_is_json());
    assert!(V3.supports_resize() && !V2.supports_resize());
    for p in [V1, V2, V3, V4, V5] {
        assert_eq!(StreamProtocol::from_name(p.name()), Some(p));
    }
}

#[test]
fn expected_stream_sets() {
    use StreamType::*;
    assert_eq!(expected_streams(StreamProtocol::V4, false, true, true, false), [Error, Stdout, Stderr]);
    assert_eq!(expected_streams(StreamProtocol::V4, true, true, true, true), [Error, Stdin, Stdout, Resize]);
    assert_eq!(expected_streams(StreamProtocol::V2, true, true, false, true), [Error, Stdin, Stdout]);
    for t in [Error, Stdin, Stdout, Stderr, Resize] {
        assert_eq!(StreamType::parse(t.as_str()), Some(t));
    }
    let opts = crate::exec_options::ExecOptions::from_query("command=sh&stdin=1&stdout=1&stderr=1&tty=1");
    assert_eq!(opts.map(|o| expected_streams_for(StreamProtocol::V4, &o)), Ok(vec![Error, Stdin, Stdout, Resize]));
}

#[test]
fn ping_parity() {
    assert!(Role::Server.should_echo_ping(1));
    assert!(!Role::Server.should_echo_ping(2));
    assert!(Role::Client.should_echo_ping(2));
    assert!(!Role::Client.should_echo_ping(3));
    assert!(Role::Client.owns_id(Role::Client.first_ping_id()));
    assert!(Role::Server.owns_id(Role::Server.first_ping_id()));
}

fn header_strategy() -> impl Strategy<Value = Headers> {
    prop::collection::vec(("[a-z0-9:-]{1,12}", prop::collection::vec("[^\u{0}]{0,16}", 1..3)), 0..6).prop_map(
        |entries| {
            let mut h = Headers::new();
            for (name, values) in entries {
                // Skip names already present so values stay grouped as generated.
                if h.get(&name).is_none() {
                    for v in values {
                        h.append(&name, v);
                    }
                }
            }
            h
        },
    )
}

fn frame_strategy() -> impl Strategy<Value = Frame> {
    let sid = 1u32..=MAX_STREAM_ID;
    prop_oneof![
        (sid.clone(), any::<bool>(), prop::collection::vec(any::<u8>(), 0..200))
            .prop_map(|(stream_id, fin, data)| Frame::Data { stream_id, fin, data }),
        (sid.clone(), 0..=MAX_STREAM_ID, 0u8..8, any::<u8>(), any::<bool>(), any::<bool>(), header_strategy())
            .prop_map(|(stream_id, associated_stream_id, priority, slot, fin, unidirectional, headers)| {
                Frame::SynStream { stream_id, associated_stream_id, priority, slot, fin, unidirectional, headers }
            }),
        (sid.clone(), any::<bool>(), header_strategy()).prop_map(|(stream_id, fin, headers)| Frame::SynReply {
            stream_id,
            fin,
            headers
        }),
        (sid.clone(), any::<bool>(), header_strategy()).prop_map(|(stream_id, fin, headers)| Frame::Headers {
            stream_id,
            fin,
            headers
        }),
        (sid.clone(), 1u32..).prop_map(|(stream_id, s)| Frame::RstStream { stream_id, status: RstStatus(s) }),
        (any::<bool>(), prop::collection::vec((any::<u8>(), 0u32..1 << 24, any::<u32>()), 0..4)).prop_map(
            |(clear, e)| Frame::Settings {
                clear,
                entries: e.into_iter().map(|(flags, id, value)| Setting { flags, id, value }).collect()
            }
        ),
        any::<u32>().prop_map(|id| Frame::Ping { id }),
        (0..=MAX_STREAM_ID, any::<u32>())
            .prop_map(|(l, s)| Frame::GoAway { last_good_stream_id: l, status: GoAwayStatus(s) }),
        (0..=MAX_STREAM_ID, 1..=0x7FFF_FFFFu32).prop_map(|(stream_id, delta)| Frame::WindowUpdate { stream_id, delta }),
    ]
}

proptest! {
    #[test]
    fn frames_round_trip(frames in prop::collection::vec(frame_strategy(), 1..8), cut in any::<prop::sample::Index>()) {
        let mut tx = Codec::new().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut rx = Codec::new().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut wire = Vec::new();
        for f in &frames {
            tx.encode(f, &mut wire).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        // Incomplete prefixes never consume or error.
        let at = cut.index(wire.len());
        let first_len = match rx.decode(&wire[..at]) {
            Ok(None) => None,
            Ok(Some((_, n))) => Some(n),
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        };
        // Decoding a complete first frame from a prefix would consume the
        // decompressor; restart with a fresh codec in that case.
        if first_len.is_some() {
            rx = Codec::new().map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        let got = decode_all(&mut rx, &wire).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut codec = Codec::with_limits(4096, HeaderLimits { max_decompressed: 4096, max_headers: 16 })
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut rest = bytes.as_slice();
        while let Ok(Some((_, n))) = codec.decode(rest) {
            rest = &rest[n..];
        }
        let mut dec = HeaderDecompressor::default();
        let _ = dec.decompress(&bytes);
        let _ = Headers::from_block(&bytes, &HeaderLimits::default());
    }

    #[test]
    fn garbage_after_valid_prefix(tail in prop::collection::vec(any::<u8>(), 0..256)) {
        // A valid SYN_STREAM (so the dictionary is loaded) then random
        // header-block bytes in a SYN_REPLY.
        let mut codec = Codec::new().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut tx = Codec::new().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut wire = Vec::new();
        tx.encode(&syn(1, "error"), &mut wire).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut p = 1u32.to_be_bytes().to_vec();
        p.extend_from_slice(&tail);
        wire.extend_from_slice(&[0x80, 3, 0, 2, 0, 0]);
        wire.extend_from_slice(&(p.len() as u16).to_be_bytes());
        wire.extend_from_slice(&p);
        let mut rest = wire.as_slice();
        while let Ok(Some((_, n))) = codec.decode(rest) {
            rest = &rest[n..];
        }
    }
}
