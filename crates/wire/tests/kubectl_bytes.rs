//! Decodes SPDY bytes recorded from real kubectl binaries (see tests/data/README.md).

use hatch_wire::spdy::{Codec, Frame, SpdyError, StreamProtocol, StreamType, expected_streams};

fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, SpdyError> {
    let mut codec = Codec::new()?;
    let mut rest = bytes;
    let mut frames = Vec::new();
    while let Some((frame, used)) = codec.decode(rest)? {
        frames.push(frame);
        rest = &rest[used..];
    }
    assert!(rest.is_empty(), "{} undecoded bytes", rest.len());
    Ok(frames)
}

fn stream_types(frames: &[Frame]) -> Vec<(u32, Option<StreamType>)> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::SynStream { stream_id, headers, .. } => Some((*stream_id, StreamType::from_headers(headers))),
            _ => None,
        })
        .collect()
}

#[test]
fn kubectl_1_27_exec_ls() -> Result<(), SpdyError> {
    let bytes = include_bytes!("data/kubectl-1.27-exec-ls.c2s.bin");
    // The first header block starts with the FDICT zlib header and the
    // SPDY/3 dictionary id (8-byte frame header + 10 fixed SYN_STREAM bytes).
    assert_eq!(&bytes[18..24], &[0x78, 0xF9, 0xE3, 0xC6, 0xA7, 0xC2]);
    let frames = decode_all(bytes)?;
    assert_eq!(
        stream_types(&frames),
        [(1, Some(StreamType::Error)), (3, Some(StreamType::Stdout)), (5, Some(StreamType::Stderr))]
    );
    let want = expected_streams(StreamProtocol::V4, false, true, true, false);
    let got: Vec<_> = stream_types(&frames).into_iter().filter_map(|(_, t)| t).collect();
    assert_eq!(got, want);
    for f in &frames {
        let Frame::SynStream { associated_stream_id, priority, slot, fin, unidirectional, headers, .. } = f else {
            continue;
        };
        assert_eq!((*associated_stream_id, *priority, *slot, *fin, *unidirectional), (0, 0, 0, false, false));
        assert_eq!(headers.len(), 1);
    }
    Ok(())
}

#[test]
fn kubectl_1_33_exec_stdin_then_fin() -> Result<(), SpdyError> {
    let frames = decode_all(include_bytes!("data/kubectl-1.33-exec-i-cat.c2s.bin"))?;
    assert_eq!(
        stream_types(&frames),
        [
            (1, Some(StreamType::Error)),
            (3, Some(StreamType::Stdin)),
            (5, Some(StreamType::Stdout)),
            (7, Some(StreamType::Stderr)),
        ]
    );
    assert_eq!(frames[4], Frame::Data { stream_id: 3, fin: false, data: b"abc\n".to_vec() });
    // stdin EOF: an empty DATA frame with FIN.
    assert_eq!(frames[5], Frame::Data { stream_id: 3, fin: true, data: Vec::new() });
    assert_eq!(frames.len(), 6);
    Ok(())
}

#[test]
fn every_split_point_is_incomplete_or_whole() -> Result<(), SpdyError> {
    let bytes = include_bytes!("data/kubectl-1.33-exec-i-cat.c2s.bin");
    // Feeding the stream one byte at a time yields the same frames.
    let mut codec = Codec::new()?;
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    for &b in bytes.iter() {
        buf.push(b);
        while let Some((f, used)) = codec.decode(&buf)? {
            frames.push(f);
            buf.drain(..used);
        }
    }
    assert!(buf.is_empty());
    assert_eq!(frames, decode_all(bytes)?);
    Ok(())
}
